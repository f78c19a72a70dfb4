"""The GLA custom op: one signature that every backend implements, one graph node for torch.compile.

    (out, states, o_pre) = gla(q, k, v, g, output_gate, norm_weight, scale, gate_logit_normalizer,
                               norm_eps, order, height, width, backend, save)

q, k, g: [B, T, H, K]; v, output_gate: [B, T, H, V]; raster order over a height x width grid,
scanned in `order`. gate_logit_normalizer > 0: g holds gate logits x and the log-gates are
logsigmoid(x) / normalizer; 0: g holds the log-gates. With output_gate and norm_weight ([V]),
out = RMSNorm(o, norm_eps) * norm_weight * silu(output_gate) per head; without, out = o.
`states` ([B*H, N, K, V], float32 or float64 for float64 inputs) are the states entering the
backend's N = ceil(T / chunk_length(T)) chunks, and `o_pre` (only with `save` and the norm) is o
before the norm: the backward takes both back instead of recomputing them.

A backend provides
    forward(q, k, v, g, output_gate, norm_weight, scale, normalizer, eps, order, height, width, save)
        -> (out, states, o_pre)
    backward(q, k, v, g, output_gate, norm_weight, states, o_pre, d_out, scale, normalizer, eps,
             order, height, width) -> (dq, dk, dv, dg, d_output_gate, d_norm_weight)
with None for the gradients of absent inputs.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .scan_order import ScanOrder

Tensor = torch.Tensor


@dataclass(frozen=True)
class GLABackend:
    forward: Callable
    backward: Callable
    chunk_length: Callable[[int], int]  # T -> scan steps per chunk
    devices: tuple[str, ...]  # device types it runs on


_BACKENDS: dict[str, GLABackend] = {}


def register_backend(name: str, backend: GLABackend) -> None:
    _BACKENDS[name] = backend


def available_backends() -> list[str]:
    return sorted(_BACKENDS)


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """`None`/"auto": the fastest backend registered for the device type (Triton only on CUDA,
    even where the Triton interpreter could run it on CPU); else check the name."""
    if backend in (None, "auto"):
        for name in ("triton", "torch") if device.type == "cuda" else ("torch",):
            if name in _BACKENDS and device.type in _BACKENDS[name].devices:
                return name
    if backend not in _BACKENDS:
        raise ValueError(f"unknown GLA backend {backend!r}; available: {available_backends()}")
    if device.type not in _BACKENDS[backend].devices:
        raise ValueError(f"GLA backend {backend!r} does not run on {device.type} tensors")
    return backend


def get_backend(name: str) -> GLABackend:
    return _BACKENDS[name]


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _no_autocast(x: Tensor) -> torch.autocast:
    """Backends choose their own precision: an autocast region around the caller must not recast
    the torch backend's products (its states would come out bf16, not the float32 promised)."""
    return torch.autocast(x.device.type, enabled=False)


@torch.library.custom_op("dig_kernels::gla", mutates_args=())
def gla_op(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, output_gate: Tensor | None, norm_weight: Tensor | None,
    scale: float, gate_logit_normalizer: float, norm_eps: float, order: int, height: int, width: int,
    backend: str, save: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    with _no_autocast(q):
        outputs = _BACKENDS[backend].forward(q, k, v, g, output_gate, norm_weight, scale, gate_logit_normalizer,
                                             norm_eps, ScanOrder(order), height, width, save)
    return tuple(x.contiguous() for x in outputs)  # the layout the fake implementation promises


@gla_op.register_fake
def _(q, k, v, g, output_gate, norm_weight, scale, gate_logit_normalizer, norm_eps, order, height, width, backend,
      save):
    B, T, H, K = q.shape
    n_chunks = -(-T // _BACKENDS[backend].chunk_length(T))
    states = q.new_empty((B * H, n_chunks, K, v.shape[-1]), dtype=state_dtype(q.dtype))
    o_pre = v.new_empty(v.shape if save and output_gate is not None else (0,))
    return v.new_empty(v.shape), states, o_pre


@torch.library.custom_op("dig_kernels::gla_backward", mutates_args=())
def gla_backward_op(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, output_gate: Tensor | None, norm_weight: Tensor | None,
    states: Tensor, o_pre: Tensor, d_out: Tensor, scale: float, gate_logit_normalizer: float, norm_eps: float,
    order: int, height: int, width: int, backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dq, dk, dv, dg, d_output_gate, d_norm_weight); the last two are empty without the norm."""
    if output_gate is not None and o_pre.numel() == 0:
        raise RuntimeError("the GLA forward ran with save=False, so the norm's input o_pre was not kept; "
                           "call dig_kernels::gla with save=True to differentiate it")
    with _no_autocast(q):
        grads = _BACKENDS[backend].backward(q, k, v, g, output_gate, norm_weight, states, o_pre, d_out, scale,
                                            gate_logit_normalizer, norm_eps, ScanOrder(order), height, width)
    return tuple(q.new_empty(0) if x is None else x.contiguous() for x in grads)


@gla_backward_op.register_fake
def _(q, k, v, g, output_gate, norm_weight, states, o_pre, d_out, scale, gate_logit_normalizer, norm_eps, order,
      height, width, backend):
    norm = output_gate is not None
    return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), g.new_empty(g.shape),
            output_gate.new_empty(output_gate.shape) if norm else q.new_empty(0),
            norm_weight.new_empty(norm_weight.shape) if norm else q.new_empty(0))


def _setup_context(ctx, inputs, output):
    q, k, v, g, output_gate, norm_weight, *ctx.arguments, _save = inputs
    _, states, o_pre = output
    ctx.save_for_backward(q, k, v, g, output_gate, norm_weight, states, o_pre)
    # states and o_pre are handed to the backward, not differentiated; without this, eager
    # autograd would pass the backward a zero-filled "gradient" for each (128 B per head-token at
    # DiG's shapes, each), allocated and written for nothing.
    ctx.mark_non_differentiable(states, o_pre)
    ctx.set_materialize_grads(False)


def _backward(ctx, d_out, _d_states, _d_o_pre):
    q, k, v, g, output_gate, norm_weight, states, o_pre = ctx.saved_tensors
    dq, dk, dv, dg, dz, dw = gla_backward_op(q, k, v, g, output_gate, norm_weight, states, o_pre,
                                             d_out.contiguous(), *ctx.arguments)
    norm = output_gate is not None
    return (dq, dk, dv, dg, dz if norm else None, dw if norm else None, *[None] * 8)


gla_op.register_autograd(_backward, setup_context=_setup_context)
