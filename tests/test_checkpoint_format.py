"""The checkpoint format without DeepSpeed: manifests, `latest`, choosing the checkpoint to resume
from, the read-only API for export, and retention. Checkpoints here are small stand-ins with the
real layout; test_checkpoint_safety.py uses real DeepSpeed ones."""
import hashlib
import json
import pickle
import subprocess
import sys

import pytest
import torch
from checkpoint_fixtures import EMA, Payload, make_checkpoint, trainer_state

from dig_scale.checkpoint import (
    CheckpointError,
    checkpoint_tag,
    read_ema_state_dict,
    read_trainer_state,
    resolve_checkpoint,
    verify_checkpoint,
)
from dig_scale.checkpoint.layout import LATEST, MANIFEST, read_latest
from dig_scale.checkpoint.reading import newest_complete_checkpoint
from dig_scale.checkpoint.retention import doomed


@pytest.fixture
def run(tmp_path):
    """runs/r with complete checkpoints at steps 3 and 6 and `latest` naming step 6."""
    checkpoints = tmp_path / "r" / "checkpoints"
    for step in (3, 6):
        make_checkpoint(checkpoints, step)
    (checkpoints / LATEST).write_text(checkpoint_tag(6))
    return tmp_path / "r"


def test_manifest_lists_every_file_with_size_and_sha256(run):
    path = run / "checkpoints" / checkpoint_tag(6)
    manifest = json.loads((path / MANIFEST).read_text())
    assert set(manifest["files"]) == {p.name for p in path.iterdir()} - {MANIFEST}
    for name, entry in manifest["files"].items():
        data = (path / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / "mp_rank_00_model_states.pt").write_bytes(b"short"), "5 bytes, the manifest says"),
    (lambda p: (p / "ema.safetensors").unlink(), "ema.safetensors: missing"),
    (lambda p: (p / "planted.pt").write_bytes(b"x"), "planted.pt: not listed in the manifest"),
    (lambda p: (p / MANIFEST).unlink(), "incomplete: it has no manifest.json"),
    (lambda p: (p / MANIFEST).write_text("{\"files\": 3"), "not a dig-scale manifest"),
    (lambda p: (p / MANIFEST).write_text(json.dumps({"format": 1, "files": {"../../etc/passwd": {
        "size": 1, "sha256": "0"}}})), "not a dig-scale manifest"),
])
def test_verification_names_what_is_wrong(run, damage, message):
    path = run / "checkpoints" / checkpoint_tag(6)
    damage(path)
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(")):
        verify_checkpoint(path)


def test_a_flipped_byte_is_found_by_its_hash(run):
    path = run / "checkpoints" / checkpoint_tag(6) / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt"
    data = bytearray(path.read_bytes())
    data[100] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="optim_states.pt: content differs from the manifest"):
        verify_checkpoint(path.parent)


def test_resolve_accepts_a_run_its_checkpoints_or_one_checkpoint(run):
    newest = run / "checkpoints" / checkpoint_tag(6)
    assert resolve_checkpoint(run) == resolve_checkpoint(run / "checkpoints") == resolve_checkpoint(newest) == newest
    assert resolve_checkpoint(run, tag=checkpoint_tag(3)) == run / "checkpoints" / checkpoint_tag(3)
    assert read_trainer_state(newest)["step"] == 6
    ema = read_ema_state_dict(newest)
    assert ema.keys() == EMA.keys() and all(torch.equal(ema[k], EMA[k]) for k in EMA)


@pytest.mark.parametrize("setup, tag, message", [
    (lambda c: (c / LATEST).write_text("../../elsewhere"), "latest", "holds '../../elsewhere': expected the tag"),
    (lambda c: (c / LATEST).unlink(), "latest", "latest is missing;.*holds: step-0000003, step-0000006"),
    (lambda c: None, "step-0000009", "step-0000009 does not exist;.*holds: step-0000003, step-0000006"),
    (lambda c: None, "../step-0000003", "expected 'latest' or a checkpoint tag"),
    (lambda c: (c / checkpoint_tag(6) / "ema.safetensors").write_bytes(b"x"), "latest",
     "ema.safetensors: 1 bytes.*\n.*holds: step-0000003, step-0000006"),
])
def test_resolve_refuses_with_what_there_is(run, setup, tag, message):
    setup(run / "checkpoints")
    with pytest.raises(CheckpointError, match=message):
        resolve_checkpoint(run, tag=tag)


def test_resume_takes_the_newest_complete_checkpoint(run):
    choice = newest_complete_checkpoint(run / "checkpoints")
    assert choice.checkpoint == run / "checkpoints" / checkpoint_tag(6) and choice.notes == []


