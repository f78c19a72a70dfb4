"""Noise schedules and timestep respacing (all in float64)."""
from __future__ import annotations

import numpy as np


def linear_betas(num_timesteps: int = 1000) -> np.ndarray:
    """DDPM's linear schedule 1e-4 -> 0.02 over 1000 steps, stretched to keep the same
    total noise for other step counts."""
    scale = 1000 / num_timesteps
    return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)


def space_timesteps(num_timesteps: int, spec: str | int) -> list[int]:
    """Timesteps of the original process kept when sampling with fewer steps.

    spec: N or "N" -> N steps evenly spread over [0, num_timesteps-1], both ends included
    (rounded); "ddimN" -> the DDIM paper's striding range(0, num_timesteps, stride) with exactly
    N steps; "a,b,c" -> the process cut into equal sections with a, b, c steps each.
    """
    spec = str(spec).strip()
    if spec.startswith("ddim"):
        count = int(spec[4:])
        for stride in range(1, num_timesteps + 1):
            if len(range(0, num_timesteps, stride)) == count:
                return list(range(0, num_timesteps, stride))
        raise ValueError(f"timestep respacing {spec!r}: no integer stride gives {count} of {num_timesteps} steps")
    counts = [int(c) for c in spec.split(",")]
    base, extra = divmod(num_timesteps, len(counts))
    kept: list[int] = []
    start = 0
    for index, count in enumerate(counts):
        size = base + (index < extra)
        if not 1 <= count <= size:
            raise ValueError(f"timestep respacing {spec!r}: cannot take {count} steps from a section of {size}")
        kept += [start + round(i * (size - 1) / max(count - 1, 1)) for i in range(count)]
        start += size
    return sorted(set(kept))
