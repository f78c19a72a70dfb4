"""Writes encoded batches into one MDS sub-dataset per part, on a background thread.

MDS encoding, zstd compression and hashing of a 64 MB shard take a few hundred ms; done on the
main thread they would leave the GPU idle. zstd and hashlib release the GIL, so a writer thread
runs them alongside the main thread, which only queues GPU work.
"""
from __future__ import annotations

import json
import os
import queue
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from dig_scale.data.channel_stats import ChannelMoments
from dig_scale.data.schema import INDEX_FILENAME, MDS_COMPRESSION, MDS_HASHES

from .output_store import OutputStore
from .plan import write_manifest
from .sources import Part
from .vae_encoder import EncodedBatch

SHARD_SIZE_LIMIT = 1 << 26  # bytes before compression: streaming's default, ~2k latents at 256 px


@dataclass
class _OpenPart:
    writer: object  # streaming.MDSWriter
    labels: Counter = field(default_factory=Counter)
    rejects: list[dict[str, str]] = field(default_factory=list)
    moments: ChannelMoments = field(default_factory=ChannelMoments)


@dataclass
class WriteJob:
    """B encoded samples of a part (B may be 0), the inputs of it that were rejected, and whether
    this is the part's last batch."""

    part: Part
    batch: EncodedBatch
    labels: list[int]
    keys: list[str]
    rejects: list[dict[str, str]]
    last: bool


class PartWriter:
    """Feed it `WriteJob`s in order; each part gets its own MDSWriter and, once its last job is
    written, a manifest (which marks it finished). `on_finished(part, manifest)` runs on the writer thread.

    Up to `max_queued` jobs wait (a few seconds of GPU output), so a slow shard flush or upload
    wait inside MDSWriter does not stall the encoder.
    """

    def __init__(self, store: OutputStore, columns: dict[str, str],
                 on_finished: Callable[[Part, dict], None] | None = None, max_queued: int = 64):
        self.store, self.columns, self.on_finished = store, columns, on_finished
        self._open: dict[int, _OpenPart] = {}
        self._queue: queue.Queue[WriteJob | None] = queue.Queue(maxsize=max_queued)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="part-writer", daemon=True)
        self._thread.start()

    def submit(self, job: WriteJob) -> None:
        self._raise_if_failed()
        self._queue.put(job)

    def close(self) -> None:
        """Wait until everything submitted is written; re-raise the writer thread's error, if any."""
        self._queue.put(None)
        self._thread.join()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"writing the output failed: {self._error}") from self._error

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            if self._error is None:  # after a failure keep draining, so submit() never blocks forever
                try:
                    self._write(job)
                except BaseException as e:  # handed to the main thread by submit() and close()
                    self._error = e

    def _write(self, job: WriteJob) -> None:
        from streaming import MDSWriter

        state = self._open.get(job.part.index)
        if state is None:
            self.store.clear_local(job.part.name)
            writer = MDSWriter(out=self.store.writer_out(job.part.name), columns=self.columns, keep_local=True,
                               compression=MDS_COMPRESSION, hashes=MDS_HASHES, size_limit=SHARD_SIZE_LIMIT)
            state = self._open[job.part.index] = _OpenPart(writer)
        for i, (label, key) in enumerate(zip(job.labels, job.keys)):
            sample = {name: array[i] for name, array in job.batch.arrays.items()}
            state.writer.write({**sample, "label": np.int64(label), "key": key})
        state.labels.update(job.labels)
        state.rejects += job.rejects
        state.moments.merge(job.batch.moments)
        if job.last:
            self._finish(job.part, self._open.pop(job.part.index))

    def _finish(self, part: Part, state: _OpenPart) -> None:
        state.writer.finish()  # returns once every shard (and the part's index) is uploaded
        local = self.store.writer_local(part.name)
        with open(os.path.join(local, INDEX_FILENAME), encoding="utf-8") as f:
            index = json.load(f)
        if self.store.staged:
            self.store.clear_local(part.name)
        manifest = {"part": part.index, "num_samples": sum(state.labels.values()),
                    "label_counts": {str(k): v for k, v in sorted(state.labels.items())},
                    "rejects": state.rejects, "moments": asdict(state.moments), "index": index}
        write_manifest(self.store, part, manifest)
        if self.on_finished is not None:
            self.on_finished(part, manifest)
