"""The manifest: a checkpoint's completion marker and its integrity record.

Rank 0 writes `manifest.json` last, after every rank has finished writing: every other file of
the checkpoint with its size and sha256. A checkpoint without one is an unfinished save; one
whose files do not match it is damaged (truncated, overwritten, tampered with).
"""
from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any

from dig_scale.atomic_file import write_text_atomically

from .layout import MANIFEST, CheckpointError

MANIFEST_FORMAT = 1
_READ_SIZE = 8 << 20


def file_digest(path: Path) -> dict[str, Any]:
    """{"size": bytes, "sha256": hex digest} of one file."""
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(_READ_SIZE):
            sha.update(block)
            size += len(block)
    return {"size": size, "sha256": sha.hexdigest()}


def digests(root: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """file_digest of each `root/name`, several files at once (hashlib releases the GIL)."""
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(names)))) as pool:
        return dict(zip(names, pool.map(lambda name: file_digest(root / name), names)))


def files_in(checkpoint: Path) -> list[str]:
    """Every regular file below `checkpoint` but the manifest, as '/'-separated relative paths."""
    return sorted(p.relative_to(checkpoint).as_posix() for p in checkpoint.rglob("*")
                  if p.is_file() and p.name != MANIFEST)


def write_manifest(checkpoint: Path, files: dict[str, dict[str, Any]]) -> None:
    """Mark `checkpoint` complete. `files` must cover exactly the files it holds."""
    unlisted = sorted(set(files_in(checkpoint)) - set(files))
    if unlisted:
        raise RuntimeError(f"{checkpoint}: no digest for {unlisted}")
    write_text_atomically(checkpoint / MANIFEST, json.dumps({"format": MANIFEST_FORMAT, "files": files}, indent=1,
                                                            sort_keys=True))


def _plain_relative(name: str) -> bool:
    path = PurePosixPath(name)
    return bool(name) and not path.is_absolute() and ".." not in path.parts and "\\" not in name


def read_manifest(checkpoint: Path) -> dict[str, dict[str, Any]]:
    """name -> {"size", "sha256"} as the manifest lists them; CheckpointError when there is no
    manifest (an unfinished save) or it is malformed."""
    path = checkpoint / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{checkpoint} is incomplete: it has no {MANIFEST} (a save that did not finish)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = manifest["files"]
        if manifest["format"] != MANIFEST_FORMAT or not all(
                _plain_relative(name) and isinstance(entry["size"], int) and isinstance(entry["sha256"], str)
                for name, entry in files.items()):
            raise ValueError("unexpected content")
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not a dig-scale manifest ({e}); the checkpoint is damaged") from None
    return files


def verify_checkpoint(checkpoint: str | Path, check_hashes: bool = True) -> None:
    """Raise CheckpointError naming every file of `checkpoint` that is missing, unlisted, of the
    wrong size or (with check_hashes) of the wrong content."""
    checkpoint = Path(checkpoint)
    listed = read_manifest(checkpoint)
    present = set(files_in(checkpoint))
    problems = [f"{name}: missing" for name in sorted(set(listed) - present)]
    problems += [f"{name}: not listed in the manifest" for name in sorted(present - set(listed))]
    sizes = {name: (checkpoint / name).stat().st_size for name in sorted(present & set(listed))}
    problems += [f"{name}: {size} bytes, the manifest says {listed[name]['size']}"
                 for name, size in sizes.items() if size != listed[name]["size"]]
    if check_hashes:
        intact = [name for name, size in sizes.items() if size == listed[name]["size"]]
        problems += [f"{name}: content differs from the manifest (sha256)" for name, digest
                     in digests(checkpoint, intact).items() if digest["sha256"] != listed[name]["sha256"]]
    if problems:
        raise CheckpointError(f"{checkpoint} is damaged:\n  " + "\n  ".join(problems))
