"""The run directory's contract, each fault reproduced: one job at a time (the lock), the config
record written once, and room made for a checkpoint before a full disk fails the save."""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections import namedtuple
from pathlib import Path

import pytest
import yaml
from checkpoint_fixtures import DATASET, make_checkpoint, trainer_state

from dig_scale.checkpoint import CheckpointError, checkpoint_tag
from dig_scale.config import ConfigError, config_from_dict, config_to_dict
from dig_scale.launch_env import ProcessPlace
from dig_scale.train.checkpoint_manager import CheckpointManager
from dig_scale.train.run_dir import RunDirectory
from dig_scale.train.run_lock import RunDirectoryInUse, RunLock

HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from dig_scale.train.run_lock import RunLock
    lock = RunLock(Path(sys.argv[1]))
    lock.acquire()
    print("locked", flush=True)
    time.sleep(600)
""")


def hold_lock(path: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    return process


def test_a_live_job_keeps_the_run_directory_and_a_dead_ones_lock_is_taken_over(tmp_path):
    path = tmp_path / "run" / "lock"
    holder = hold_lock(path)
    try:
        with pytest.raises(RunDirectoryInUse, match=rf"in use by another job: pid {holder.pid} on .* \(user .*, since"):
            RunLock(path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)  # dies without cleaning up: its record stays behind
        holder.wait()
    assert json.loads(path.read_text())["pid"] == holder.pid
    lock = RunLock(path)
    note = lock.acquire()
    assert note.startswith(f"took over {path} from a job that is gone: pid {holder.pid} on ")
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()
    assert path.read_text() == "" and RunLock(path).acquire() is None  # a clean end leaves no owner behind


def experiment(tmp_path, **changes) -> dict:
    raw = {"run_name": "r", "output_dir": str(tmp_path), "data": {"path": "/d"}, "model": {"arch": {"depth": 2}}}
    for key, value in changes.items():
        section, leaf = key.split("__")
        raw.setdefault(section, {})[leaf] = value
    return config_from_dict(raw)


def test_the_config_record_is_written_once_and_guards_what_the_run_computes(tmp_path):
    run_dir = RunDirectory(experiment(tmp_path))
    assert run_dir.record_config(experiment(tmp_path), None) == []
    record = run_dir.config_file.read_text()
    notes = run_dir.record_config(experiment(tmp_path, train__max_steps=10), None)
    assert notes == ["config changed since the run started (allowed): train.max_steps: 400000 -> 10"]
    assert run_dir.config_file.read_text() == record  # a relaunch never rewrites it
    with pytest.raises(ConfigError, match="model.arch: {'depth': 2} -> {'depth': 3}|model.arch.depth: 2 -> 3"):
        run_dir.record_config(experiment(tmp_path, model__arch={"depth": 3}), None)


def test_a_lost_record_is_restored_from_the_checkpoint_never_from_a_changed_config(tmp_path):
    original = experiment(tmp_path)
    resumed = {**trainer_state(6), "config": config_to_dict(original)}
    run_dir = RunDirectory(original)
    refused = r"per its checkpoint \(written by dig-scale 0.1.0\).*\n.*optim.lr: 0.0001 -> 0.5"
    with pytest.raises(ConfigError, match=refused):
        run_dir.record_config(experiment(tmp_path, optim__lr=0.5), resumed)
    assert not run_dir.config_file.exists()
    notes = run_dir.record_config(experiment(tmp_path, train__max_steps=7), resumed)
    assert notes[-1] == f"{run_dir.config_file} was missing: restored from the checkpoint's config"
    assert yaml.safe_load(run_dir.config_file.read_text()) == config_to_dict(original)


Usage = namedtuple("Usage", "total used free")


def simulate_volume(monkeypatch, capacity: int, root: Path) -> None:
    """shutil.disk_usage of a volume of `capacity` bytes holding `root` and nothing else."""
    def usage(_path):
        used = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        return Usage(capacity, used, capacity - used)

    monkeypatch.setattr(shutil, "disk_usage", usage)


def manager(directory: Path, keep_last: int) -> CheckpointManager:
    cfg = config_from_dict({"data": {"path": "/d"}, "checkpoint": {"keep_last": keep_last, "keep_every": 0}})
    return CheckpointManager(directory, ProcessPlace(0, 1, 0, 1, "single"), cfg.checkpoint, {}, DATASET)


def checkpoint_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_a_volume_holding_keep_last_checkpoints_makes_room_before_saving(tmp_path, monkeypatch, capsys):
    checkpoints = tmp_path / "checkpoints"
    for step in (3, 6):
        make_checkpoint(checkpoints, step)
    (checkpoints / "latest").write_text(checkpoint_tag(6))
    size = checkpoint_size(checkpoints / checkpoint_tag(6))
    simulate_volume(monkeypatch, 2 * size + size // 2, tmp_path)  # room for 2.5 checkpoints: not a third
    manager(checkpoints, keep_last=2)._prepare(checkpoints / checkpoint_tag(9))
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", checkpoint_tag(6)]
    assert f"deleting {checkpoint_tag(3)} now (retention would after this save)" in capsys.readouterr().err


def test_a_full_disk_is_said_plainly_and_the_last_checkpoint_is_kept(tmp_path, monkeypatch):
    checkpoints = tmp_path / "checkpoints"
    make_checkpoint(checkpoints, 6)
    size = checkpoint_size(checkpoints / checkpoint_tag(6))
    simulate_volume(monkeypatch, size + size // 2, tmp_path)
    with pytest.raises(CheckpointError, match=r"not enough disk space to save step-0000009: it needs about .* GB "
                                              r"\(the size of step-0000006\), .* GB are free .* without deleting the "
                                              r"last complete checkpoint"):
        manager(checkpoints, keep_last=1)._prepare(checkpoints / checkpoint_tag(9))
    assert (checkpoints / checkpoint_tag(6)).is_dir()
