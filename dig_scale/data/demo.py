"""The built-in demo dataset: scikit-learn's 1,797 bundled 8x8 handwritten digits (10 classes),
upsampled to a chosen resolution and stored in pixel space, so training runs with no download.

    path = ensure_demo_dataset(default_demo_path(32), resolution=32)   # ~1 s on a CPU
"""
from __future__ import annotations

import os
import shutil
import uuid

import numpy as np
from PIL import Image

from .channel_stats import pixel_moments
from .mds_writer import write_mds_dataset
from .schema import INDEX_FILENAME, METADATA_FILENAME, DatasetMetadata, tool_info, utc_timestamp
from .storage import read_metadata

DEMO_SOURCE = "sklearn-digits"
DEMO_DEFAULT_RESOLUTION = 32
DEMO_NUM_CLASSES = 10


def default_demo_path(resolution: int = DEMO_DEFAULT_RESOLUTION) -> str:
    """Where the demo lives unless told otherwise: $DIG_SCALE_DATA or ~/.cache/dig_scale."""
    root = os.environ.get("DIG_SCALE_DATA") or os.path.join(os.path.expanduser("~"), ".cache", "dig_scale")
    return os.path.join(root, f"demo-digits-{resolution}")


def digit_images(resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """The digits as uint8 RGB images (N, 3, R, R) (white ink on black) and int64 labels (N,).

    The 0..16 grey levels are scaled to 0..255 and upsampled with BICUBIC, which is what the
    ADM center-crop preprocessing does to a square image smaller than the target.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    grey = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    images = np.empty((len(grey), 3, resolution, resolution), np.uint8)
    for i, small in enumerate(grey):
        big = Image.fromarray(small, mode="L").resize((resolution, resolution), Image.Resampling.BICUBIC)
        images[i] = np.asarray(big)[None]
    return images, digits.target.astype(np.int64)


def _is_finished_demo(path: str, resolution: int) -> bool:
    try:
        meta = read_metadata(path)
    except FileNotFoundError:
        return False
    if meta.source.get("type") != DEMO_SOURCE or meta.resolution != resolution:
        raise ValueError(f"{path}: holds another dataset ({meta.source.get('type')} at {meta.resolution} px), "
                         f"expected the {DEMO_SOURCE} demo at {resolution} px; choose another path")
    return True


def _remove_unfinished(path: str) -> None:
    """Remove what an interrupted writer of *this* module may have left, and nothing else."""
    ours = {INDEX_FILENAME, METADATA_FILENAME}
    leftovers = os.listdir(path)
    if any(name not in ours and not name.startswith("shard.") for name in leftovers):
        raise ValueError(f"{path}: exists and is not a dig-scale dataset (no {METADATA_FILENAME}); "
                         "expected a missing or empty directory for the demo dataset")
    shutil.rmtree(path)


def _write_demo(directory: str, resolution: int) -> None:
    images, labels = digit_images(resolution)
    shape = (3, resolution, resolution)
    moments = pixel_moments(images)
    meta = DatasetMetadata(
        kind="pixel", sample_shape=shape, resolution=resolution, num_samples=len(labels),
        num_classes=DEMO_NUM_CLASSES, class_counts=np.bincount(labels, minlength=DEMO_NUM_CLASSES).tolist(),
        class_names=[str(d) for d in range(DEMO_NUM_CLASSES)], vae=None, scaling_factor=1.0, shift_factor=0.0,
        latent_mean=moments.mean(), latent_std=moments.std(),
        preprocessing={"method": "bicubic upsample", "from": "8x8 grey levels 0..16 scaled to 0..255",
                       "to": resolution, "color": "grey replicated to RGB"},
        source={"type": DEMO_SOURCE, "description": "scikit-learn load_digits (UCI optical digits test set)"},
        tool=tool_info("dig_scale.data.demo"), created=utc_timestamp())
    samples = ({"pixels": pixels, "label": label, "key": f"{DEMO_SOURCE}/{i}"}
               for i, (pixels, label) in enumerate(zip(images, labels)))
    write_mds_dataset(directory, meta, samples)


def ensure_demo_dataset(path: str | None = None, resolution: int = DEMO_DEFAULT_RESOLUTION) -> str:
    """Write the demo dataset at `path` (default: `default_demo_path(resolution)`) unless a
    finished one is there; return the path.

    Safe to call from every rank at once: each writes into its own temporary directory and
    renames it into place; the first rename wins and the others discard theirs.
    """
    if not 8 <= resolution <= 1024:
        raise ValueError(f"demo resolution must be in [8, 1024] px, got {resolution}")
    path = os.path.abspath(path or default_demo_path(resolution))
    if _is_finished_demo(path, resolution):
        return path
    if os.path.isdir(path):
        _remove_unfinished(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    staging = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        _write_demo(staging, resolution)
        try:
            os.rename(staging, path)
        except OSError:
            if not _is_finished_demo(path, resolution):  # lost the race to a finished writer: fine
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path
