"""Real DeepSpeed checkpoints treated as untrusted input, each fault reproduced: pickle payloads
planted in every file (with a manifest made to match) never run and the error names the file; a
damaged newest checkpoint and a garbage `latest` resume from the previous checkpoint and continue
bit-identically."""
import pickle
import shutil
import subprocess
import sys

import pytest
import torch
from checkpoint_fixtures import Payload, rewrite_manifest
from engine_runs import assert_ok, assert_refused, launch, losses, run_dir, write_config

from dig_scale.checkpoint import CheckpointError, checkpoint_tag
from dig_scale.checkpoint.layout import LATEST, checkpoint_dirs
from dig_scale.checkpoint.manifest import files_in
from dig_scale.checkpoint.safe_load import deepspeed_checkpoint_types, only_safe_torch_loads
from dig_scale.checkpoint.universal import convert_to_universal


def plant(checkpoint, marker, only_deepspeed: bool = False) -> None:
    """A payload in every file of `checkpoint`: inside each torch file's dict, and as the whole
    content of our JSON and safetensors files; then a manifest that matches them."""
    for name in files_in(checkpoint):
        path = checkpoint / name
        if name.endswith(".pt"):
            with torch.serialization.safe_globals(deepspeed_checkpoint_types()):
                content = torch.load(path, weights_only=True)
            content["payload"] = Payload(marker)
            torch.save(content, path)
        elif not only_deepspeed:
            path.write_bytes(pickle.dumps(Payload(marker)))
    rewrite_manifest(checkpoint)


@pytest.fixture
def copied_run(tmp_path, uninterrupted):
    """A copy of the reference run (checkpoints at steps 3 and 6, written by 2 ranks)."""
    reference, _ = uninterrupted
    config = write_config(tmp_path)
    shutil.copytree(run_dir(reference), run_dir(config))
    return config, run_dir(config) / "checkpoints"


def test_payloads_in_every_checkpoint_file_never_run(copied_run, tmp_path):
    config, checkpoints = copied_run
    marker = tmp_path / "payload-ran"
    for checkpoint in checkpoint_dirs(checkpoints):
        plant(checkpoint, marker)
    assert_refused(launch(config, "train.max_steps=9"), "trainer_state.json: not valid JSON")
    assert not marker.exists()


def test_payloads_in_deepspeed_files_are_refused_before_deepspeed_loads_them(copied_run, tmp_path):
    config, checkpoints = copied_run
    marker = tmp_path / "payload-ran"
    for checkpoint in checkpoint_dirs(checkpoints):
        plant(checkpoint, marker, only_deepspeed=True)
    assert_refused(launch(config, "train.max_steps=9"), f"{checkpoint_tag(6)}/", "pickles ['io.open']: refusing")
    assert not marker.exists()


def test_loading_weights_only_holds_where_a_static_scan_cannot_look(copied_run, tmp_path):
    """The second line of defence: inside only_safe_torch_loads even an explicit
    weights_only=False (as DeepSpeed passes) loads weights only; DeepSpeed's own types load."""
    _, checkpoints = copied_run
    marker = tmp_path / "payload-ran"
    optimizer = checkpoints / checkpoint_tag(6) / "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"
    with only_safe_torch_loads():
        assert "optimizer_state_dict" in torch.load(optimizer, weights_only=False)
    torch.save({"payload": Payload(marker)}, tmp_path / "planted.pt")
    with pytest.raises(CheckpointError, match="needs more than weights-only loading"), only_safe_torch_loads():
        torch.load(tmp_path / "planted.pt", weights_only=False)
    assert not marker.exists()


def test_conversion_for_another_world_size_never_runs_a_payload(copied_run, tmp_path):
    _, checkpoints = copied_run
    marker = tmp_path / "payload-ran"
    checkpoint = checkpoints / checkpoint_tag(3)
    plant(checkpoint, marker, only_deepspeed=True)
    with pytest.raises(CheckpointError, match="pickles"):  # refused before the converter starts
        convert_to_universal(checkpoint)
    # ... and the converter's own process loads weights only, should anything reach it
    result = subprocess.run([sys.executable, "-m", "dig_scale.checkpoint.universal", str(checkpoint),
                             str(tmp_path / "universal")], capture_output=True, text=True, timeout=600)
    assert result.returncode != 0 and "Weights only load failed" in result.stderr, result.stderr[-3000:]
    assert not marker.exists()


def test_damaged_newest_checkpoint_and_garbage_latest_resume_from_the_one_before(copied_run, uninterrupted):
    reference, _ = uninterrupted
    config, checkpoints = copied_run
    (checkpoints / LATEST).write_text("../../elsewhere")
    model_file = checkpoints / checkpoint_tag(6) / "mp_rank_00_model_states.pt"
    model_file.write_bytes(model_file.read_bytes()[:1000])  # truncated
    result = launch(config)
    assert_ok(result)
    assert "holds '../../elsewhere'" in result.stderr
    assert "skipped step-0000006: " in result.stderr and "mp_rank_00_model_states.pt: 1000 bytes" in result.stderr
    assert f"resumed from {checkpoints / checkpoint_tag(3)} at step 3" in result.stderr
    assert losses(config) == losses(reference)  # steps 4-6 again, bit for bit
    assert (checkpoints / LATEST).read_text() == checkpoint_tag(6)
