"""Tiny pixel datasets written by the real MDS writer, for the reader, resume and shared-memory
tests: sample i is an image whose every value is `fill(i)` (uint8), labelled i % num_classes."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from dig_scale.data import DatasetMetadata
from dig_scale.data.mds_writer import write_mds_dataset


def write_pixel_dataset(path: Path, num_samples: int, shape: tuple[int, int, int] = (3, 8, 8),
                        num_classes: int = 2, fill: Callable[[int], int] = lambda i: i,
                        size_limit: int | None = None) -> Path:
    counts = [len(range(c, num_samples, num_classes)) for c in range(num_classes)]
    meta = DatasetMetadata(kind="pixel", sample_shape=shape, resolution=shape[1], num_samples=num_samples,
                           num_classes=num_classes, class_counts=counts, class_names=None, vae=None,
                           scaling_factor=1.0, shift_factor=0.0, latent_mean=[0.0] * shape[0],
                           latent_std=[1.0] * shape[0], preprocessing={}, source={"type": "test"})
    samples = ({"pixels": np.full(shape, fill(i) % 256, np.uint8), "label": np.int64(i % num_classes),
                "key": f"s{i}"} for i in range(num_samples))
    write_mds_dataset(str(path), meta, samples, size_limit)
    return path
