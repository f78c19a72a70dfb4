"""The `torch` GLA backend: the op's full signature in PyTorch (CPU, tests, float64 references).

The scan order is a gather into scan order and back; the gate activation and the gated RMSNorm
are PyTorch expressions with their gradients written out (an op's implementation runs below
autograd); the GLA itself is torch_chunked's closed-form forward and backward. Arithmetic in
float32 (float64 for float64 inputs).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import torch_chunked
from .op import GLABackend, register_backend
from .scan_order import ScanOrder, from_scan_order, to_scan_order


def _log_gates(g: torch.Tensor, normalizer: float, dtype: torch.dtype) -> torch.Tensor:
    g = g.to(dtype)
    return F.logsigmoid(g) / normalizer if normalizer > 0 else g


def _gated_rms_norm(o, output_gate, norm_weight, eps):
    return o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + eps) * norm_weight * F.silu(output_gate.to(o.dtype))


def _gated_rms_norm_grad(d_out, o, z, w, eps):
    """Gradients of `_gated_rms_norm` for o, z and w."""
    y = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + eps)
    sig = torch.sigmoid(z)
    swish = z * sig
    dy = d_out * w * swish
    do = torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + eps) * (dy - y * (dy * y).mean(-1, keepdim=True))
    dz = d_out * y * w * sig * (1 + z * (1 - sig))
    return do, dz, (d_out * y * swish).flatten(0, -2).sum(0)


def _forward(q, k, v, g, output_gate, norm_weight, scale, normalizer, eps, order: ScanOrder, height, width, save):
    dtype = torch_chunked.compute_dtype(q)
    into = lambda x: to_scan_order(x, order, height, width)  # noqa: E731
    o, states = torch_chunked.gla_forward(into(q), into(k), into(v), into(_log_gates(g, normalizer, dtype)), scale)
    o = from_scan_order(o, order, height, width)
    if output_gate is None:
        return o.to(v.dtype), states, v.new_empty(0)
    out = _gated_rms_norm(o, output_gate, norm_weight, eps).to(v.dtype)
    return out, states, o.to(v.dtype) if save else v.new_empty(0)


def _backward(q, k, v, g, output_gate, norm_weight, states, o_pre, d_out, scale, normalizer, eps,
              order: ScanOrder, height, width):
    dtype = torch_chunked.compute_dtype(q)
    d_o, dz, dw = d_out.to(dtype), None, None
    if output_gate is not None:
        d_o, dz, dw = _gated_rms_norm_grad(d_o, o_pre.to(dtype), output_gate.to(dtype), norm_weight.to(dtype), eps)
        dz, dw = dz.to(output_gate.dtype), dw.to(norm_weight.dtype)
    into = lambda x: to_scan_order(x, order, height, width)  # noqa: E731
    gates = _log_gates(g, normalizer, dtype)
    grads = torch_chunked.gla_backward(*(into(t) for t in (q, k, v, gates, d_o)), scale, states)
    dq, dk, dv, dg = (from_scan_order(t, order, height, width) for t in grads)
    if normalizer > 0:  # d logsigmoid(x) / dx = sigmoid(-x)
        dg = dg * torch.sigmoid(-g.to(dtype)) / normalizer
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dg.to(g.dtype), dz, dw


register_backend("torch", GLABackend(_forward, _backward, torch_chunked.chunk_length, devices=("cpu", "cuda")))
