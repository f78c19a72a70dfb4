"""Stand-in checkpoints with the real layout, and a pickle payload to plant in checkpoint files."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from dig_scale.checkpoint import checkpoint_tag
from dig_scale.checkpoint.manifest import digests, files_in, write_manifest

DATASET = {"index_sha256": "1" * 64, "metadata_sha256": "2" * 64, "num_samples": 8, "created": "2026-11-30T00:00:00Z"}
EMA = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(2)}


def trainer_state(step: int) -> dict:
    return {"format": 2, "step": step, "world_size": 2, "skipped_steps": 0, "loader": {"epoch": 0},
            "config": {"seed": 0}, "dataset": DATASET, "code_version": "0.1.0"}


def make_checkpoint(directory, step: int, complete: bool = True):
    """A checkpoint with the real file names: two 'DeepSpeed' files, the trainer state, the EMA."""
    path = directory / checkpoint_tag(step)
    path.mkdir(parents=True)
    (path / "mp_rank_00_model_states.pt").write_bytes(bytes(range(256)) * (step + 1))
    (path / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"optimizer" * 100)
    (path / "trainer_state.json").write_text(json.dumps(trainer_state(step)))
    save_file(EMA, path / "ema.safetensors")
    if complete:
        write_manifest(path, digests(path, files_in(path)))
    return path


def rewrite_manifest(checkpoint: Path) -> None:
    """What someone who planted files would do: a manifest that matches them."""
    (checkpoint / "manifest.json").unlink()
    write_manifest(checkpoint, digests(checkpoint, files_in(checkpoint)))


class Payload:
    """Unpickling it would create `marker` (a stand-in for running any code)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")
