"""Checkpoints that carry everything for an exact resume, and a `latest` pointer that never
points at a half-written one.

    checkpoints/step-0005000/      DeepSpeed ZeRO files (model, optimizer, scheduler; per rank)
                  trainer_state.pt EMA, step, data-loader state, world size, config, code version
                  rng/rank<r>.pt   torch / CUDA / numpy / python RNG states of each rank
    checkpoints/latest             the tag of the newest complete checkpoint

`latest` is replaced atomically by rank 0 only after every rank has finished writing.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .distributed import ProcessPlace

TRAINER_STATE = "trainer_state.pt"
LATEST = "latest"
_TAG = re.compile(r"^step-(\d{7,})$")


def checkpoint_tag(step: int) -> str:
    return f"step-{step:07d}"


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def _rng_states() -> dict[str, Any]:
    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(engine, directory: Path, step: int, trainer_state: dict[str, Any], place: ProcessPlace,
                    keep_last: int, keep_every: int) -> Path:
    """Collective: every rank calls it. Returns the checkpoint's directory."""
    tag = checkpoint_tag(step)
    engine.save_checkpoint(str(directory), tag=tag, save_latest=False)
    path = directory / tag
    (path / "rng").mkdir(parents=True, exist_ok=True)
    _atomic_write(path / "rng" / f"rank{place.rank}.pt", lambda p: torch.save(_rng_states(), p))
    if place.is_main:
        state = {**trainer_state, "step": step, "world_size": place.world_size}
        _atomic_write(path / TRAINER_STATE, lambda p: torch.save(state, p))
    dist.barrier()
    if place.is_main:
        _atomic_write(directory / LATEST, lambda p: p.write_text(tag))
        prune_checkpoints(directory, keep_last, keep_every)
    return path


def completed_tags(directory: Path) -> list[str]:
    """Checkpoint tags with a trainer state file, oldest first."""
    tags = [p.name for p in directory.glob("step-*") if _TAG.match(p.name) and (p / TRAINER_STATE).is_file()]
    return sorted(tags, key=lambda t: int(_TAG.match(t).group(1)))


def prune_checkpoints(directory: Path, keep_last: int, keep_every: int) -> None:
    """Delete all but the newest `keep_last` checkpoints and those at multiples of `keep_every`;
    never the one `latest` names. Incomplete leftovers of a crashed save go too."""
    latest = latest_tag(directory)
    tags = completed_tags(directory)
    keep = set(tags[-keep_last:] if keep_last > 0 else []) | {latest}
    keep |= {t for t in tags if keep_every > 0 and int(_TAG.match(t).group(1)) % keep_every == 0}
    for path in directory.glob("step-*"):
        if path.is_dir() and path.name not in keep and path.name.split("-universal")[0] not in keep:
            shutil.rmtree(path, ignore_errors=True)


def latest_tag(directory: Path) -> str | None:
    pointer = directory / LATEST
    return pointer.read_text().strip() if pointer.is_file() else None


def read_trainer_state(checkpoint: Path) -> dict[str, Any]:
    path = checkpoint / TRAINER_STATE
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint} is not a complete dig-scale checkpoint (no {TRAINER_STATE})")
    return torch.load(path, map_location="cpu", weights_only=False)


def universal_checkpoint(checkpoint: Path, place: ProcessPlace) -> Path:
    """A ZeRO checkpoint written at another world size, converted (once, by rank 0) to
    DeepSpeed's universal format, which any world size can load with its optimizer state."""
    target = checkpoint.with_name(checkpoint.name + "-universal")
    done = target / ".complete"
    if place.is_main and not done.is_file():
        shutil.rmtree(target, ignore_errors=True)
        print(f"converting {checkpoint} to a universal checkpoint for the new world size", flush=True)
        subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                        str(checkpoint), "--output_folder", str(target), "--inject_missing_state"],
                       check=True, stdout=subprocess.DEVNULL)
        done.touch()
    dist.barrier()
    return target


def load_checkpoint(engine, checkpoint: Path, place: ProcessPlace, state: dict[str, Any]) -> None:
    """Restore ZeRO state into `engine` and this rank's RNG states. `state` is the checkpoint's
    trainer state, read by the caller first: a world-size change must configure the engine for
    a universal checkpoint before it is built."""
    zero_dir = universal_checkpoint(checkpoint, place) if state["world_size"] != place.world_size else checkpoint
    load_path, _ = engine.load_checkpoint(str(zero_dir.parent), tag=zero_dir.name)
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint in {zero_dir}")
    rng = checkpoint / "rng" / f"rank{place.rank}.pt"
    if rng.is_file():  # a rank that did not exist when the checkpoint was written starts from its seed
        _restore_rng_states(torch.load(rng, map_location="cpu", weights_only=False))
