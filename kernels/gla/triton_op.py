"""The `triton` GLA backend: one custom op pair around the Triton kernels, registered with the
backend registry. Beyond the plain forward/backward contract it fuses the gate activation and
the gated-RMSNorm epilogue, and hands the per-chunk states from forward to backward so the
backward never recomputes them. torch.compile sees each call as one node; nothing syncs with
the host and every shape follows from the input shapes, so it also captures in CUDA graphs.
"""
import os

import torch
import triton

from . import triton_backward, triton_forward
from .op import GLABackend, register_backend
from .scan_order import ScanOrder
from .triton_common import CHUNK

Tensor = torch.Tensor


def _contiguous(*xs):
    return tuple(None if x is None else x.contiguous() for x in xs)


@torch.library.custom_op("dig_kernels::gla_triton_forward", mutates_args=())
def gla_triton_forward(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, output_gate: Tensor | None, norm_weight: Tensor | None,
    scale: float, gate_norm: float, norm_eps: float, order: int, height: int, width: int, save: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """(out, states, o_pre): see triton_forward.forward; gate_norm 0 means g is already log-space."""
    q, k, v, g, output_gate, norm_weight = _contiguous(q, k, v, g, output_gate, norm_weight)
    return triton_forward.forward(q, k, v, g, scale, ScanOrder(order), height, width, gate_norm=gate_norm,
                                  output_gate=output_gate, norm_weight=norm_weight, norm_eps=norm_eps, save=save)


@gla_triton_forward.register_fake
def _(q, k, v, g, output_gate, norm_weight, scale, gate_norm, norm_eps, order, height, width, save):
    B, T, H, K = q.shape
    states = q.new_empty((B * H, triton.cdiv(T, CHUNK), K, v.shape[-1]) if save else (0,), dtype=torch.float32)
    o_pre = v.new_empty(v.shape if save and output_gate is not None else (0,))
    return v.new_empty(v.shape), states, o_pre


@torch.library.custom_op("dig_kernels::gla_triton_backward", mutates_args=())
def gla_triton_backward(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, output_gate: Tensor | None, norm_weight: Tensor | None,
    states: Tensor, o_pre: Tensor, d_out: Tensor,
    scale: float, gate_norm: float, norm_eps: float, order: int, height: int, width: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dq, dk, dv, dg, d_output_gate, d_norm_weight); the last two are empty without the norm."""
    q, k, v, g, output_gate, norm_weight, d_out = _contiguous(q, k, v, g, output_gate, norm_weight, d_out)
    return triton_backward.backward(q, k, v, g, d_out, scale, ScanOrder(order), height, width, states=states,
                                    o_pre=o_pre, gate_norm=gate_norm, output_gate=output_gate,
                                    norm_weight=norm_weight, norm_eps=norm_eps)


@gla_triton_backward.register_fake
def _(q, k, v, g, output_gate, norm_weight, states, o_pre, d_out, scale, gate_norm, norm_eps, order, height, width):
    norm = output_gate is not None
    dz = output_gate.new_empty(output_gate.shape) if norm else d_out.new_empty(0)
    dw = q.new_empty((v.shape[-1],) if norm else (0,), dtype=torch.float32)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), g.new_empty(g.shape), dz, dw


def _setup_context(ctx, inputs, output):
    q, k, v, g, output_gate, norm_weight, *ctx.arguments, _save = inputs
    _, states, o_pre = output
    ctx.save_for_backward(q, k, v, g, output_gate, norm_weight, states, o_pre)


def _backward(ctx, d_out, _d_states, _d_o_pre):
    q, k, v, g, output_gate, norm_weight, states, o_pre = ctx.saved_tensors
    dq, dk, dv, dg, dz, dw = gla_triton_backward(q, k, v, g, output_gate, norm_weight, states, o_pre, d_out,
                                                 *ctx.arguments)
    norm = output_gate is not None
    return (dq, dk, dv, dg, dz if norm else None, dw.to(norm_weight.dtype) if norm else None,
            None, None, None, None, None, None, None)


gla_triton_forward.register_autograd(_backward, setup_context=_setup_context)


def _check_head_dims(q: Tensor, v: Tensor) -> None:
    for name, d in (("key", q.shape[-1]), ("value", v.shape[-1])):
        if d < 16 or d & (d - 1):
            raise ValueError(f"the triton GLA backend needs head dims that are powers of two >= 16; "
                             f"{name} head dim is {d} (use backend='torch')")


def scan(q: Tensor, k: Tensor, v: Tensor, g: Tensor, order: ScanOrder, grid: tuple[int, int], scale: float,
         gate_logit_normalizer: float | None, output_gate: Tensor | None, norm_weight: Tensor | None,
         norm_eps: float) -> Tensor:
    """`kernels.gla.scan_gla` on this backend (arguments checked there), differentiable."""
    _check_head_dims(q, v)
    grads = torch.is_grad_enabled() and any(
        x is not None and x.requires_grad for x in (q, k, v, g, output_gate, norm_weight))
    out, _, _ = gla_triton_forward(q, k, v, g, output_gate, norm_weight, scale, gate_logit_normalizer or 0.0,
                                   norm_eps, int(order), *grid, grads)
    return out


def _forward(q, k, v, g, scale, order, height, width):
    _check_head_dims(q, v)
    return triton_forward.forward(*_contiguous(q, k, v, g), scale, order, height, width)[0]


def _backward_plain(q, k, v, g, do, scale, order, height, width):
    _check_head_dims(q, v)
    return triton_backward.backward(*_contiguous(q, k, v, g, do), scale, order, height, width)[:4]


# Under TRITON_INTERPRET=1 the kernels run on CPU tensors (how CI tests them).
_DEVICES = ("cuda", "cpu") if os.environ.get("TRITON_INTERPRET") == "1" else ("cuda",)
register_backend("triton", GLABackend(_forward, _backward_plain, devices=_DEVICES, scan=scan))
