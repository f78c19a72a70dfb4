"""Which checkpoints a run keeps: the newest `keep_last`, every one at a multiple of `keep_every`,
and the one `latest` names. Everything else in the checkpoints directory goes: older checkpoints,
unfinished saves, and conversions of checkpoints that are gone."""
from __future__ import annotations

import shutil
from pathlib import Path

from .layout import (
    UNIVERSAL_SUFFIX,
    CheckpointError,
    checkpoint_dirs,
    checkpoint_tag,
    is_complete,
    read_latest,
    tag_step,
)


def _kept(steps: list[int], keep_last: int, keep_every: int, latest: str | None) -> set[str]:
    """Tags kept among complete checkpoints at `steps` (ascending)."""
    keep = {checkpoint_tag(s) for s in steps[-keep_last:]} if keep_last > 0 else set()
    keep |= {checkpoint_tag(s) for s in steps if keep_every > 0 and s % keep_every == 0}
    return keep | ({latest} if latest else set())


def _safe_latest(directory: Path) -> str | None:
    try:
        return read_latest(directory)
    except CheckpointError:
        return None


def doomed(directory: Path, keep_last: int, keep_every: int, incoming_step: int | None = None) -> list[Path]:
    """What the policy deletes; with `incoming_step`, as it will stand once that step is saved
    and `latest` names it. Oldest first."""
    dirs = checkpoint_dirs(directory)
    steps = sorted({tag_step(p.name) for p in dirs if is_complete(p)} | (
        {incoming_step} if incoming_step is not None else set()))
    latest = checkpoint_tag(incoming_step) if incoming_step is not None else _safe_latest(directory)
    keep = _kept(steps, keep_last, keep_every, latest)
    out = [p for p in dirs if p.name not in keep]
    out += [p for p in sorted(directory.glob(f"step-*{UNIVERSAL_SUFFIX}"))
            if p.is_dir() and p.name.removesuffix(UNIVERSAL_SUFFIX) not in keep]
    return out


def delete(paths: list[Path]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
