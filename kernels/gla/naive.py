"""Independent float64 reference for GLA (tests and benchmarks): the step-by-step recurrence, and
the whole op by literally walking the token grid in scan order. Slow; small sizes only."""
from __future__ import annotations

import torch
import torch.nn.functional as F


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
    """Raster index of the token visited at each step (orders as scan_order.ScanOrder), built by
    walking the grid: rows or columns, forward or from the last token."""
    cells = [(r, c) for r in range(height) for c in range(width)] if order in (0, 1) else \
            [(r, c) for c in range(width) for r in range(height)]
    if order in (1, 3):
        cells.reverse()
    return torch.tensor([r * width + c for r, c in cells])


def naive_gla(q, k, v, g, order, grid, scale=None, gate_logit_normalizer=None, output_gate=None,
              norm_weight=None, norm_eps=1e-6):
    """`kernels.gla.scan_gla` in float64: the recurrence over the tokens reordered into scan
    order, put back in raster order, then the gate activation and gated RMSNorm as written."""
    g = g.double()
    if gate_logit_normalizer is not None:
        g = F.logsigmoid(g) / gate_logit_normalizer
    index = physical_scan_index(int(order), *grid)
    o_scan = recurrent_gla(*(x[:, index] for x in (q, k, v, g)), scale)
    o = torch.empty_like(o_scan)
    o[:, index] = o_scan
    if output_gate is None:
        return o
    rms = torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + norm_eps)
    return o * rms * norm_weight.double() * F.silu(output_gate.double())
