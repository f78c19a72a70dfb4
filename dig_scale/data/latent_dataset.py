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
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from streaming import StreamingDataset

from .sample_rng import sample_generator
from .schema import DatasetMetadata
from .storage import default_cache_dir, is_remote, read_metadata
from .streaming_internals import require_epoch_hook

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
        self.metadata: DatasetMetadata = read_metadata(path)
        if is_remote(path) or cache_dir is not None:
            remote, local = path, str(cache_dir or default_cache_dir(path))
        else:
            remote, local = None, path
        streaming_kwargs.setdefault("shuffle_seed", seed)
        super().__init__(remote=remote, local=local, batch_size=batch_size, shuffle=shuffle,
                         num_canonical_nodes=num_canonical_nodes, **streaming_kwargs)
        if self.num_samples != self.metadata.num_samples:
            raise ValueError(f"{path}: the index holds {self.num_samples} samples but the metadata says "
                             f"{self.metadata.num_samples}; the dataset is inconsistent, re-encode it")
        self.seed = seed
        self.random_flip = random_flip
        self._epoch = 0

    @property
    def epoch(self) -> int:
        """The epoch whose noise `dataset[i]` draws: the one being iterated in this process (0 before)."""
        return self._epoch

    def _resume_incr_epoch(self) -> tuple[int, int]:
        epoch, sample_in_epoch = super()._resume_incr_epoch()
        self._epoch = epoch
        return epoch, sample_in_epoch

    def get_item(self, sample_id: int, retry: int = 7) -> dict[str, Any]:
        raw = super().get_item(sample_id, retry)
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
