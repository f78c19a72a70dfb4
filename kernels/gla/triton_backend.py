"""The `triton` GLA backend: the op's signature (op.py) on the kernels of triton_forward/backward.

Nothing here syncs with the host and every launch follows from the input shapes, so a call
captures in a CUDA graph; torch.compile sees the op as one node.
"""
from __future__ import annotations

import os

import torch

from . import triton_backward, triton_exact, triton_forward, triton_scan
from .op import GLABackend, register_backend
from .scan_order import ScanOrder
from .triton_tiles import CHUNK

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Every kernel this backend launches, by the name profilers report (bench/ attributes GPU time with it).
KERNEL_NAMES = tuple(kernel.fn.__name__ for kernel in (
    triton_forward._summary_kernel, triton_scan._scan_kernel, triton_scan._short_scan_kernel,
    triton_forward._output_kernel, triton_forward._short_forward_kernel, triton_exact._exact_output_kernel,
    triton_backward._grad_summary_kernel, triton_backward._grad_qkg_kernel, triton_backward._grad_v_kernel,
    triton_exact._exact_grad_kernel))


def order_arguments(order: ScanOrder, height: int, width: int) -> tuple[int, int, int]:
    """(reverse, col_h, col_w) for `scan_rows`: row orders use the identity col_h=1, col_w=T."""
    if order.column_major:
        return int(order.reverse), height, width
    return int(order.reverse), 1, height * width


def _check(q: torch.Tensor, v: torch.Tensor) -> None:
    for name, d in (("key", q.shape[-1]), ("value", v.shape[-1])):
        if d < 16 or d & (d - 1):
            raise ValueError(f"the triton GLA backend needs head dims that are powers of two >= 16; "
                             f"the {name} head dim is {d} (use backend='torch')")
    if q.dtype not in _DTYPES:
        raise ValueError(f"the triton GLA backend takes {', '.join(map(str, _DTYPES))} inputs, got {q.dtype} "
                         "(use backend='torch')")


def readable_in_place(x: torch.Tensor) -> bool:
    """Whether the kernels read the [B, T, H, D] tensor x where it is (triton_tiles.tile_ptrs):
    unit stride along D, heads packed (stride D), and the tokens of all sequences evenly spaced
    (dim 0's stride T times dim 1's, which is free), as in column slices of one wider projection's
    output. Strides of dims of size 1 do not matter."""
    B, T, H, D = x.shape
    token = x.stride(1)
    wanted = (T * token, token, D, 1)
    return all(size == 1 or stride == want for size, stride, want in zip(x.shape, x.stride(), wanted))


def _in_place(x: torch.Tensor | None) -> torch.Tensor | None:
    """x itself where the kernels can read it in place, else a contiguous copy."""
    return x if x is None or readable_in_place(x) else x.contiguous()


def _inputs(q, k, v, g, output_gate, norm_weight):
    return (*map(_in_place, (q, k, v, g, output_gate)), None if norm_weight is None else norm_weight.contiguous())


def _forward(q, k, v, g, output_gate, norm_weight, scale, normalizer, eps, order, height, width, save):
    _check(q, v)
    return triton_forward.forward(*_inputs(q, k, v, g, output_gate, norm_weight), scale, normalizer, eps,
                                  order_arguments(order, height, width), save)


def _backward(q, k, v, g, output_gate, norm_weight, states, o_pre, d_out, scale, normalizer, eps, order, height,
              width):
    return triton_backward.backward(*_inputs(q, k, v, g, output_gate, norm_weight), states, o_pre,
                                    d_out.contiguous(), scale, normalizer, eps, order_arguments(order, height, width))


# Under TRITON_INTERPRET=1 the kernels run on CPU tensors (how CI tests them).
_DEVICES = ("cuda", "cpu") if os.environ.get("TRITON_INTERPRET") == "1" else ("cuda",)
register_backend("triton", GLABackend(_forward, _backward, lambda T: CHUNK, devices=_DEVICES))
