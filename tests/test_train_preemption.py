"""Preemption by SIGTERM to every process of the trainer, as Slurm (every process of the job step), a
terminal or `kill -- -PGID` (its process group) deliver it: the DataLoader workers and wandb's service
get the signal too. The real trainer (`python -m dig_scale.train` through the harness) runs in a
session of its own. About 3 minutes on a loaded 2-core machine (four launches of one process)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from engine_runs import HARNESS, ROOT, assert_ok, launch, run_dir, write_config

from dig_scale.train.preemption import REQUEUE_EXIT_CODE


def processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group) of every live process, from /proc/<pid>/stat."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue  # exited while listed
        if state != "Z":
            table[int(stat.parent.name)] = (int(ppid), int(pgrp))
    return table


def descendants(pid: int) -> set[int]:
    table, found = processes(), {pid}
    while new := {child for child, (parent, _) in table.items() if parent in found} - found:
        found |= new
    return found - {pid}


def sigterm_everything_at(config: Path, point: str, tmp_path: Path, *harness: str) -> tuple[int, str, list[int]]:
    """Start the trainer and, once it waits at `point` (see train_harness.py), SIGTERM its process
    group (what a terminal or `kill -- -PGID` does) and every other process it started (Slurm signals
    every process of a job step: also wandb's service, which runs in a session of its own). Returns
    the trainer's exit code, its output and the members of its group when the signal was sent."""
    ready = tmp_path / f"ready-{point}"
    ready.unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline"}
    process = subprocess.Popen([sys.executable, str(HARNESS), "--wait-for-signal", point, str(ready), *harness,
                                "--", str(config)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while not ready.exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0][-6000:]
        time.sleep(0.1)
    group = [pid for pid, (_, pgrp) in processes().items() if pgrp == process.pid]
    others = [pid for pid in descendants(process.pid) if pid not in group]
    os.killpg(process.pid, signal.SIGTERM)
    for pid in others:
        os.kill(pid, signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
    while descendants(process.pid) or process.pid in [pgrp for _, pgrp in processes().values()]:
        # the workers end with the trainer (the DataLoader's watchdog), nothing is left behind
        assert time.monotonic() < deadline, f"left behind: {descendants(process.pid)}"
        time.sleep(0.2)
    return process.returncode, output, group


def test_sigterm_to_the_process_group_in_start_up_and_mid_run_requeues_and_resumes(tmp_path):
    config = write_config(tmp_path, data={"num_workers": 1}, train={"max_steps": 6},
                          checkpoint={"every_steps": 100}, logging={"every_steps": 1, "wandb": "offline"})
    run = run_dir(config)

    # While DeepSpeed initializes: exit 75 before the first step, nothing written to resume from.
    code, output, _ = sigterm_everything_at(config, "startup", tmp_path)
    assert code == REQUEUE_EXIT_CODE, output[-6000:]
    assert "preempted during start-up, before the first step" in output
    assert not any((run / "checkpoints").iterdir()), list((run / "checkpoints").iterdir())
    assert not list(run.rglob("*.tmp")) and (run / "lock").read_text() == ""
    # A start-up that fails after the signal (which also stops the helper processes start-up runs) is
    # retried, not failed: 75 again, still nothing written.
    code, output, _ = sigterm_everything_at(config, "startup", tmp_path, "--fail-in-startup")
    assert code == REQUEUE_EXIT_CODE, output[-6000:]
    assert "start-up failed (injected)" in output and "start-up failed after a preemption signal" in output
    assert not any((run / "checkpoints").iterdir())

    # Before step 4, with the DataLoader worker running: the step finishes, its checkpoint is written.
    code, output, members = sigterm_everything_at(config, "4", tmp_path)
    assert len(members) >= 2, members  # the trainer and its worker got the signal
    assert code == REQUEUE_EXIT_CODE, output[-6000:]
    assert "wandb failed" in output  # its service was stopped too: the job went on without it
    assert not [line for line in output.splitlines() if line.lstrip().startswith('File "') and "/dig_scale/" in line]
    assert (run / "checkpoints" / "latest").read_text() == "step-0000004"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]

    resumed = launch(config, nproc=1)
    assert_ok(resumed)
    assert "at step 4" in resumed.stderr
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