@pytest.mark.parametrize("latest", [None, "garbage\n\x00", "../../elsewhere", "step-0000099"])
def test_a_lost_or_garbage_latest_still_resumes_from_the_newest_complete_checkpoint(run, latest):
    pointer = run / "checkpoints" / LATEST
    pointer.unlink() if latest is None else pointer.write_text(latest)
    choice = newest_complete_checkpoint(run / "checkpoints")
    assert choice.checkpoint == run / "checkpoints" / checkpoint_tag(6)
    assert len(choice.notes) == 1 and ("missing" if latest is None else "latest") in choice.notes[0]


def test_a_damaged_or_unfinished_newest_checkpoint_falls_back_and_says_why(run):
    checkpoints = run / "checkpoints"
    (checkpoints / checkpoint_tag(6) / "mp_rank_00_model_states.pt").write_bytes(b"truncated")
    make_checkpoint(checkpoints, 9, complete=False)  # a save killed before its manifest
    choice = newest_complete_checkpoint(checkpoints)
    assert choice.checkpoint == checkpoints / checkpoint_tag(3)
    assert "skipped step-0000009: incomplete" in choice.notes[0]
    assert "skipped step-0000006" in choice.notes[1] and "mp_rank_00_model_states.pt: 9 bytes" in choice.notes[1]


def test_a_run_that_saved_before_never_silently_starts_over(run):
    checkpoints = run / "checkpoints"
    for step in (3, 6):
        (checkpoints / checkpoint_tag(step) / "ema.safetensors").write_bytes(b"damaged")
    with pytest.raises(CheckpointError, match="refusing to start it over from step 0"):
        newest_complete_checkpoint(checkpoints)
    for step in (3, 6):  # even with the checkpoints gone, `latest` says this run has saved
        (checkpoints / checkpoint_tag(step) / MANIFEST).unlink()
    with pytest.raises(CheckpointError, match="refusing to start it over"):
        newest_complete_checkpoint(checkpoints)


def test_a_fresh_run_or_one_killed_in_its_first_save_starts_at_step_0(tmp_path):
    assert newest_complete_checkpoint(tmp_path / "checkpoints").checkpoint is None
    make_checkpoint(tmp_path / "checkpoints", 3, complete=False)
    choice = newest_complete_checkpoint(tmp_path / "checkpoints")
    assert choice.checkpoint is None and any("incomplete" in note for note in choice.notes)


def test_our_files_cannot_run_code(run, tmp_path):
    marker = tmp_path / "ran"
    path = run / "checkpoints" / checkpoint_tag(6)
    (path / "trainer_state.json").write_bytes(pickle.dumps(Payload(marker)))
    (path / "ema.safetensors").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(CheckpointError, match="trainer_state.json: not valid JSON"):
        read_trainer_state(path)
    with pytest.raises(CheckpointError, match="ema.safetensors: not readable as safetensors"):
        read_ema_state_dict(path)
    assert not marker.exists()


def test_trainer_state_keys_are_checked(run):
    path = run / "checkpoints" / checkpoint_tag(6)
    state = trainer_state(6)
    del state["loader"]
    state["step"] = "6"
    (path / "trainer_state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match=r"missing or mistyped keys \['step', 'loader'\]"):
        read_trainer_state(path)


def test_read_latest_accepts_only_a_tag(tmp_path):
    assert read_latest(tmp_path) is None
    (tmp_path / LATEST).write_text("step-0000042\n")
    assert read_latest(tmp_path) == "step-0000042"
    (tmp_path / LATEST).write_text("/abs/step-0000042")
    with pytest.raises(CheckpointError, match="expected the tag"):
        read_latest(tmp_path)


def test_retention_keeps_last_n_every_mth_and_latest(tmp_path):
    for step in (100, 200, 300, 400, 500, 600):
        make_checkpoint(tmp_path, step)
    make_checkpoint(tmp_path, 700, complete=False)               # a crashed save
    (tmp_path / "step-0000100-universal").mkdir()                 # a conversion of a checkpoint that goes
    (tmp_path / "step-0000500-universal").mkdir()                 # ... and of one that stays
    (tmp_path / LATEST).write_text(checkpoint_tag(200))
    gone = doomed(tmp_path, keep_last=2, keep_every=300)
    assert sorted(p.name for p in gone) == ["step-0000100", "step-0000100-universal", "step-0000400", "step-0000700"]
    # before saving step 800: what the policy will delete once 800 is saved and latest
    assert sorted(p.name for p in doomed(tmp_path, 2, 300, incoming_step=800)) == [
        "step-0000100", "step-0000100-universal", "step-0000200", "step-0000400", "step-0000500",
        "step-0000500-universal", "step-0000700"]


def test_the_read_only_api_imports_no_deepspeed_nor_process_group_code():
    program = ("import sys, dig_scale.checkpoint as c; "
               "print(sorted(m for m in sys.modules if m.startswith(('deepspeed', 'dig_scale.train'))))")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr
