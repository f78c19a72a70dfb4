"""The sample-batch format of ADM's evaluator (and of DiT's sample_ddp.py): an .npz whose
`arr_0` is (N, H, W, 3) uint8, here with `labels` (N,) int64 beside it for class-conditional
samples. Written as a stream and read in batches, so 50,000 images at 512 px never sit in
memory at once; never unpickled.
"""
from __future__ import annotations

import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from dig_scale.atomic_file import write_atomically

IMAGES, LABELS = "arr_0", "labels"


def write_sample_npz(path: Path, parts: Iterable[np.ndarray], num_images: int, labels: np.ndarray | None) -> Path:
    """Write `parts` ((n_i, H, W, 3) uint8, n_i summing to `num_images`) as `arr_0` of a new
    .npz at `path`, atomically: a failure leaves no file at `path`, an existing one is kept."""
    if num_images < 1:
        raise ValueError(f"num_images {num_images}: expected at least one image")

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            written = 0
            with archive.open(f"{IMAGES}.npy", "w", force_zip64=True) as f:
                for i, part in enumerate(parts):
                    if part.dtype != np.uint8 or part.ndim != 4 or part.shape[-1] != 3:
                        raise ValueError(f"part {i}: expected (n, H, W, 3) uint8, got {part.shape} {part.dtype}")
                    if written == 0:
                        shape = (num_images, *part.shape[1:])
                        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                                  "fortran_order": False, "shape": shape}
                        np.lib.format.write_array_header_1_0(f, header)
                    elif part.shape[1:] != shape[1:]:
                        raise ValueError(f"part {i}: images of shape {part.shape[1:]}, earlier parts {shape[1:]}")
                    f.write(np.ascontiguousarray(part).tobytes())
                    written += len(part)
            if written != num_images:
                raise ValueError(f"{written} images written, expected {num_images}")
            if labels is not None:
                if labels.shape != (num_images,):
                    raise ValueError(f"labels of shape {labels.shape}, expected ({num_images},)")
                with archive.open(f"{LABELS}.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, labels.astype(np.int64), allow_pickle=False)

    path = Path(path)
    write_atomically(path, write, replace=False)
    return path


class SampleNpz:
    """An .npz of images: `arr_0` read in batches, other arrays whole (no pickles). With
    `images_required=False` it may hold only other arrays (e.g. precomputed statistics)."""

    def __init__(self, path: str | Path, images_required: bool = True):
        self.path = Path(path)
        try:
            self._archive = zipfile.ZipFile(self.path)
        except (FileNotFoundError, zipfile.BadZipFile) as e:
            raise ValueError(f"{self.path}: not a readable .npz ({e})") from None
        self.keys = [name.removesuffix(".npy") for name in self._archive.namelist()]
        self.has_images = IMAGES in self.keys
        self.shape: tuple[int, ...] = (0,)
        if not self.has_images:
            if images_required:
                raise ValueError(f"{self.path}: no '{IMAGES}' array (expected (N, H, W, 3) uint8 images); "
                                 f"it holds {self.keys}")
            return
        with self._open(IMAGES) as f:
            shape, dtype = _read_header(f, f"{self.path}:{IMAGES}")
        if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3:
            raise ValueError(f"{self.path}: '{IMAGES}' is {shape} {dtype}, expected (N, H, W, 3) uint8")
        self.shape = shape

    def _open(self, key: str):
        return self._archive.open(f"{key}.npy")

    def __len__(self) -> int:
        return self.shape[0]

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """`arr_0` in order, `batch_size` images at a time."""
        if not self.has_images:
            raise ValueError(f"{self.path}: no '{IMAGES}' images to read")
        image_bytes = int(np.prod(self.shape[1:]))
        with self._open(IMAGES) as f:
            _read_header(f, self.path)
            for start in range(0, len(self), batch_size):
                count = min(batch_size, len(self) - start)
                data = f.read(count * image_bytes)
                if len(data) != count * image_bytes:
                    raise ValueError(f"{self.path}: '{IMAGES}' ends after {start} images, its header says {len(self)}")
                yield np.frombuffer(data, np.uint8).reshape(count, *self.shape[1:])

    def array(self, key: str) -> np.ndarray:
        if key not in self.keys:
            raise KeyError(f"{self.path}: no array '{key}'; it holds {self.keys}")
        with self._open(key) as f:
            return np.lib.format.read_array(f, allow_pickle=False)

    def labels(self) -> np.ndarray | None:
        return self.array(LABELS) if LABELS in self.keys else None


def _read_header(f, where) -> tuple[tuple[int, ...], np.dtype]:
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        version = np.lib.format.read_magic(f)
        if version not in readers:
            raise ValueError(f"format version {version}, this reader knows {sorted(readers)}")
        shape, fortran_order, dtype = readers[version](f)
    except ValueError as e:
        raise ValueError(f"{where}: not a .npy array ({e})") from None
    if fortran_order:
        raise ValueError(f"{where}: Fortran-ordered arrays are not supported")
    return shape, dtype
