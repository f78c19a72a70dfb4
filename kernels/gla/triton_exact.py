"""Chunks that decay too strongly for the fast intra-chunk path: the same per-chunk work as the
main kernels, with triton_intra.exact for the intra-chunk part.

The main kernels flag such a chunk (some key channel decays by more than MAX_FAST_DECAY over it)
and skip it; these kernels then complete every flagged chunk. They run on a fixed number of
programs that stride over the flags, kept apart so the fast kernels carry none of this code's
registers. With DiG's gates nothing is flagged, yet each launch costs 7-41 µs (H200, Nsight
Compute; kernels/gla/README.md): at 175-250 registers and 8 warps one program fits a
multiprocessor, not PROGRAMS_PER_SM, and each program tests its flags one dependent load at a
time. Products and rounding as in the main kernels.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .triton_chunk import (
    chunk_output,
    diagonal_factor,
    grad_k_from_state,
    store_dk_dg,
    store_dq,
    store_dv,
    store_output,
)
from .triton_intra import exact, lower
from .triton_tiles import CHUNK, load_gate, load_tile, mm, scan_rows, state_ptrs, token_strides

# Programs launched per multiprocessor (the registers let one run at a time: see above), and a
# stand-in for the multiprocessor count under the interpreter.
PROGRAMS_PER_SM = 4
INTERPRETER_SMS = 2
EXACT_LAUNCH = {"num_warps": 8, "num_stages": 1}
RUNTIME_SIZES = ["T", "H", "n_chunks", "total", "rev", "col_h", "col_w"]


@triton.jit
def _chunk_inputs(q, k, v, g, q_stride, k_stride, v_stride, g_stride, i, n_chunks, T, H, rev, col_h, col_w,
                  gate_norm, K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, RAW_GATE: tl.constexpr):
    """Flagged chunk i (= bh * n_chunks + n): its rows and head and float32 q, k, v, log-gates,
    e^{b}, e^{b_last - b}, b_last."""
    bh = i // n_chunks
    h = bh % H
    row, valid = scan_rows(bh // H, i % n_chunks, T, rev, col_h, col_w, C)
    g_c = load_gate(g, g_stride, row, h, valid, K, RAW_GATE, gate_norm)
    q_c = load_tile(q, q_stride, row, h, valid, K).to(tl.float32)
    k_c = load_tile(k, k_stride, row, h, valid, K).to(tl.float32)
    v_c = load_tile(v, v_stride, row, h, valid, V).to(tl.float32)
    e_from_start = tl.exp(tl.cumsum(g_c, axis=0))
    e_to_end = tl.exp(tl.cumsum(g_c, axis=0, reverse=True) - g_c)
    return row, h, valid, q_c, k_c, v_c, g_c, e_from_start, e_to_end, tl.sum(g_c, axis=0)


@triton.jit(do_not_specialize=RUNTIME_SIZES)
def _exact_output_kernel(q, k, v, g, z, q_stride, k_stride, v_stride, g_stride, z_stride, w, states, out, o_pre,
                         exact_flags, T, H, n_chunks, total, rev, col_h, col_w, scale, gate_norm, eps,
                         K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, RAW_GATE: tl.constexpr,
                         NORM: tl.constexpr, SAVE: tl.constexpr, EXACT: tl.constexpr):
    for i in range(tl.program_id(0), total, tl.num_programs(0)):
        if tl.load(exact_flags + i) != 0:
            row, h, valid, q_c, k_c, v_c, g_c, e_from_start, _, _ = _chunk_inputs(
                q, k, v, g, q_stride, k_stride, v_stride, g_stride, i, n_chunks, T, H, rev, col_h, col_w, gate_norm,
                K, V, C, RAW_GATE)
            A, _, _ = exact(q_c, k_c, g_c, q_c, C, K, False)
            o = chunk_output(q_c, v_c, A, e_from_start, tl.load(state_ptrs(states, i, K, V)), scale, EXACT)
            store_output(o, z, z_stride, w, out, o_pre, row, h, H, valid, eps, V, NORM, SAVE)


@triton.jit(do_not_specialize=RUNTIME_SIZES)
def _exact_grad_kernel(q, k, v, g, q_stride, k_stride, v_stride, g_stride, d_o, states, d_states, dq, dk, dv, dg,
                       exact_flags, T, H, n_chunks, total, rev, col_h, col_w, scale, gate_norm, K: tl.constexpr,
                       V: tl.constexpr, C: tl.constexpr, RAW_GATE: tl.constexpr, EXACT: tl.constexpr):
    for i in range(tl.program_id(0), total, tl.num_programs(0)):
        if tl.load(exact_flags + i) != 0:
            row, h, valid, q_c, k_c, v_c, g_c, e_from_start, e_to_end, b_last = _chunk_inputs(
                q, k, v, g, q_stride, k_stride, v_stride, g_stride, i, n_chunks, T, H, rev, col_h, col_w, gate_norm,
                K, V, C, RAW_GATE)
            do_c = load_tile(d_o, H * V, row, h, valid, V).to(tl.float32)
            d_scores = lower(scale * mm(do_c, tl.trans(v_c), EXACT), C, True)
            A, dq_c, dk_c = exact(q_c, k_c, g_c, d_scores, C, K, True)
            S = tl.load(state_ptrs(states, i, K, V))
            dS = tl.load(state_ptrs(d_states, i, K, V))
            store_dv(A, k_c, do_c, e_to_end, dS, scale, dv, row, h, H, valid, V, EXACT)
            diagonal = diagonal_factor(do_c, v_c, scale)
            q_dq = store_dq(dq_c, diagonal, q_c, k_c, do_c, e_from_start, S, scale, dq, row, h, H, valid, K, EXACT)
            dk_inter, across = grad_k_from_state(v_c, dS, S, b_last, e_to_end, EXACT)
            store_dk_dg(dk_c + dk_inter, dk_inter, across, q_dq, diagonal, q_c, k_c, g, g_stride, dk, dg, row, h, H,
                        valid, gate_norm, K, RAW_GATE)


@functools.cache
def _programs(device: torch.device) -> int:
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else INTERPRETER_SMS
    return PROGRAMS_PER_SM * sms


def _launch(kernel, exact_flags: torch.Tensor, *args, **kwargs) -> None:
    kernel[(min(_programs(exact_flags.device), exact_flags.numel()),)](*args, **kwargs, **EXACT_LAUNCH)


def complete_forward(q, k, v, g, output_gate, norm_weight, states, out, o_pre, exact_flags, scale: float,
                     gate_norm: float, norm_eps: float, order_args) -> None:
    """Writes out (and o_pre) of the chunks triton_forward flagged."""
    B, T, H, K = q.shape
    norm = output_gate is not None
    _launch(_exact_output_kernel, exact_flags, q, k, v, g, output_gate, *token_strides(q, k, v, g, output_gate),
            norm_weight, states, out, o_pre, exact_flags, T, H, exact_flags.shape[1], exact_flags.numel(), *order_args,
            scale, gate_norm, norm_eps, K=K, V=v.shape[-1], C=CHUNK, RAW_GATE=gate_norm > 0, NORM=norm,
            SAVE=norm and o_pre.numel() > 0, EXACT=q.dtype == torch.float32)


def complete_backward(q, k, v, g, d_o, states, d_states, grads, exact_flags, scale: float, gate_norm: float,
                      order_args) -> None:
    """Writes dq, dk, dv, dg (`grads`) of the chunks triton_backward flagged."""
    B, T, H, K = q.shape
    _launch(_exact_grad_kernel, exact_flags, q, k, v, g, *token_strides(q, k, v, g), d_o, states, d_states, *grads,
            exact_flags, T, H, exact_flags.shape[1], exact_flags.numel(), *order_args, scale, gate_norm, K=K,
            V=v.shape[-1], C=CHUNK, RAW_GATE=gate_norm > 0, EXACT=q.dtype == torch.float32)
