"""Where a dataset lives: local directories and object-store URIs, through mosaicml-streaming's clients."""
from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.parse
from dataclasses import dataclass
from typing import Any

from .integrity import dataset_identity, parse_index
from .schema import INDEX_FILENAME, METADATA_FILENAME, DatasetMetadata


def is_remote(path: str) -> bool:
    """True for URIs with a scheme (s3://, gs://, oci://, hf://, ...), False for filesystem paths."""
    return urllib.parse.urlparse(str(path)).scheme != ""


def join(base: str, *names: str) -> str:
    """Join path components of a local path or a URI (URIs always use '/')."""
    return "/".join([str(base).rstrip("/"), *names]) if is_remote(base) else os.path.join(base, *names)


def default_cache_dir(path: str) -> str:
    """A local cache directory for a remote dataset, the same for every process on a node.

    mosaicml-streaming coordinates the ranks of a node through their shared `local` directory,
    so a per-process temp dir would break it; hashing the remote path gives all ranks one name.
    """
    digest = hashlib.sha1(str(path).rstrip("/").encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), "dig_scale_cache", digest)


def _is_not_found(error: BaseException) -> bool:
    """Whether a download failed because the object does not exist (vs. auth, network, ...).

    Each object-store client reports a missing object differently.
    """
    if isinstance(error, FileNotFoundError):
        return True
    response = getattr(error, "response", None)  # botocore ClientError (S3 and S3-compatible)
    if isinstance(response, dict) and response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
        return True
    return type(error).__name__ in ("NotFound", "ResourceNotFoundError", "EntryNotFoundError")


def read_text(path: str) -> str | None:
    """Contents of a local file or remote object as text; None if it does not exist."""
    if not is_remote(path):
        try:
            with open(path, encoding="utf-8") as f:
                return f.read()
        except FileNotFoundError:
            return None
    from streaming.base.storage import CloudDownloader

    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "object")
        try:
            CloudDownloader.direct_download(path, local)
        except Exception as e:
            if _is_not_found(e):
                return None
            raise
        with open(local, encoding="utf-8") as f:
            return f.read()


def _metadata_text(path: str) -> str:
    text = read_text(join(str(path), METADATA_FILENAME))
    if text is None:
        raise FileNotFoundError(f"{path}: no {METADATA_FILENAME}; expected a finished dataset written by "
                                "data_prep/encode.py (an unfinished run resumes when you rerun the same command)")
    return text


def read_metadata(path: str) -> DatasetMetadata:
    """The metadata of a finished dataset (local directory or URI) without opening its shards.

    Raises FileNotFoundError naming the path when the dataset is missing or unfinished
    (data_prep/encode.py writes the metadata file last).
    """
    return DatasetMetadata.from_json(_metadata_text(path), where=join(str(path), METADATA_FILENAME))


@dataclass(frozen=True)
class DatasetFiles:
    """A finished dataset's metadata and index as read, before any shard is."""

    path: str
    metadata: DatasetMetadata
    metadata_text: str
    index_text: str

    @property
    def identity(self) -> dict[str, Any]:
        """Fingerprints that tell this dataset from any other (see integrity.dataset_identity)."""
        return dataset_identity(self.index_text, self.metadata_text)


def read_dataset(path: str) -> DatasetFiles:
    """Metadata and index of a finished dataset, the index checked (integrity.check_index).

    Raises FileNotFoundError naming what is missing, DataError for an index that cannot be used.
    """
    metadata_text = _metadata_text(path)
    metadata = DatasetMetadata.from_json(metadata_text, where=join(str(path), METADATA_FILENAME))
    location = join(str(path), INDEX_FILENAME)
    index_text = read_text(location)
    if index_text is None:
        raise FileNotFoundError(f"{path}: has {METADATA_FILENAME} but no {INDEX_FILENAME}; not an MDS dataset "
                                "written by data_prep/encode.py")
    parse_index(index_text, location)
    return DatasetFiles(str(path), metadata, metadata_text, index_text)
