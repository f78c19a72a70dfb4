"""The DataLoader side of encoding: workers read and decode whole parts into uint8 batches, so the
main process (and the GPU) never waits on JPEG decoding."""
from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .preprocess import RejectedImage, decode_image
from .sources import Part


class DecodedBatch(NamedTuple):
    """Up to batch_size decoded images of one part, in the part's order.

    `seen` counts inputs consumed (decoded + rejected); `last` marks the part's final batch,
    which is sent even when empty so that every part gets finished.
    """

    part: int
    images: torch.Tensor             # (B, 3, R, R) uint8
    labels: list[int]
    keys: list[str]
    rejects: list[dict[str, str]]    # {"path": ..., "reason": ...}
    seen: int
    last: bool


class PartBatches(IterableDataset):
    """Worker w of W decodes parts w, w + W, ... (whole parts, so each part has one writer)."""

    def __init__(self, source, parts: list[Part], resolution: int, batch_size: int):
        self.source, self.parts, self.resolution, self.batch_size = source, parts, resolution, batch_size

    def __iter__(self) -> Iterator[DecodedBatch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for part in self.parts[worker::workers]:
            yield from self._part_batches(part)

    def _part_batches(self, part: Part) -> Iterator[DecodedBatch]:
        images, labels, keys, rejects, seen = [], [], [], [], 0
        for raw in self.source.iter_part(part):
            seen += 1
            try:
                if raw.problem is not None:
                    raise RejectedImage(raw.problem)
                images.append(decode_image(raw.data, self.resolution))
            except RejectedImage as e:
                rejects.append({"path": raw.where, "reason": str(e)})
                continue
            labels.append(raw.label)
            keys.append(raw.key)
            if len(images) == self.batch_size:
                yield self._batch(part, images, labels, keys, rejects, seen, last=False)
                images, labels, keys, rejects, seen = [], [], [], [], 0
        yield self._batch(part, images, labels, keys, rejects, seen, last=True)

    def _batch(self, part: Part, images, labels, keys, rejects, seen: int, last: bool) -> DecodedBatch:
        r = self.resolution
        stacked = np.stack(images) if images else np.zeros((0, 3, r, r), np.uint8)
        return DecodedBatch(part.index, torch.from_numpy(stacked), labels, keys, rejects, seen, last)
