"""Files written whole or not at all: a reader (or a job restarted after a crash) sees either the
previous content or the new one, never half of it.

The content goes to a temporary file beside the target, is flushed to disk, then renamed over the
target (or, with replace=False, linked to it, which fails if the target exists: a record that
must never be replaced). The directory is flushed too, so the rename survives a power cut.
"""
from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: str | Path, write: Callable[[Path], None], *, replace: bool = True) -> None:
    """`write(tmp)` fills a temporary file, which then becomes `path`. With replace=False an
    existing `path` is left alone and FileExistsError raised."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        write(tmp)
        _fsync(tmp)
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync(path.parent, directory=True)


def write_text_atomically(path: str | Path, text: str, *, replace: bool = True) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), replace=replace)
