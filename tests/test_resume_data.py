"""A resume checks what it continues (issue 10 item 12): the checkpoint records its dataset's
identity, and a data.path that now holds other data (a re-encoded folder, a re-pointed link) is
refused naming both; another run's checkpoint needs checkpoint.allow_other_run, with the config
differences listed."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from checkpoint_fixtures import DATASET, make_checkpoint, rewrite_manifest, trainer_state
from engine_runs import assert_ok, assert_refused, launch, run_dir, write_config
from pixel_datasets import write_pixel_dataset

from dig_scale.checkpoint import CheckpointError, checkpoint_tag
from dig_scale.config import config_from_dict, config_to_dict
from dig_scale.launch_env import ProcessPlace
from dig_scale.train.checkpoint_manager import CheckpointManager

OTHER_DATA = {**DATASET, "index_sha256": "3" * 64, "num_samples": 9}


def manager(directory: Path, dataset: dict, world_size: int = 2, **checkpoint) -> CheckpointManager:
    cfg = config_from_dict({"seed": 0, "data": {"path": "/d"}, "checkpoint": checkpoint})
    return CheckpointManager(directory, ProcessPlace(0, world_size, 0, world_size, "torchrun"), cfg.checkpoint,
                             config_to_dict(cfg), dataset)


def other_run(tmp_path: Path, **config) -> Path:
    """A finished checkpoint of run 'a' whose config holds `config`."""
    path = make_checkpoint(tmp_path / "a" / "checkpoints", 6)
    state = {**trainer_state(6), "config": config_to_dict(config_from_dict({"data": {"path": "/d"}, **config}))}
    (path / "trainer_state.json").write_text(json.dumps(state))
    rewrite_manifest(path)
    return path


def test_the_same_data_resumes_and_other_data_is_refused_naming_both(tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    make_checkpoint(checkpoints, 3)
    assert manager(checkpoints, DATASET)._find_resume("auto").checkpoint.name == checkpoint_tag(3)
    with pytest.raises(CheckpointError) as error:
        manager(checkpoints, OTHER_DATA)._find_resume("auto")
    message = str(error.value)
    assert "was trained on other data than data.path='/d' holds now" in message
    assert "checkpoint: 8 samples, created 2026-11-30T00:00:00Z, index sha256 111111111111" in message
    assert "data.path:  9 samples, created 2026-11-30T00:00:00Z, index sha256 333333333333" in message


def test_another_runs_checkpoint_needs_the_opt_in_and_lists_the_differences(tmp_path, capsys):
    source = other_run(tmp_path, seed=7, optim={"lr": 3e-4})
    ours = tmp_path / "b" / "checkpoints"
    with pytest.raises(CheckpointError) as error:
        manager(ours, DATASET, resume=str(source))._find_resume(str(source))
    message = str(error.value)
    assert f"is a checkpoint of another run ({source.parent})" in message
    assert "seed: 7 -> 0" in message and "optim.lr: 0.0003 -> 0.0001" in message
    assert "set checkpoint.allow_other_run=true" in message
    assert not ours.exists()  # nothing written

    resume = manager(ours, DATASET, resume=str(source), allow_other_run=True)._find_resume(str(source))
    assert resume.other_run and resume.checkpoint == source.resolve()
    assert "continued as asked (checkpoint.allow_other_run)" in capsys.readouterr().err


def test_another_runs_checkpoint_on_other_data_is_still_refused(tmp_path):
    source = other_run(tmp_path)
    with pytest.raises(CheckpointError, match="was trained on other data"):
        manager(tmp_path / "b" / "checkpoints", OTHER_DATA, resume=str(source),
                allow_other_run=True)._find_resume(str(source))


def test_another_runs_checkpoint_never_goes_over_this_runs_own_or_to_another_world_size(tmp_path):
    source = other_run(tmp_path)
    ours = tmp_path / "b" / "checkpoints"
    with pytest.raises(CheckpointError, match=r"written by 2 ranks; continue it with 2 ranks \(this job has 1\)"):
        manager(ours, DATASET, world_size=1, allow_other_run=True)._find_resume(str(source))
    make_checkpoint(ours, 3)
    with pytest.raises(CheckpointError, match=r"resume this run \(checkpoint.resume=auto\) or use a new run_name"):
        manager(ours, DATASET, allow_other_run=True)._find_resume(str(source))


def test_a_reencoded_dataset_under_the_same_path_stops_the_resume(tmp_path):
    """End to end: train on a dataset, re-encode other data at the same path, relaunch."""
    data = tmp_path / "ds"
    write_pixel_dataset(data, 16)
    config = write_config(tmp_path, data={"path": str(data)}, train={"max_steps": 3},
                          checkpoint={"every_steps": 3})
    assert_ok(launch(config, nproc=1, timeout=300))
    shutil.rmtree(data)
    write_pixel_dataset(data, 16, fill=lambda i: i + 100)
    result = launch(config, nproc=1, timeout=300)
    assert result.returncode == 2
    assert_refused(result, f"{run_dir(config) / 'checkpoints' / checkpoint_tag(3)} was trained on other data than "
                           f"data.path='{data}' holds now", "checkpoint: 16 samples", "data.path:  16 samples")
