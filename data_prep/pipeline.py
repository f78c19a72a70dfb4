"""One rank's encode loop: decoded batches from DataLoader workers -> encoder -> part writer.

Three things run at once: workers decode the next batches, the GPU encodes the current one, and
the writer thread stores the previous one. The main thread only moves batches between them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from torch.utils.data import DataLoader
from tqdm import tqdm

from .decode_batches import DecodedBatch, PartBatches
from .output_store import OutputStore
from .part_writer import PartWriter, WriteJob
from .sources import Part


@dataclass
class LoopReport:
    inputs: int         # inputs consumed (encoded + rejected)
    encoded: int
    rejected: int
    parts: int
    seconds: float      # wall time of the loop, workers' start-up and final writes included

    @property
    def images_per_second(self) -> float:
        return self.encoded / max(self.seconds, 1e-9)


def encode_parts(source, parts: list[Part], encoder, store: OutputStore, columns: dict[str, str], *,
                 resolution: int, batch_size: int, num_workers: int, pin_memory: bool,
                 progress: bool, expected_inputs: int | None, description: str = "encode") -> LoopReport:
    """Encode and write `parts`; each finished part gets its manifest. Returns counts and timing."""
    by_index = {part.index: part for part in parts}
    finished: list[int] = []  # inputs consumed by each finished part (appended on the writer thread)
    writer = PartWriter(store, columns, on_finished=lambda part, manifest: finished.append(
        manifest["num_samples"] + len(manifest["rejects"])))
    loader = DataLoader(PartBatches(source, parts, resolution, batch_size), batch_size=None, num_workers=num_workers,
                        pin_memory=pin_memory, prefetch_factor=4 if num_workers else None)
    bar = tqdm(total=expected_inputs, unit="img", desc=description, disable=not progress, dynamic_ncols=True,
               smoothing=0.05)
    report = LoopReport(0, 0, 0, len(parts), 0.0)
    start = time.perf_counter()

    def hand_over(decoded: DecodedBatch, handle) -> None:
        writer.submit(WriteJob(by_index[decoded.part], handle.result(), decoded.labels, decoded.keys,
                               decoded.rejects, decoded.last))

    try:
        previous = None
        for decoded in loader:
            handle = encoder.launch(decoded.images)  # queued on the GPU; runs while we hand over the previous one
            if previous is not None:
                hand_over(*previous)
            previous = (decoded, handle)
            report.inputs += decoded.seen
            report.encoded += len(decoded.labels)
            report.rejected += len(decoded.rejects)
            bar.update(decoded.seen)
            if expected_inputs is None and finished:  # tar shards: estimate the total from finished parts
                bar.total = max(round(sum(finished) / len(finished) * len(parts)), report.inputs)
            bar.set_postfix_str(f"parts {len(finished)}/{len(parts)}, rejected {report.rejected}", refresh=False)
        if previous is not None:
            hand_over(*previous)
    finally:
        writer.close()
        bar.set_postfix_str(f"parts {len(finished)}/{len(parts)}, rejected {report.rejected}")
        bar.close()
    report.seconds = time.perf_counter() - start
    return report
