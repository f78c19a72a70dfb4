"""Per-channel first and second moments, accumulated in float64 and mergeable across parts/ranks."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ChannelMoments:
    """Running sums of x and x**2 per channel over `count` values per channel."""

    count: int = 0
    total: list[float] = field(default_factory=list)
    total_sq: list[float] = field(default_factory=list)

    def add(self, total: np.ndarray, total_sq: np.ndarray, count: int) -> None:
        """Add per-channel sums (C,) of x and of x**2 over `count` values per channel."""
        if not self.total:
            self.total, self.total_sq = [0.0] * len(total), [0.0] * len(total)
        self.total = (np.asarray(self.total) + np.asarray(total, np.float64)).tolist()
        self.total_sq = (np.asarray(self.total_sq) + np.asarray(total_sq, np.float64)).tolist()
        self.count += int(count)

    def merge(self, other: ChannelMoments) -> None:
        if other.count:
            self.add(np.asarray(other.total), np.asarray(other.total_sq), other.count)

    def mean(self) -> list[float]:
        return (np.asarray(self.total) / max(self.count, 1)).tolist()

    def std(self) -> list[float]:
        mean = np.asarray(self.mean())
        variance = np.asarray(self.total_sq) / max(self.count, 1) - mean**2
        return np.sqrt(np.maximum(variance, 0.0)).tolist()


def pixel_moments(pixels: np.ndarray) -> ChannelMoments:
    """Moments of uint8 images (N, C, H, W) mapped to [-1, 1] as the reader does.

    Counted through a histogram of the 256 levels per channel: exact, and no float copy of the images.
    """
    levels = np.arange(256, dtype=np.float64) / 127.5 - 1.0
    channels = pixels.shape[1]
    histograms = np.stack([np.bincount(pixels[:, c].ravel(), minlength=256) for c in range(channels)])
    moments = ChannelMoments()
    moments.add(histograms @ levels, histograms @ levels**2, pixels.size // channels)
    return moments
