"""Names in a run's checkpoints directory (see ARCHITECTURE.md, "Checkpoints"):

    checkpoints/step-0005000/     one checkpoint, its tag the step, zero-padded to 7 digits
                  <DeepSpeed's files, as DeepSpeed writes them>
                  trainer_state.json   step, world size, loader state, config, code version, ...
                  ema.safetensors      fp32 EMA weights under the model's state-dict names
                  manifest.json        every other file with size and sha256; written last
    checkpoints/step-0005000-universal/   a conversion for another world size (derived, disposable)
    checkpoints/latest            the tag of the newest complete checkpoint (text)
"""
from __future__ import annotations

import re
from pathlib import Path

from dig_scale.atomic_file import write_text_atomically

CHECKPOINTS = "checkpoints"
LATEST = "latest"
MANIFEST = "manifest.json"
TRAINER_STATE = "trainer_state.json"
EMA_WEIGHTS = "ema.safetensors"
UNIVERSAL_SUFFIX = "-universal"
_TAG = re.compile(r"step-(\d{7,})")


class CheckpointError(Exception):
    """A checkpoint that cannot be used, with a message for the user: what is wrong, where, and
    which checkpoints there are."""


def checkpoint_tag(step: int) -> str:
    return f"step-{step:07d}"


def tag_step(tag: str) -> int | None:
    """The step a tag names, None when `tag` is not a checkpoint tag."""
    match = _TAG.fullmatch(tag)
    return int(match.group(1)) if match else None


def checkpoint_dirs(directory: Path) -> list[Path]:
    """The checkpoint directories in `directory` (complete or not), oldest first. Links are not
    followed: a checkpoint lives inside its run."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if tag_step(p.name) is not None and p.is_dir() and not p.is_symlink()]
    return sorted(found, key=lambda p: tag_step(p.name))


def is_complete(checkpoint: Path) -> bool:
    """Whether its save finished (the manifest is written last); says nothing about damage since."""
    return (checkpoint / MANIFEST).is_file()


def read_latest(directory: Path) -> str | None:
    """The tag `latest` names; None when there is no `latest`. Anything but a plain tag (a path,
    `../..`, garbage) raises CheckpointError: the pointer must name a checkpoint beside it."""
    pointer = directory / LATEST
    if not pointer.is_file():
        return None
    try:
        text = pointer.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{pointer}: unreadable ({e})") from None
    if tag_step(text) is None:
        raise CheckpointError(f"{pointer} holds {text[:80]!r}: expected the tag of a checkpoint in {directory}, "
                              "e.g. step-0005000")
    return text


def write_latest(directory: Path, tag: str) -> None:
    write_text_atomically(directory / LATEST, tag)


def describe(directory: Path) -> str:
    """One line listing the checkpoints in `directory`, for error messages."""
    dirs = checkpoint_dirs(directory)
    if not dirs:
        return f"{directory} holds no checkpoints"
    names = [p.name + ("" if is_complete(p) else " (incomplete)") for p in dirs]
    return f"{directory} holds: {', '.join(names)}"
