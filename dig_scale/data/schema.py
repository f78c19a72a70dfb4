"""The on-disk contract between `data_prep/encode.py` (writer) and `LatentDataset` (reader).

A dataset is a directory (local or object store) holding

    index.json                 mosaicml-streaming MDS index over all shards (encode.py merges it
                               from the part-NNNNNN/ sub-datasets its ranks write independently)
    dig_scale_dataset.json     DatasetMetadata, written last: its presence marks a finished dataset

Two kinds of samples, chosen by `DatasetMetadata.kind`:

* "latent": the VAE posterior of the image and of its horizontal flip, unscaled,
  `mean` and `std` as float16 arrays (2, C, h, w) (index 0 = image, 1 = flipped image).
  A training sample is `scaling_factor * (mean[f] + std[f] * eps - shift_factor)`.
* "pixel": the preprocessed image as uint8 (3, H, W); a training sample is `u / 127.5 - 1`
  in [-1, 1], flipped on read (a flip of pixels is exact, so only one copy is stored).

Every sample also has `label` (int64 class index) and `key` (str: where the image came from).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata as package_metadata
from typing import Any, Literal

SCHEMA_VERSION = 1
METADATA_FILENAME = "dig_scale_dataset.json"
INDEX_FILENAME = "index.json"  # mosaicml-streaming's name for an MDS index

# float16 halves the size of fp32 with ~1e-3 relative error, far below the posterior std
# of SD-style VAEs; the reader computes in float32.
LATENT_STORAGE_DTYPE = "float16"
PIXEL_STORAGE_DTYPE = "uint8"
MDS_COMPRESSION = "zstd"
MDS_HASHES = ["sha1", "xxh64"]

SampleKind = Literal["latent", "pixel"]


def mds_columns(kind: SampleKind, sample_shape: tuple[int, int, int]) -> dict[str, str]:
    """MDS column name -> encoding for a dataset of `kind` whose training samples are (C, H, W)."""
    c, h, w = sample_shape
    if kind == "latent":
        shape = f"2,{c},{h},{w}"
        arrays = {"mean": f"ndarray:{LATENT_STORAGE_DTYPE}:{shape}", "std": f"ndarray:{LATENT_STORAGE_DTYPE}:{shape}"}
    elif kind == "pixel":
        arrays = {"pixels": f"ndarray:{PIXEL_STORAGE_DTYPE}:{c},{h},{w}"}
    else:
        raise ValueError(f"sample kind must be 'latent' or 'pixel', got {kind!r}")
    return {**arrays, "label": "int64", "key": "str"}


@dataclass
class DatasetMetadata:
    """Everything a consumer needs to know about a dataset without reading its shards.

    `latent_mean` / `latent_std` are per-channel statistics of the unscaled samples (latent:
    `mean + std * eps` over all images, positions and both flips; pixel: values in [-1, 1]).
    `rejects` lists inputs that could not be used, as {"path": ..., "reason": ...}.
    """

    kind: SampleKind
    sample_shape: tuple[int, int, int]          # (C, H, W) of one training sample
    resolution: int                             # image side in pixels after preprocessing
    num_samples: int
    num_classes: int
    class_counts: list[int]                     # samples per class index
    class_names: list[str] | None               # ImageFolder sub-folder names, when known
    vae: str | None                             # hub id or directory; None for pixel data
    scaling_factor: float                       # 1.0 for pixel data
    shift_factor: float                         # 0.0 unless the VAE config sets one
    latent_mean: list[float]
    latent_std: list[float]
    preprocessing: dict[str, Any]
    source: dict[str, Any]
    vae_subfolder: str | None = None            # where in `vae` the VAE lives (pipeline repos: "vae")
    rejects: list[dict[str, str]] = field(default_factory=list)
    tool: dict[str, str] = field(default_factory=dict)
    created: str = ""
    schema_version: int = SCHEMA_VERSION

    @property
    def columns(self) -> dict[str, str]:
        return mds_columns(self.kind, self.sample_shape)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str, where: str = "metadata") -> DatasetMetadata:
        """Parse metadata; `where` names the file in error messages."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e})") from None
        version = raw.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"{where}: schema_version {version!r}, this reader understands {SCHEMA_VERSION}; "
                             "re-encode the dataset with this version of data_prep/encode.py")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.name not in raw and f.default is dataclasses.MISSING
                         and f.default_factory is dataclasses.MISSING)
        if unknown or missing:
            raise ValueError(f"{where}: unexpected keys {unknown}, missing keys {missing}")
        raw["sample_shape"] = tuple(raw["sample_shape"])
        return cls(**raw)


def tool_info(program: str) -> dict[str, str]:
    """The program and library versions that wrote a dataset, for its metadata."""
    from dig_scale import __version__

    info = {"program": program, "dig_scale": __version__}
    for package in ("torch", "mosaicml-streaming", "diffusers", "pillow", "numpy"):
        try:
            info[package] = package_metadata.version(package)
        except package_metadata.PackageNotFoundError:
            info[package] = "not installed"
    return info


def utc_timestamp() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
