"""A finished dataset in one call, for datasets small enough to write from one process: the
built-in demo, benchmarks and tests (data_prep/encode.py writes large ones in parallel parts)."""
from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from dig_scale.atomic_file import write_text_atomically

from .schema import MDS_COMPRESSION, MDS_HASHES, METADATA_FILENAME, DatasetMetadata


def write_mds_dataset(path: str, metadata: DatasetMetadata, samples: Iterable[dict[str, Any]],
                      size_limit: int | None = None) -> None:
    """MDS shards of `samples` (the columns of `metadata.kind`) in the directory `path`, then the
    metadata file, written last: its presence marks the dataset finished. `size_limit`: bytes per
    shard before compression (streaming's default when None)."""
    from streaming import MDSWriter

    limit = {} if size_limit is None else {"size_limit": size_limit}
    count = 0
    with MDSWriter(out=str(path), columns=metadata.columns, compression=MDS_COMPRESSION, hashes=MDS_HASHES,
                   **limit) as writer:
        for sample in samples:
            writer.write(sample)
            count += 1
    if count != metadata.num_samples:
        raise ValueError(f"{path}: wrote {count} samples but the metadata says {metadata.num_samples}")
    write_text_atomically(os.path.join(path, METADATA_FILENAME), metadata.to_json())
