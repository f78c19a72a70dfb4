"""Gated linear attention (GLA) over a token sequence or a scanned 2-D token grid.

Layout [B, T, H, D]; gates `g` are log-space decays (<= 0) shaped like `k`; the scale
defaults to dk**-0.5. Recurrence: S_t = diag(exp g_t) S_{t-1} + k_t^T v_t, o_t = scale q_t S_t.
"""
from __future__ import annotations

import torch

from .op import (
    GLABackend,
    available_backends,
    backend_fuses,
    get_backend,
    gla_forward_op,
    register_backend,
    resolve_backend,
)
from .scan_order import ScanOrder, from_scan_order, scan_positions, to_scan_order
from .torch_chunked import _chunk_length as _torch_chunk_length

try:
    import triton  # noqa: F401
except ImportError:  # no Triton (e.g. macOS): the torch backend only
    pass
else:
    from . import triton_op  # noqa: F401  (registers the "triton" backend)

__all__ = [
    "GLABackend", "ScanOrder", "available_backends", "backend_fuses", "chunk_gla", "chunk_length", "from_scan_order",
    "register_backend", "resolve_backend", "scan_gla", "scan_positions", "to_scan_order",
]


def scan_gla(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
    order: ScanOrder, grid: tuple[int, int], scale: float | None = None, backend: str | None = None, *,
    gate_logit_normalizer: float | None = None, output_gate: torch.Tensor | None = None,
    norm_weight: torch.Tensor | None = None, norm_eps: float = 1e-6,
) -> torch.Tensor:
    """Causal GLA along `order` over a raster-ordered (height, width) token grid.

    q, k, g: [B, T, H, K]; v: [B, T, H, V]; T = height * width. Returns o: [B, T, H, V],
    in raster order, dtype of v.

    Fusions, for backends where `backend_fuses` (the Triton backend):
    gate_logit_normalizer: g holds raw gate logits x; the gates are logsigmoid(x) / normalizer.
    output_gate ([B, T, H, V]) and norm_weight ([V]): returns per-head
    RMSNorm(o, eps=norm_eps) * norm_weight * silu(output_gate) instead of o.
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
    if (output_gate is None) != (norm_weight is None):
        raise ValueError("output_gate and norm_weight go together (the fused gated RMSNorm needs both)")
    if output_gate is not None and (output_gate.shape != v.shape or norm_weight.shape != v.shape[-1:]):
        raise ValueError(f"output_gate must be shaped like v {tuple(v.shape)} and norm_weight [{v.shape[-1]}], "
                         f"got {tuple(output_gate.shape)} and {tuple(norm_weight.shape)}")
    if gate_logit_normalizer is not None and not gate_logit_normalizer > 0:
        raise ValueError(f"gate_logit_normalizer must be positive, got {gate_logit_normalizer}")
    scale = K**-0.5 if scale is None else float(scale)
    name = resolve_backend(backend, q.device)
    fused_scan = get_backend(name).scan
    if fused_scan is not None:
        return fused_scan(q, k, v, g, order, grid, scale, gate_logit_normalizer, output_gate, norm_weight, norm_eps)
    if gate_logit_normalizer is not None or output_gate is not None:
        raise ValueError(f"GLA backend {name!r} does not fuse the gate activation or output norm; "
                         "apply them outside scan_gla")
    return gla_forward_op(q, k, v, g, scale, int(order), height, width, name)


def chunk_gla(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
    scale: float | None = None, backend: str | None = None,
) -> torch.Tensor:
    """Plain causal GLA over dim 1 (shapes as `scan_gla`)."""
    return scan_gla(q, k, v, g, ScanOrder.ROW_FORWARD, (1, q.shape[1]), scale, backend)


def chunk_length(backend: str, T: int) -> int:
    """The chunk length `backend` (a resolved name) runs a sequence of T tokens with: the side of
    its intra-chunk score blocks, for FLOP counts."""
    if backend == "torch":
        return _torch_chunk_length(T)
    if backend == "triton":
        from .triton_common import CHUNK

        return CHUNK
    raise ValueError(f"unknown GLA backend {backend!r}; available: {available_backends()}")
