"""Where images come from, cut into parts: the units of work that ranks and DataLoader workers
encode independently and that a rerun skips once finished.

Both sources are deterministic: the same input gives the same parts in the same order, and each
part carries a fingerprint of exactly which inputs it covers.
"""
from __future__ import annotations

import hashlib
import os
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass

import braceexpand

from .errors import EncodeError

DEFAULT_IMAGE_KEYS = "jpg;jpeg;png;webp;bmp;ppm;pgm;tif;tiff"


@dataclass(frozen=True)
class Part:
    """One unit of work: `items` are (relative path, label) pairs of an ImageFolder or tar URLs."""

    index: int
    items: tuple
    max_samples: int | None = None  # tar parts under --limit stop early

    @property
    def name(self) -> str:
        return f"part-{self.index:06d}"

    def fingerprint(self) -> str:
        digest = hashlib.sha1(repr((self.items, self.max_samples)).encode())
        return digest.hexdigest()


@dataclass(frozen=True)
class RawSample:
    """An undecoded input: `key` is stored with the sample, `where` names it in the rejects list."""

    key: str
    where: str
    label: int | None
    data: bytes | None
    problem: str | None = None  # why it cannot be used, found before decoding


class ImageFolderSource:
    """`root/<class>/**/<image>`, classes = sorted sub-folder names (as torchvision's ImageFolder).

    Every non-hidden file is a candidate; non-images are found by decoding and land in the rejects.
    """

    kind = "imagefolder"

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        if not os.path.isdir(self.root):
            raise EncodeError(f"--input {root}: no such directory")
        self.class_names = sorted(e.name for e in os.scandir(self.root) if e.is_dir() and not e.name.startswith("."))
        if not self.class_names:
            raise EncodeError(f"--input {root}: no class sub-folders; expected an ImageFolder laid out as "
                              f"{root}/<class>/<image>")
        self.files = [(rel, label) for label, name in enumerate(self.class_names) for rel in self._list(name)]
        if not self.files:
            raise EncodeError(f"--input {root}: no images in its {len(self.class_names)} class folders; "
                              f"expected files at {root}/<class>/<image>")

    def _list(self, class_name: str) -> list[str]:
        found = []
        for folder, dirs, names in os.walk(os.path.join(self.root, class_name), followlinks=True):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            rel = os.path.relpath(folder, self.root)
            found += [os.path.join(rel, n) for n in names if not n.startswith(".")]
        return sorted(found)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def describe(self) -> dict:
        return {"type": self.kind, "input": self.root, "files": len(self.files), "class_names": self.class_names}

    def plan_parts(self, part_size: int, limit: int | None) -> list[Part]:
        files = self.files
        if limit is not None and limit < len(files):
            # Evenly spaced, so a quick look sees every class rather than the first one.
            files = [files[i * len(files) // limit] for i in range(limit)]
        return [Part(i, tuple(files[start:start + part_size]))
                for i, start in enumerate(range(0, len(files), part_size))]

    def expected_count(self, part: Part) -> int | None:
        return len(part.items)

    def iter_part(self, part: Part) -> Iterator[RawSample]:
        for rel, label in part.items:
            path = os.path.join(self.root, rel)
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as e:
                yield RawSample(rel, path, label, None, f"cannot read: {e.strerror or e}")
                continue
            yield RawSample(rel, path, label, data)


class WebDatasetSource:
    """WebDataset tar shards: local paths, brace patterns (`shards/in1k-{000000..001023}.tar`),
    several patterns joined by `::`, or any URL webdataset opens (http(s)://, pipe:...).

    One shard = one part. A sample's image is its first entry among `image_keys`, its label the
    integer text of `label_key`.
    """

    kind = "webdataset"

    def __init__(self, pattern: str, image_keys: str = DEFAULT_IMAGE_KEYS, label_key: str = "cls",
                 num_classes: int | None = None):
        self.pattern = pattern
        self.urls = [url for piece in pattern.split("::") for url in braceexpand.braceexpand(piece)]
        missing = [u for u in self.urls if _is_local(u) and not os.path.isfile(u)]
        if missing:
            raise EncodeError(f"--input {pattern}: {len(missing)} of {len(self.urls)} tar shards do not exist "
                              f"(first: {missing[0]}); expected an ImageFolder directory or WebDataset tar shards")
        self.image_keys = [k.strip().lower() for k in image_keys.split(";") if k.strip()]
        self.label_key = label_key.lower()
        self.class_names = None
        self.declared_num_classes = num_classes

    def describe(self) -> dict:
        return {"type": self.kind, "input": self.pattern, "shards": len(self.urls), "image_keys": self.image_keys,
                "label_key": self.label_key, "class_names": None}

    def plan_parts(self, part_size: int, limit: int | None) -> list[Part]:
        if limit is not None:  # the first `limit` samples, read in order as one part
            return [Part(0, tuple(self.urls), max_samples=limit)]
        return [Part(i, (url,)) for i, url in enumerate(self.urls)]

    def expected_count(self, part: Part) -> int | None:
        return part.max_samples

    def iter_part(self, part: Part) -> Iterator[RawSample]:
        from webdataset.tariterators import tarfile_samples

        count = 0
        for url in part.items:
            shard = os.path.basename(urllib.parse.urlparse(url).path) or url
            read = 0
            try:
                for sample in tarfile_samples([{"url": url}]):
                    if part.max_samples is not None and count >= part.max_samples:
                        return
                    count += 1
                    read += 1
                    yield self._raw(sample, shard, url)
            except Exception as e:
                # webdataset appends the stream and URL to the exception's args; the first is the message.
                reason = f"{type(e).__name__}: {e.args[0] if e.args else e}"
                if not _is_local(url):  # maybe a network hiccup: stop, a rerun retries this part
                    raise EncodeError(f"{url}: reading the tar shard failed ({reason}); rerun to retry "
                                      "(finished parts are kept)") from None
                # A local file reads the same every time: keep what came before, reject the rest.
                yield RawSample(f"{shard}/*", url, None, None, f"tar shard unreadable after {read} samples ({reason})")

    def _raw(self, sample: dict, shard: str, url: str) -> RawSample:
        key = f"{shard}/{sample['__key__']}"
        where = f"{url}#{sample['__key__']}"
        image_key = next((k for k in self.image_keys if k in sample), None)
        if image_key is None:
            present = sorted(k for k in sample if not k.startswith("__"))
            return RawSample(key, where, None, None, f"no image entry among {self.image_keys} (has {present})")
        try:
            label = int(sample[self.label_key].decode().strip())
        except KeyError:
            return RawSample(key, where, None, None, f"no '{self.label_key}' label entry")
        except (UnicodeDecodeError, ValueError):
            return RawSample(key, where, None, None, f"label entry '{self.label_key}' is not an integer")
        if label < 0 or (self.declared_num_classes is not None and label >= self.declared_num_classes):
            return RawSample(key, where, None, None, f"label {label} outside [0, {self.declared_num_classes})")
        return RawSample(key, where, label, sample[image_key])


def _is_local(url: str) -> bool:
    return urllib.parse.urlparse(url).scheme == ""  # "pipe:cmd", "http://..." etc. are for webdataset to open


def open_source(input_path: str, image_keys: str, label_key: str, num_classes: int | None):
    """ImageFolder for a directory, WebDataset for anything else that looks like tar shards."""
    if os.path.isdir(input_path):
        return ImageFolderSource(input_path)
    if ".tar" in input_path or not _is_local(input_path):
        return WebDatasetSource(input_path, image_keys, label_key, num_classes)
    raise EncodeError(f"--input {input_path}: no such directory and not a tar shard pattern; expected an "
                      "ImageFolder directory (<dir>/<class>/<image>) or WebDataset tar shards "
                      "(a path, a brace pattern like shards/x-{000000..000099}.tar, or a URL)")
