"""The training-time reader: a StreamingDataset that turns stored posteriors into training samples.

    ds = LatentDataset("s3://bucket/in1k-256", "/tmp/cache", batch_size=32, seed=0)
    loader = StreamingDataLoader(ds, batch_size=32, num_workers=8)
    for batch in loader: batch["x"]  # (32, 4, 32, 32) float32, batch["y"] (32,) int64

Each sample's noise and flip come from `sample_generator(seed, index, epoch)`. The epoch is
the one thing a worker cannot know by itself: mosaicml-streaming keeps the epoch counter in
shared memory and each worker learns its epoch (fresh, or restored by `load_state_dict` for a
mid-epoch resume) at the start of `__iter__`, in `_resume_incr_epoch`. We record it there, in
the worker's own copy of the dataset, so persistent and non-persistent workers, resumed runs and
any number of ranks all agree on it.

Reading is checked (see integrity.py): the index's file names before streaming sees them, every
shard's hash the first time the job reads it, and any failure to prepare or decode a shard is a
DataError naming it, raised where the samples are consumed, never an epoch cut short in silence
(streaming ends a worker's epoch when its download thread fails, and logs the error from there;
and the end of that epoch waits forever for the thread that died).
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from streaming import StreamingDataset

from dig_scale.atomic_file import write_text_atomically

from .integrity import DataError
from .sample_rng import sample_generator
from .schema import INDEX_FILENAME, DatasetMetadata
from .storage import default_cache_dir, is_remote, read_dataset
from .streaming_internals import (
    background_failed,
    end_epoch_early,
    is_local_leader,
    is_prepared,
    mark_unprepared,
    require_epoch_hook,
    shards_being_prepared,
)
from .verified_stream import VerifiedStream

require_epoch_hook()


class LatentDataset(StreamingDataset):
    """Training samples from a dataset written by data_prep/encode.py.

    Args:
        path: dataset directory or object-store URI (s3://, gs://, ...).
        cache_dir: local cache for a remote dataset (default: one per dataset under the temp dir,
            shared by the ranks of a node). Given with a local `path`, the local path is treated
            as the remote and copied into the cache. Without it a local dataset is read in place,
            and streaming decompresses each zstd shard next to itself: the directory must be
            writable and grows by the raw size, so give a cache_dir for read-only or shared copies.
        batch_size: per-rank batch size (streaming partitions the epoch by it).
        shuffle: shuffle the order each epoch (deterministic given `seed`).
        seed: seeds both the shuffle and the per-sample noise/flip generator.
        random_flip: pick the image or its horizontal flip at random per (sample, epoch).
        num_canonical_nodes: keep it fixed across resumptions that change the number of ranks.
        **streaming_kwargs: any other StreamingDataset argument (cache_limit, predownload, ...).

    Samples are dicts: "x" float32 (C, H, W) — latent: scaling_factor * (mean + std * eps -
    shift_factor) of the chosen flip; pixel: the image in [-1, 1] — "y" int64 label (0-d tensor),
    "index" int global sample index.
    """

    def __init__(self, path: str, cache_dir: str | None = None, *, batch_size: int, shuffle: bool = True,
                 seed: int = 0, random_flip: bool = True, num_canonical_nodes: int | None = None,
                 **streaming_kwargs: Any) -> None:
        path = str(path)
        files = read_dataset(path)  # the index checked before streaming opens anything it names
        self.metadata: DatasetMetadata = files.metadata
        if is_remote(path) or cache_dir is not None:
            remote, local = path, str(cache_dir or default_cache_dir(path))
            if is_local_leader():
                _cache_index(local, files.index_text)
            if dist.is_available() and dist.is_initialized():
                dist.barrier()  # streaming reads the cached index on every rank of the node
        else:
            remote, local = None, path
        streaming_kwargs.setdefault("shuffle_seed", seed)
        super().__init__(streams=[VerifiedStream(remote=remote, local=local)], batch_size=batch_size,
                         shuffle=shuffle, num_canonical_nodes=num_canonical_nodes, **streaming_kwargs)
        if self.num_samples != self.metadata.num_samples:
            raise ValueError(f"{path}: the index holds {self.num_samples} samples but the metadata says "
                             f"{self.metadata.num_samples}; the dataset is inconsistent, re-encode it")
        self.seed = seed
        self.random_flip = random_flip
        self._epoch = 0
        self._failure: DataError | None = None  # a shard this process failed to prepare

    @property
    def epoch(self) -> int:
        """The epoch whose noise `dataset[i]` draws: the one being iterated in this process (0 before)."""
        return self._epoch

    def _resume_incr_epoch(self) -> tuple[int, int]:
        epoch, sample_in_epoch = super()._resume_incr_epoch()
        self._epoch = epoch
        return epoch, sample_in_epoch

    def shard_file(self, shard_id: int) -> str:
        """The file a shard's samples are read from, for messages."""
        stream = self.streams[self.stream_per_shard[shard_id]]
        return os.path.join(stream.local, stream.split or "", self.shards[shard_id].file_pairs[0][0].basename)

    def prepare_shard(self, shard_id: int, blocking: bool = True) -> None:
        """streaming's, with failures recorded and named. A failure in streaming's download and
        ready threads (they call with blocking=False) ends the epoch through its failure event and
        is raised by __iter__: raised inside them it would kill the thread without the exit count
        that streaming's end of epoch waits for, which hangs the worker forever."""
        try:
            super().prepare_shard(shard_id, blocking)
        except Exception as e:
            # Not "being prepared" any more: the next process that needs it fails itself, not waits.
            mark_unprepared(self, shard_id)
            self._failure = e if isinstance(e, DataError) else DataError(
                f"{self.shard_file(shard_id)}: cannot prepare this shard ({type(e).__name__}: {e})")
            if blocking:
                raise self._failure from e
            end_epoch_early(self)

    @property
    def source(self) -> str:
        """Where the samples come from: the dataset's URI or directory, for messages."""
        return self.streams[0].remote or self.streams[0].local

    def describe_wait(self) -> str:
        """What a reader that gets no samples waits for, for the data-wait timeout's message."""
        busy = [self.shard_file(i) for i in shards_being_prepared(self)]
        return (f"samples of {self.source}; "
                + (f"shards being downloaded or decompressed on this node: {', '.join(busy)}" if busy else
                   "no shard is being prepared on this node (a stalled loader worker or file system)"))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        yield from super().__iter__()
        if self._failure is not None:
            raise self._failure
        if background_failed(self):
            raise DataError(f"{self.source}: streaming's download thread failed and ended the epoch early "
                            "(its error is logged above)")

    def get_item(self, sample_id: int, retry: int = 7) -> dict[str, Any]:
        if self._failure is not None:
            raise self._failure
        shard_id, index_in_shard = self.spanner[sample_id]
        while not is_prepared(self, shard_id):  # random access reads verified shards too
            self.prepare_shard(shard_id)
        try:
            raw = super().get_item(sample_id, retry)
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"{self.shard_file(shard_id)}: sample {index_in_shard} of this shard (dataset index "
                            f"{sample_id}) cannot be read ({type(e).__name__}: {e})") from e
        rng = sample_generator(self.seed, sample_id, self._epoch)
        flip = int(rng.integers(2)) if self.random_flip else 0
        meta = self.metadata
        if meta.kind == "latent":
            mean = raw["mean"][flip].astype(np.float32)
            std = raw["std"][flip].astype(np.float32)
            eps = rng.standard_normal(mean.shape, dtype=np.float32)
            x = np.float32(meta.scaling_factor) * (mean + std * eps - np.float32(meta.shift_factor))
        else:
            pixels = raw["pixels"][:, :, ::-1] if flip else raw["pixels"]
            x = pixels.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
        return {"x": torch.from_numpy(np.ascontiguousarray(x)),
                "y": torch.tensor(int(raw["label"]), dtype=torch.int64),
                "index": int(sample_id)}


def _cache_index(cache_dir: str, index_text: str) -> None:
    """Put the dataset's checked index in the cache, replacing a stale one (a dataset re-encoded
    at the same path): streaming reads the cached index when there is one."""
    path = os.path.join(cache_dir, INDEX_FILENAME)
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == index_text:
                return
    except FileNotFoundError:
        pass
    os.makedirs(cache_dir, exist_ok=True)
    write_text_atomically(path, index_text)
