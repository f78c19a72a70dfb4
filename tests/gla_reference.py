"""Independent reference for GLA tests: the step-by-step recurrence in float64, and the
physical reordering of a raster token grid into each scan order."""
from __future__ import annotations

import torch


def recurrent_gla(q, k, v, g, scale=None):
    """S_t = diag(exp g_t) S_{t-1} + k_t^T v_t;  o_t = scale q_t S_t.  [B, T, H, D] in, float64 out."""
    q, k, v, g = (x.double() for x in (q, k, v, g))
    B, T, H, K = q.shape
    scale = K**-0.5 if scale is None else scale
    state = q.new_zeros(B, H, K, v.shape[-1])
    out = []
    for t in range(T):
        state = state * g[:, t].exp()[..., None] + k[:, t, :, :, None] * v[:, t, :, None, :]
        out.append(scale * torch.einsum("bhk,bhkv->bhv", q[:, t], state))
    return torch.stack(out, dim=1)


def physical_scan_index(order: int, height: int, width: int) -> torch.Tensor:
    """Raster index of the token visited at each step, built by literally walking the grid."""
    cells = [(r, c) for r in range(height) for c in range(width)] if order in (0, 1) else \
            [(r, c) for c in range(width) for r in range(height)]
    if order in (1, 3):
        cells.reverse()
    return torch.tensor([r * width + c for r, c in cells])


def random_gla_inputs(B, T, H, K, V, dtype=torch.float64, gate_floor=None, seed=0):
    """Random q, k, v and log-sigmoid gates (never zeros). `gate_floor` spreads gates down to that value."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen, dtype=torch.float64)
    k = torch.randn(B, T, H, K, generator=gen, dtype=torch.float64)
    v = torch.randn(B, T, H, V, generator=gen, dtype=torch.float64)
    g = torch.nn.functional.logsigmoid(torch.randn(B, T, H, K, generator=gen, dtype=torch.float64) * 2)
    if gate_floor is not None:
        g = -torch.rand(B, T, H, K, generator=gen, dtype=torch.float64) * -gate_floor
    return tuple(x.to(dtype) for x in (q, k, v, g))
