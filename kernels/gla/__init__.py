"""Gated linear attention (GLA) over a token sequence or a scanned 2-D token grid.

Layout [B, T, H, D]; gates `g` are log-space decays (<= 0) shaped like `k`; the scale
defaults to dk**-0.5. Recurrence: S_t = diag(exp g_t) S_{t-1} + k_t^T v_t, o_t = scale q_t S_t.
"""
from __future__ import annotations

import torch

from .op import GLABackend, available_backends, gla_forward_op, register_backend, resolve_backend
from .scan_order import ScanOrder, from_scan_order, scan_positions, to_scan_order

__all__ = [
    "GLABackend", "ScanOrder", "available_backends", "chunk_gla", "from_scan_order",
    "register_backend", "resolve_backend", "scan_gla", "scan_positions", "to_scan_order",
]


def scan_gla(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
    order: ScanOrder, grid: tuple[int, int], scale: float | None = None, backend: str | None = None,
) -> torch.Tensor:
    """Causal GLA along `order` over a raster-ordered (height, width) token grid.

    q, k, g: [B, T, H, K]; v: [B, T, H, V]; T = height * width. Returns o: [B, T, H, V],
    in raster order, dtype of v.
    """
    height, width = grid
    B, T, H, K = q.shape
    if k.shape != q.shape or g.shape != q.shape:
        raise ValueError("q, k and g must have the same shape, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(g.shape)}")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be [B, T, H, V] matching q {tuple(q.shape)}, got {tuple(v.shape)}")
    if T != height * width:
        raise ValueError(f"sequence length {T} does not match the grid {height}x{width}")
    scale = K**-0.5 if scale is None else float(scale)
    name = resolve_backend(backend, q.device)
    return gla_forward_op(q, k, v, g, scale, int(order), height, width, name)


def chunk_gla(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
    scale: float | None = None, backend: str | None = None,
) -> torch.Tensor:
    """Plain causal GLA over dim 1 (shapes as `scan_gla`)."""
    return scan_gla(q, k, v, g, ScanOrder.ROW_FORWARD, (1, q.shape[1]), scale, backend)
