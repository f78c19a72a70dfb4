"""Triton GLA backward: gradient summaries, the reverse state scan, then every chunk's gradients.

Per chunk, with S the state entering it (saved by the forward), dS = dL/d(state leaving it),
dA_ts = scale do_t . v_s for s < t, and A, b, b_last as in triton_forward:
    dq_t = intra_t(dA) + scale (do_t S^T) e^{b_t}
    dk_s = intra_s(dA) + (v_s dS^T) e^{b_last - b_s}
    dv_s = scale sum_{t>=s} A_ts do_t + (k_s e^{b_last - b_s}) dS
    D    = scale sum_t (q_t e^{b_t})^T do_t                 (what the chunk sends back to S)
The gates enter only through q e^{G} and k e^{-G} (G: the cumulative gate over the sequence), so
dL/dg_t = sum_{u >= t} (q_u dq_u - k_u dk_u). The part of that sum beyond the chunk equals
sum_V S_out * dS with S_out = e^{b_last} S + Delta, which keeps the gate gradient chunk-local;
and sum_V Delta * dS = sum_s k_s * (v_s dS^T) e^{b_last - b_s}, which the chunk has at hand.
1. _grad_summary_kernel, a program per chunk: with the fused norm its backward (dL/do from
   dL/dout, the output gate's gradient, the norm weight's share); D and b_last.
2. triton_scan, from the last chunk: dS for every chunk.
3. _grad_qkg_kernel, a program per chunk: dq, dk, dg; chunks past the fast intra-chunk path's
   range are flagged and left to triton_exact.
4. _grad_v_kernel, a program per chunk: dv of the unflagged chunks. Split from step 3 so that
   each fits at least two programs per multiprocessor (one kernel for all four took 237-241
   registers at 8 warps: one program); the price is reading q, k, g, do and dS a second time.
5. triton_exact: every gradient of the flagged chunks.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import triton_exact
from .triton_chunk import diagonal_factor, grad_k_from_state, store_dk_dg, store_dq, store_dv
from .triton_forward import RUNTIME_SIZES, flags
from .triton_intra import fast_factors, fast_grad_k, fast_grad_q, fast_scores, lower, needs_exact, upper
from .triton_scan import scan_states
from .triton_tiles import (
    CHUNK,
    chunk_program,
    gated_rms_norm_grad,
    load_gate,
    load_tile,
    mm,
    scan_rows,
    state_ptrs,
    store_tile,
    token_strides,
)

GRAD_SUMMARY_LAUNCH = {"num_warps": 8, "num_stages": 1}  # 124 registers with the norm, 2 programs
GRAD_QKG_LAUNCH = {"num_warps": 4, "num_stages": 1}  # 255 registers, 2 programs
GRAD_V_LAUNCH = {"num_warps": 4, "num_stages": 1}  # 122 registers, 4 programs


@triton.jit(do_not_specialize=RUNTIME_SIZES)
def _grad_summary_kernel(q, g, z, q_stride, g_stride, z_stride, d_out, w, o_pre, d_o, dz, dw_parts, contributions,
                         log_decays, T, H, rev, col_h, col_w, scale, gate_norm, eps,
                         K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, RAW_GATE: tl.constexpr,
                         NORM: tl.constexpr, EXACT: tl.constexpr):
    n, bh, index = chunk_program(T, C)
    h = bh % H
    row, valid = scan_rows(bh // H, n, T, rev, col_h, col_w, C)
    q_c = load_tile(q, q_stride, row, h, valid, K)
    g_c = load_gate(g, g_stride, row, h, valid, K, RAW_GATE, gate_norm)
    if NORM:
        w_v = tl.load(w + tl.arange(0, V)).to(tl.float32)
        do_c, dz_c, dw_c = gated_rms_norm_grad(load_tile(d_out, H * V, row, h, valid, V),
                                               load_tile(o_pre, H * V, row, h, valid, V),
                                               load_tile(z, z_stride, row, h, valid, V), w_v, eps, V)
        store_tile(d_o, H * V, row, h, valid, do_c, V)
        store_tile(dz, H * V, row, h, valid, dz_c, V)
        tl.store(dw_parts + index.to(tl.int64) * V + tl.arange(0, V), dw_c)
    else:
        do_c = load_tile(d_out, H * V, row, h, valid, V)
    q_from_start = q_c * tl.exp(tl.cumsum(g_c, axis=0))
    tl.store(state_ptrs(contributions, index, K, V), scale * mm(tl.trans(q_from_start), do_c, EXACT))
    tl.store(log_decays + index.to(tl.int64) * K + tl.arange(0, K), tl.sum(g_c, axis=0))


@triton.jit(do_not_specialize=RUNTIME_SIZES)
def _grad_qkg_kernel(q, k, v, g, q_stride, k_stride, v_stride, g_stride, d_o, states, d_states, dq, dk, dg,
                     exact_flags, T, H, rev, col_h, col_w, scale, gate_norm, K: tl.constexpr, V: tl.constexpr,
                     C: tl.constexpr, RAW_GATE: tl.constexpr, EXACT: tl.constexpr):
    n, bh, index = chunk_program(T, C)
    h = bh % H
    row, valid = scan_rows(bh // H, n, T, rev, col_h, col_w, C)
    g_c = load_gate(g, g_stride, row, h, valid, K, RAW_GATE, gate_norm)
    b_last = tl.sum(g_c, axis=0)
    flagged = needs_exact(b_last)
    tl.store(exact_flags + index, flagged.to(tl.int8))
    if not flagged:
        e_from_start = tl.exp(tl.cumsum(g_c, axis=0))
        e_to_end = tl.exp(tl.cumsum(g_c, axis=0, reverse=True) - g_c)
        e_q, e_k = fast_factors(e_from_start, e_to_end, b_last)
        v_c = load_tile(v, v_stride, row, h, valid, V)
        do_c = load_tile(d_o, H * V, row, h, valid, V)
        q_c = load_tile(q, q_stride, row, h, valid, K)
        k_c = load_tile(k, k_stride, row, h, valid, K)
        diagonal = diagonal_factor(do_c, v_c, scale)
        d_scores = lower(scale * mm(do_c, tl.trans(v_c), EXACT), C, True)
        S = tl.load(state_ptrs(states, index, K, V))
        q_dq = store_dq(fast_grad_q(k_c, e_q, e_k, d_scores, EXACT), diagonal, q_c, k_c, do_c, e_from_start, S,
                        scale, dq, row, h, H, valid, K, EXACT)
        dS = tl.load(state_ptrs(d_states, index, K, V))
        # dS's terms before dk's intra-chunk part, which takes the scores' adjoint computed transposed
        # (no register transpose): the order that fits 255 registers at 4 warps without spills.
        dk_inter, across = grad_k_from_state(v_c, dS, S, b_last, e_to_end, EXACT)
        dk_c = fast_grad_k(q_c, e_q, e_k, upper(scale * mm(v_c, tl.trans(do_c), EXACT), C), EXACT) + dk_inter
        store_dk_dg(dk_c, dk_inter, across, q_dq, diagonal, q_c, k_c, g, g_stride, dk, dg, row, h, H, valid, gate_norm,
                    K, RAW_GATE)


@triton.jit(do_not_specialize=RUNTIME_SIZES)
def _grad_v_kernel(q, k, g, q_stride, k_stride, g_stride, d_o, d_states, dv, exact_flags, T, H, rev, col_h, col_w,
                   scale, gate_norm, K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, RAW_GATE: tl.constexpr,
                   EXACT: tl.constexpr):
    n, bh, index = chunk_program(T, C)
    # The flags _grad_qkg_kernel wrote, not recomputed: a chunk must go to exactly one of the two paths.
    if tl.load(exact_flags + index) == 0:
        h = bh % H
        row, valid = scan_rows(bh // H, n, T, rev, col_h, col_w, C)
        g_c = load_gate(g, g_stride, row, h, valid, K, RAW_GATE, gate_norm)
        e_to_end = tl.exp(tl.cumsum(g_c, axis=0, reverse=True) - g_c)
        e_q, e_k = fast_factors(tl.exp(tl.cumsum(g_c, axis=0)), e_to_end, tl.sum(g_c, axis=0))
        q_c = load_tile(q, q_stride, row, h, valid, K)
        k_c = load_tile(k, k_stride, row, h, valid, K)
        store_dv(fast_scores(q_c, k_c, e_q, e_k, C, EXACT), k_c, load_tile(d_o, H * V, row, h, valid, V), e_to_end,
                 tl.load(state_ptrs(d_states, index, K, V)), scale, dv, row, h, H, valid, V, EXACT)


def backward(q, k, v, g, output_gate, norm_weight, states, o_pre, d_out, scale: float, gate_norm: float,
             norm_eps: float, order_args: tuple[int, int, int]) -> tuple:
    """(dq, dk, dv, dg, d_output_gate, d_norm_weight) of triton_forward.forward (same arguments;
    states and o_pre as it returned them, d_out contiguous), the gradients contiguous; the last
    two are None without the norm."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    n_chunks = triton.cdiv(T, CHUNK)
    grid = (B * H * n_chunks,)  # one axis: triton_tiles.chunk_program
    norm = output_gate is not None
    d_states = q.new_empty(B * H, n_chunks, K, V, dtype=torch.float32)  # first each chunk's D
    log_decays = q.new_empty(B * H, n_chunks, K, dtype=torch.float32)
    grads = tuple(x.new_empty(x.shape) for x in (q, k, v, g))  # contiguous, whatever x's strides
    # With the norm, dL/do goes to dv's memory. Every read of it comes before dv overwrites it:
    # _grad_qkg_kernel runs first; _grad_v_kernel reads each chunk's rows before writing dv there;
    # flagged chunks it leaves alone for triton_exact, which also reads do before writing dv.
    d_o = grads[2] if norm else d_out
    dz = output_gate.new_empty(output_gate.shape) if norm else None
    dw_parts = q.new_empty(B * H * n_chunks, V, dtype=torch.float32) if norm else None
    _grad_summary_kernel[grid](q, g, output_gate, *token_strides(q, g, output_gate), d_out, norm_weight, o_pre, d_o,
                               dz, dw_parts, d_states, log_decays, T, H, *order_args, scale, gate_norm, norm_eps,
                               NORM=norm, **flags(q, v, gate_norm), **GRAD_SUMMARY_LAUNCH)
    scan_states(d_states, log_decays, reverse=True)
    exact_flags = q.new_empty(B * H, n_chunks, dtype=torch.int8)
    _grad_qkg_kernel[grid](q, k, v, g, *token_strides(q, k, v, g), d_o, states, d_states, grads[0], grads[1], grads[3],
                           exact_flags, T, H, *order_args, scale, gate_norm, **flags(q, v, gate_norm),
                           **GRAD_QKG_LAUNCH)
    _grad_v_kernel[grid](q, k, g, *token_strides(q, k, g), d_o, d_states, grads[2], exact_flags, T, H, *order_args,
                         scale, gate_norm, **flags(q, v, gate_norm), **GRAD_V_LAUNCH)
    triton_exact.complete_backward(q, k, v, g, d_o, states, d_states, grads, exact_flags, scale, gate_norm,
                                   order_args)
    dw = dw_parts.sum(0).to(norm_weight.dtype) if norm else None
    return (*grads, dz, dw)
