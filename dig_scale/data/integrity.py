"""What the reader trusts about a dataset, and how it checks the rest (see ARCHITECTURE.md,
"Trusted and untrusted input").

A dataset directory may come from a shared file system or an object store: its index.json decides
which files the reader opens and writes (streaming decompresses and caches shards under the names
it lists), and its shards may be damaged. So, before anything is read:

- every file name in the index must be a relative path of plain names (data_prep/merge.py
  writes `part-NNNNN/shard.*`), so streaming never reads or writes outside the dataset, and
  every shard must carry the xxh64 hash the writers record;

and every shard is hashed the first time a job reads it (`verify_shard_file`), whether it was just
downloaded or decompressed or was already there. Hashes detect damage (truncation, flipped bytes,
a stale cache), not malice: MDS columns here are arrays, ints and strings, never pickles.

A dataset's identity is the fingerprint of its index and metadata: a checkpoint records it, and a
resume on other data is refused (a re-encoded folder, a re-pointed link).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any

import xxhash

VERIFY_HASH = "xxh64"  # ~10 GB/s: verifying a shard costs far less than reading it
SHARD_FILE_KEYS = ("raw_data", "zip_data", "raw_meta", "zip_meta")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_CHUNK = 8 << 20


class DataError(Exception):
    """Training data that cannot be used: a damaged or unsafe dataset, or a shard that cannot be
    read; the message names the file. Raised in a DataLoader worker, it reaches the trainer as a
    DataError whose message is torch's report of the worker's error."""


def check_index(index: Any, where: str) -> list[dict[str, Any]]:
    """The shards of an MDS index (version 2), refused unless every file name is a relative path
    of plain names (letters, digits, '.', '_', '-', none starting with '.': no '..', no absolute
    path) and every shard has its data's VERIFY_HASH. `where` names the index in messages."""
    if not isinstance(index, dict) or index.get("version") != 2 or not isinstance(index.get("shards"), list):
        raise DataError(f"{where}: not an MDS index (expected {{'version': 2, 'shards': [...]}})")
    for number, shard in enumerate(index["shards"]):
        if not isinstance(shard, dict) or not isinstance(shard.get("raw_data"), dict):
            raise DataError(f"{where}: shard {number} has no raw_data entry")
        for key in SHARD_FILE_KEYS:
            info = shard.get(key)
            if info is None:
                continue
            name = info.get("basename") if isinstance(info, dict) else None
            parts = name.split("/") if isinstance(name, str) else [""]
            if not all(_PLAIN_NAME.fullmatch(part) for part in parts):
                raise DataError(f"{where}: shard {number}'s {key} names {name!r}; expected a path of plain names "
                                "inside the dataset (letters, digits, '.', '_', '-', none starting with '.': no '..', "
                                "no leading '/')")
        if not isinstance(shard["raw_data"].get("hashes", {}).get(VERIFY_HASH), str):
            raise DataError(f"{where}: shard {number} ({shard['raw_data']['basename']}) has no {VERIFY_HASH} hash to "
                            "verify it by; re-encode the dataset with data_prep/encode.py")
    return index["shards"]


def parse_index(text: str, where: str) -> list[dict[str, Any]]:
    """`check_index` of the JSON text of an index.json."""
    try:
        index = json.loads(text)
    except ValueError as e:
        raise DataError(f"{where}: not valid JSON ({e})") from None
    return check_index(index, where)


def file_hash(path: str) -> str:
    digest = xxhash.xxh64()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_shard_file(path: str, size: int, hashes: dict[str, str]) -> None:
    """Raise DataError unless the file at `path` has the size and hash its index entry records."""
    actual_size = os.path.getsize(path)
    if actual_size != size:
        raise DataError(f"{path}: damaged shard ({actual_size} bytes, the index records {size}); restore the "
                        "dataset from its source or re-encode it")
    actual = file_hash(path)
    if actual != hashes[VERIFY_HASH]:
        raise DataError(f"{path}: damaged shard ({VERIFY_HASH} {actual}, the index records {hashes[VERIFY_HASH]}); "
                        "restore the dataset from its source or re-encode it")


def dataset_identity(index_text: str, metadata_text: str) -> dict[str, Any]:
    """What a checkpoint records of its training data: fingerprints of the index and the metadata,
    plus the sample count and creation time to say which dataset it was."""
    metadata = json.loads(metadata_text)
    return {"index_sha256": hashlib.sha256(index_text.encode()).hexdigest(),
            "metadata_sha256": hashlib.sha256(metadata_text.encode()).hexdigest(),
            "num_samples": metadata.get("num_samples"), "created": metadata.get("created")}


def describe_identity(identity: dict[str, Any]) -> str:
    return (f"{identity['num_samples']} samples, created {identity['created']}, index sha256 "
            f"{identity['index_sha256'][:12]}, metadata sha256 {identity['metadata_sha256'][:12]}")
