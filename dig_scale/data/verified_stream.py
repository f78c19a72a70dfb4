"""A mosaicml-streaming Stream whose shards are verified against the index the first time a job
reads them (see integrity.py), and whose failures name the shard.

Streaming checks hashes only when it downloads or decompresses a shard, and only if asked; shards
already on disk (a dataset read in place, a cache filled by an earlier job) are trusted as they
are. Here every shard starts as not yet prepared, so its first read in a job goes through
`prepare_shard`, which brings it on disk as streaming does and then hashes what will be read.
Streaming prepares each shard once per node (its shard states live in shared memory), so a shard
is hashed once per node per job, by whichever worker needs it first, ahead of use.
"""
from __future__ import annotations

import os

import numpy as np
from numpy.typing import NDArray
from streaming import Stream
from streaming.base.format import Reader

from .integrity import DataError, verify_shard_file


class VerifiedStream(Stream):
    def set_up_local(self, shards: list[Reader], cache_usage_per_shard: NDArray[np.int64]) -> None:
        super().set_up_local(shards, cache_usage_per_shard)
        # Present or not, no shard is ready to read: streaming marks a shard that uses no cache as
        # not prepared. Its cache usage is counted when prepare_shard returns it.
        cache_usage_per_shard[:] = 0

    def prepare_shard(self, shard: Reader) -> int:
        """Bring the shard's data on disk, verified; returns the bytes it occupies in the cache."""
        try:
            self._prepare_verified(shard)
        except DataError:
            if self.remote in (None, self.local):  # read in place: the dataset itself is damaged
                raise
            shard.evict()  # a stale or damaged copy in the cache: fetch it again, once
            self._prepare_verified(shard)
        return sum(os.path.getsize(path) for info in _file_infos(shard)
                   if os.path.isfile(path := self._path(info.basename)))

    def _prepare_verified(self, shard: Reader) -> None:
        try:
            super().prepare_shard(shard)
        except Exception as e:  # a failed download, a truncated or corrupt zstd frame, a missing file
            source = shard.file_pairs[0][1] or shard.file_pairs[0][0]
            raise DataError(f"{self._path(source.basename)}: cannot prepare this shard for reading "
                            f"({type(e).__name__}: {e})") from e
        for raw_info, _ in shard.file_pairs:
            verify_shard_file(self._path(raw_info.basename), raw_info.bytes, raw_info.hashes)

    def _path(self, basename: str) -> str:
        return os.path.join(self.local, self.split or "", basename)


def _file_infos(shard: Reader) -> list:
    return [info for pair in shard.file_pairs for info in pair if info is not None]
