"""The resumable working state of a sampling job that ends in one .npz:

    <out>.parts/plan.json          what is being sampled (export, sampler, seed, count, batch, ...)
                part-000000.npz    images and labels of samples [0, B), written atomically
                part-000001.npz    samples [B, 2B), ...

A part is the unit of work and of resumption: ranks take the missing parts round-robin, so a
part's samples are computed in the same batch whatever the number of ranks; a relaunch with the
same plan keeps every finished part. When all exist they are streamed into the .npz and the
directory is removed.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from dig_scale.atomic_file import write_atomically, write_text_atomically

from .npz import write_sample_npz

PLAN_FILE = "plan.json"
_PART = re.compile(r"^part-(\d{6,})\.npz$")


class PartStore:
    def __init__(self, out: Path, plan: dict[str, Any]):
        self.out = Path(out)
        self.directory = self.out.with_name(self.out.name + ".parts")
        self.plan = plan
        self.num_samples, self.part_size = plan["num_samples"], plan["batch_size"]
        self.num_parts = -(-self.num_samples // self.part_size)

    def prepare(self) -> None:
        """Create the directory with the plan, or check that an existing one has the same plan.
        Called by one process (rank 0) before the others look."""
        plan_file = self.directory / PLAN_FILE
        if plan_file.is_file():
            started = json.loads(plan_file.read_text())
            differences = [f"{k}: {started.get(k)!r} -> {self.plan.get(k)!r}"
                           for k in sorted(set(started) | set(self.plan)) if started.get(k) != self.plan.get(k)]
            if differences:
                raise ValueError(f"{self.directory} holds parts of a job with other settings:\n  "
                                 + "\n  ".join(differences)
                                 + f"\nrerun with the same settings to resume it, or delete {self.directory}")
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        write_text_atomically(plan_file, json.dumps(self.plan, indent=1))

    def indices(self, part: int) -> range:
        return range(part * self.part_size, min((part + 1) * self.part_size, self.num_samples))

    def _path(self, part: int) -> Path:
        return self.directory / f"part-{part:06d}.npz"

    def missing(self) -> list[int]:
        done = {int(m.group(1)) for p in self.directory.iterdir() if (m := _PART.match(p.name))}
        return [k for k in range(self.num_parts) if k not in done]

    def write(self, part: int, images: np.ndarray, labels: np.ndarray | None) -> None:
        labels = labels if labels is not None else np.zeros(0, np.int64)

        def save(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a name
                np.savez(f, images=images, labels=labels)

        write_atomically(self._path(part), save)

    def _images(self, part: int, labels: np.ndarray | None) -> np.ndarray:
        """A finished part's images, checked against the plan's count and labels."""
        with np.load(self._path(part), allow_pickle=False) as data:
            images, stored = data["images"], data["labels"]
        expected = labels[self.indices(part)] if labels is not None else np.zeros(0, np.int64)
        if len(images) != len(self.indices(part)) or not np.array_equal(stored, expected):
            raise ValueError(f"{self._path(part)}: does not hold samples {self.indices(part)} of {PLAN_FILE}; "
                             "delete it to sample it again")
        return images

    def assemble(self, labels: np.ndarray | None) -> Path:
        """Stream every part into the .npz (atomically), then remove the parts directory.
        `labels`: every sample's class (None if unconditional), as the parts hold them."""
        missing = self.missing()
        if missing:
            raise RuntimeError(f"{self.directory}: parts {missing[:10]} are missing; rerun to finish them")
        parts = (self._images(k, labels) for k in range(self.num_parts))
        write_sample_npz(self.out, parts, self.num_samples, labels)
        shutil.rmtree(self.directory)
        return self.out
