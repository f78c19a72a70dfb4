"""Gated linear attention (GLA) over a token sequence or a scanned 2-D token grid.

Layout [B, T, H, D]; gates `g` are log-space decays (<= 0) shaped like `k`, or raw gate logits
with `gate_logit_normalizer`; the scale defaults to dk**-0.5. Recurrence:
S_t = diag(exp g_t) S_{t-1} + k_t^T v_t, o_t = scale q_t S_t. One custom op (op.py) with
backends `triton` (CUDA) and `torch` (anywhere); naive.py is the float64 step-by-step reference.
How the Triton kernels are built and why: README.md next to this file.
"""
from __future__ import annotations

import torch

from . import torch_backend  # noqa: F401  (registers the "torch" backend)
from .op import GLABackend, available_backends, get_backend, gla_op, register_backend, resolve_backend
from .scan_order import ScanOrder, from_scan_order, scan_positions, to_scan_order

try:
    import triton  # noqa: F401
except ImportError:  # no Triton (e.g. macOS): the torch backend only
    pass
else:
    from . import triton_backend  # noqa: F401  (registers the "triton" backend)

__all__ = [
    "GLABackend", "ScanOrder", "available_backends", "chunk_gla", "chunk_length", "from_scan_order",
    "register_backend", "resolve_backend", "scan_gla", "scan_positions", "to_scan_order",
]


def scan_gla(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
    order: ScanOrder, grid: tuple[int, int], scale: float | None = None, backend: str | None = None, *,
    gate_logit_normalizer: float | None = None, output_gate: torch.Tensor | None = None,
    norm_weight: torch.Tensor | None = None, norm_eps: float = 1e-6,
) -> torch.Tensor:
    """Causal GLA along `order` over a raster-ordered (height, width) token grid, differentiable.

    q, k, g: [B, T, H, K]; v: [B, T, H, V]; T = height * width. Returns [B, T, H, V] in raster
    order, dtype of v.
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
        raise ValueError("output_gate and norm_weight go together (the gated RMSNorm needs both)")
    if output_gate is not None and (output_gate.shape != v.shape or norm_weight.shape != v.shape[-1:]):
        raise ValueError(f"output_gate must be shaped like v {tuple(v.shape)} and norm_weight [{v.shape[-1]}], "
                         f"got {tuple(output_gate.shape)} and {tuple(norm_weight.shape)}")
    if gate_logit_normalizer is not None and not gate_logit_normalizer > 0:
        raise ValueError(f"gate_logit_normalizer must be positive, got {gate_logit_normalizer}")
    scale = K**-0.5 if scale is None else float(scale)
    name = resolve_backend(backend, q.device)
    save = torch.is_grad_enabled() and any(
        x is not None and x.requires_grad for x in (q, k, v, g, output_gate, norm_weight))
    out, _, _ = gla_op(q, k, v, g, output_gate, norm_weight, scale, gate_logit_normalizer or 0.0, norm_eps,
                       int(order), height, width, name, save)
    return out


def chunk_gla(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
    scale: float | None = None, backend: str | None = None,
) -> torch.Tensor:
    """Plain causal GLA over dim 1 (shapes as `scan_gla`)."""
    return scan_gla(q, k, v, g, ScanOrder.ROW_FORWARD, (1, q.shape[1]), scale, backend)


def chunk_length(backend: str, T: int) -> int:
    """The chunk length `backend` (a resolved name) runs a sequence of T tokens with: the side of
    its intra-chunk score blocks, for FLOP counts."""
    if backend not in available_backends():
        raise ValueError(f"unknown GLA backend {backend!r}; available: {available_backends()}")
    return get_backend(backend).chunk_length(T)
