"""Finding and reading checkpoints without DeepSpeed or a process group: what export tools and
the trainer's resume decision need (see ARCHITECTURE.md, "Checkpoints")."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .layout import (
    CHECKPOINTS,
    EMA_WEIGHTS,
    LATEST,
    MANIFEST,
    TRAINER_STATE,
    CheckpointError,
    checkpoint_dirs,
    describe,
    is_complete,
    read_latest,
    tag_step,
)
from .manifest import verify_checkpoint

TRAINER_STATE_FORMAT = 2  # 2: records the dataset's identity
# key -> type of every trainer_state.json (written by CheckpointManager.save)
TRAINER_STATE_KEYS = {"format": int, "step": int, "world_size": int, "skipped_steps": int, "loader": dict,
                      "config": dict, "dataset": dict, "code_version": str}


def resolve_checkpoint(path: str | Path, tag: str = "latest") -> Path:
    """The verified, complete checkpoint directory that `path` and `tag` name.

    `path` is a run directory, its checkpoints/ directory or one checkpoint directory; `tag` is
    "latest" (what the run's `latest` names) or a tag such as "step-0005000". Raises
    CheckpointError saying what is missing or damaged and which checkpoints there are.
    """
    path = Path(path)
    if tag_step(path.name) is not None or (path / MANIFEST).is_file():
        if tag not in ("latest", path.name):
            raise CheckpointError(f"{path} is the checkpoint {path.name}, not {tag!r}")
        checkpoint, directory = path, path.parent
    else:
        directory = path / CHECKPOINTS if (path / CHECKPOINTS).is_dir() else path
        if not directory.is_dir():
            raise CheckpointError(f"{path}: no such run, checkpoints directory or checkpoint")
        if tag == "latest":
            tag = read_latest(directory)
            if tag is None:
                raise CheckpointError(f"{directory / LATEST} is missing; {describe(directory)}: name one by its tag")
        elif tag_step(tag) is None:
            raise CheckpointError(f"tag {tag!r}: expected 'latest' or a checkpoint tag such as step-0005000")
        checkpoint = directory / tag
        if not checkpoint.is_dir() or checkpoint.is_symlink():
            raise CheckpointError(f"{checkpoint} does not exist; {describe(directory)}")
    try:
        verify_checkpoint(checkpoint)
    except CheckpointError as e:
        raise CheckpointError(f"{e}\n{describe(directory)}") from None
    return checkpoint


def read_trainer_state(checkpoint: str | Path) -> dict[str, Any]:
    """The checkpoint's trainer_state.json (step, world_size, skipped_steps, loader, config,
    dataset (integrity.dataset_identity of the training data), code_version), checked for those
    keys and their types."""
    path = Path(checkpoint) / TRAINER_STATE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{checkpoint} has no {TRAINER_STATE}: not a dig-scale checkpoint") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); the checkpoint is damaged") from None
    wrong = [key for key, kind in TRAINER_STATE_KEYS.items()
             if not isinstance(state, dict) or not isinstance(state.get(key), kind)]
    if wrong:
        raise CheckpointError(f"{path}: missing or mistyped keys {wrong}; expected {TRAINER_STATE_KEYS}")
    if state["format"] != TRAINER_STATE_FORMAT:
        raise CheckpointError(f"{path}: format {state['format']}, this dig-scale reads format {TRAINER_STATE_FORMAT}")
    return state


def read_ema_state_dict(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    """The fp32 EMA weights (CPU tensors) under the model's state-dict names."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(checkpoint) / EMA_WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{checkpoint} has no EMA weights ({EMA_WEIGHTS})")
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: not readable as safetensors ({e}); the checkpoint is damaged") from None


@dataclass
class ResumeChoice:
    checkpoint: Path | None                          # None: no checkpoint, the run starts at step 0
    notes: list[str] = field(default_factory=list)   # what was skipped and why, for the log


def newest_complete_checkpoint(directory: Path) -> ResumeChoice:
    """The newest checkpoint in `directory` that is complete and intact, with a note for each
    newer one skipped. A run that has completed a save before (it has a `latest`, or a damaged
    complete checkpoint) never silently starts over: CheckpointError when none is usable."""
    notes: list[str] = []
    pointer_exists = (directory / LATEST).exists()
    try:
        latest = read_latest(directory)
    except CheckpointError as e:
        latest, notes = None, [f"ignoring {e}"]
    dirs = checkpoint_dirs(directory)
    if dirs and not pointer_exists:
        notes.append(f"{directory / LATEST} is missing; looking for the newest complete checkpoint")
    elif latest and not (directory / latest).is_dir():
        notes.append(f"{directory / LATEST} names {latest}, which does not exist")
    damaged = []
    for checkpoint in reversed(dirs):
        if not is_complete(checkpoint):
            notes.append(f"skipped {checkpoint.name}: incomplete (no {MANIFEST}: a save that did not finish)")
            continue
        try:
            verify_checkpoint(checkpoint)
        except CheckpointError as e:
            notes.append(f"skipped {checkpoint.name}: {e}")
            damaged.append(checkpoint.name)
            continue
        return ResumeChoice(checkpoint, notes)
    if damaged or pointer_exists:
        raise CheckpointError("\n".join([*notes, f"no usable checkpoint in {directory}, but this run has saved "
                                         "before: refusing to start it over from step 0. Repair or remove the "
                                         "damaged checkpoints, or use a new run_name"]))
    return ResumeChoice(None, notes)
