"""Per-sample randomness that depends only on (seed, sample index, epoch).

Training draws a latent from the stored posterior and picks a flip for every sample. Drawing
them from a counter-based generator keyed by the sample's identity, instead of from a stream
shared by a worker, makes them independent of who reads the sample and when: a run resumed
mid-epoch, or restarted with another number of ranks or workers, sees the same noise for the
same sample in the same epoch.
"""
from __future__ import annotations

import numpy as np

_U64 = 1 << 64


def sample_generator(seed: int, index: int, epoch: int) -> np.random.Generator:
    """A Philox generator for one sample in one epoch.

    Philox is counter-based: the 128-bit key is (seed, epoch) and every sample index owns its
    own block of 2**128 counter values (the index sits above the 128 bits that drawing
    increments), so streams of different samples never overlap.
    """
    seed, index, epoch = int(seed), int(index), int(epoch)  # numpy integers would overflow the shifts below
    if not (0 <= seed < _U64 and 0 <= epoch < _U64 and 0 <= index < _U64):
        raise ValueError(f"seed, index and epoch must be in [0, 2**64), got {seed}, {index}, {epoch}")
    return np.random.Generator(np.random.Philox(key=seed | (epoch << 64), counter=index << 128))
