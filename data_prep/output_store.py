"""The output location: a local directory, or an object-store URI written through a local staging
directory with mosaicml-streaming's uploaders (`--staging-dir` forces that path for local outputs too).

Small JSON files (plan, part manifests, index, metadata) are written whole: an atomic rename
locally, a single object upload remotely, so a crash never leaves half a file behind.

What is already there (`entries`) is listed for a local output; an object store is probed for the
names an encode would write, the only objects it could replace (listing needs each client's own
API). Removing is local only: encode.py deletes nothing in an object store.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable

from dig_scale.atomic_file import write_text_atomically
from dig_scale.data.storage import default_cache_dir, is_remote, join, read_text

from .errors import EncodeError


class OutputStore:
    def __init__(self, output: str, staging_dir: str | None = None):
        self.remote = is_remote(output)
        self.root = output.rstrip("/") if self.remote else os.path.abspath(output)
        self.staged = self.remote or staging_dir is not None
        self.staging = os.path.abspath(staging_dir) if staging_dir else (
            default_cache_dir(self.root) + "-staging" if self.remote else None)

    def __str__(self) -> str:
        return self.root

    def writer_out(self, part_name: str) -> str | tuple[str, str]:
        """MDSWriter's `out` for a part: its directory, or (staging dir, remote dir)."""
        if self.staged:
            return os.path.join(self.staging, part_name), join(self.root, part_name)
        return os.path.join(self.root, part_name)

    def writer_local(self, part_name: str) -> str:
        """Where MDSWriter puts a part's files on this machine."""
        out = self.writer_out(part_name)
        return out[0] if isinstance(out, tuple) else out

    def clear_local(self, part_name: str) -> None:
        """Drop what an interrupted run left of a part on this machine (remote objects get overwritten)."""
        shutil.rmtree(self.writer_local(part_name), ignore_errors=True)

    def read_text(self, name: str) -> str | None:
        return read_text(join(self.root, name))

    def write_text(self, name: str, text: str) -> None:
        """Write `name` (a path relative to the output root, '/'-separated) in one piece."""
        if not self.staged:
            path = os.path.join(self.root, *name.split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_text_atomically(path, text)
            return
        from streaming.base.storage import CloudUploader

        folder, _, filename = name.rpartition("/")
        os.makedirs(self.staging, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.staging) as local:
            uploader = CloudUploader.get((local, join(self.root, folder) if folder else self.root), keep_local=False)
            with open(os.path.join(local, filename), "w", encoding="utf-8") as f:
                f.write(text)
            uploader.upload_file(filename)

    def entries(self, probe: Iterable[str]) -> list[str]:
        """Top-level names in the output: all of them locally; remotely, those of `probe` (paths
        relative to the root) that exist."""
        if self.remote:
            return sorted({name.split("/")[0] for name in probe if self.read_text(name) is not None})
        if not os.path.exists(self.root):
            return []
        if not os.path.isdir(self.root):
            raise EncodeError(f"--output {self.root}: is a file; expected a directory for the dataset")
        return sorted(os.listdir(self.root))

    def remove(self, names: list[str]) -> None:
        """Delete these top-level entries of a local output (files or whole directories)."""
        if self.remote:
            raise EncodeError(f"--output {self.root}: encode.py deletes nothing in an object store; delete "
                              f"{', '.join(names)} there with the store's own tools, or choose another --output")
        for name in names:
            path = os.path.join(self.root, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
