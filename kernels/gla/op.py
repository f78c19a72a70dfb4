"""The GLA custom op: one graph node for torch.compile, dispatching to a registered backend.

Backends implement a scan-order-aware forward and backward over [B, T, H, D] tensors:
    forward(q, k, v, g, scale, order, height, width) -> o
    backward(q, k, v, g, do, scale, order, height, width) -> (dq, dk, dv, dg)
`torch` (always present) is registered below; GPU backends register themselves on import.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import torch_chunked
from .scan_order import ScanOrder, from_scan_order, to_scan_order


@dataclass(frozen=True)
class GLABackend:
    forward: Callable
    backward: Callable
    devices: tuple[str, ...]  # device types it runs on
    # Optional differentiable entry point that takes over `scan_gla` for this backend and also
    # fuses the gate activation and output norm (see `scan_gla`):
    #   scan(q, k, v, g, order, grid, scale, gate_logit_normalizer, output_gate, norm_weight, norm_eps) -> out
    scan: Callable | None = None


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


def backend_fuses(backend: str | None, device: torch.device) -> bool:
    """Whether `scan_gla` on this backend fuses the gate activation and output norm."""
    return get_backend(resolve_backend(backend, device)).scan is not None


def _torch_forward(q, k, v, g, scale, order, height, width):
    into = lambda x: to_scan_order(x, order, height, width)  # noqa: E731
    o = torch_chunked.gla_forward(into(q), into(k), into(v), into(g), scale)
    return from_scan_order(o, order, height, width)


def _torch_backward(q, k, v, g, do, scale, order, height, width):
    into = lambda x: to_scan_order(x, order, height, width)  # noqa: E731
    grads = torch_chunked.gla_backward(into(q), into(k), into(v), into(g), into(do), scale)
    return tuple(from_scan_order(x, order, height, width) for x in grads)


register_backend("torch", GLABackend(_torch_forward, _torch_backward, devices=("cpu", "cuda")))


@torch.library.custom_op("dig_kernels::gla_forward", mutates_args=())
def gla_forward_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
    scale: float, order: int, height: int, width: int, backend: str,
) -> torch.Tensor:
    impl = _BACKENDS[backend].forward
    return impl(q, k, v, g, scale, ScanOrder(order), height, width).contiguous()


@gla_forward_op.register_fake
def _(q, k, v, g, scale, order, height, width, backend):
    return v.new_empty(v.shape)


@torch.library.custom_op("dig_kernels::gla_backward", mutates_args=())
def gla_backward_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, do: torch.Tensor,
    scale: float, order: int, height: int, width: int, backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    impl = _BACKENDS[backend].backward
    grads = impl(q, k, v, g, do, scale, ScanOrder(order), height, width)
    return tuple(x.contiguous() for x in grads)


@gla_backward_op.register_fake
def _(q, k, v, g, do, scale, order, height, width, backend):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), g.new_empty(g.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, g, ctx.scale, ctx.order, ctx.height, ctx.width, ctx.backend = inputs
    ctx.save_for_backward(q, k, v, g)


def _backward(ctx, do):
    q, k, v, g = ctx.saved_tensors
    grads = gla_backward_op(q, k, v, g, do, ctx.scale, ctx.order, ctx.height, ctx.width, ctx.backend)
    return (*grads, None, None, None, None, None)


gla_forward_op.register_autograd(_backward, setup_context=_setup_context)
