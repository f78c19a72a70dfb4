"""The exact path for chunks whose decay is too strong for the fast path's factorisation.

The main kernels (triton_forward, triton_backward) flag a chunk when some channel's cumulative
decay over it falls below FAST_PATH_MIN_DECAY (gates of about -2/step on average; DiG's gates,
logsigmoid(x)/16, rarely get there). For such a chunk they store everything except the
intra-chunk terms; these kernels, launched over all chunks, return at once for unflagged ones
and add those terms for the rest with only non-positive exponents, so any gate is safe. Kept
apart so that this code costs the fast kernels neither registers nor compile time.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .triton_common import (
    CHUNK,
    SUB_BLOCK,
    block_selector,
    decays_across_block_start,
    decays_into_row,
    gate_input_grad,
    gated_rms_norm,
    load_gate,
    load_tile,
    mm_fine,
    norm_weight,
    output_grad,
    place_rows,
    row_of,
    rows_of,
    scan_rows,
    store_tile,
)


@triton.jit
def _intra_exact(q, k, v, g, C: tl.constexpr, V: tl.constexpr, SUB: tl.constexpr, FP32_DOT: tl.constexpr):
    """Unscaled intra-chunk output [C, V] for any decay: within each SUB-block row by row, with
    only non-positive exponents; earlier rows through a reference point at the block start.
    Loops, not unrolled, and 2-D tiles only: small code, few registers."""
    sub = tl.arange(0, SUB)
    out = tl.zeros([C, V], dtype=tl.float32)
    for i in range(C // SUB):
        sel = block_selector(i, C, SUB)
        q_i, k_i, v_i, g_i = rows_of(sel, q), rows_of(sel, k), rows_of(sel, v), rows_of(sel, g)
        scores = tl.zeros([SUB, SUB], dtype=tl.float32)
        for t in range(SUB):
            at_t = (sub == t)[:, None]
            row = tl.sum(k_i * decays_into_row(g_i, t, SUB) * row_of(q_i, at_t)[None, :], axis=1)
            scores = tl.where(at_t, row[None, :], scores)
        o_i = mm_fine(scores, v_i, FP32_DOT)
        if i > 0:
            after, before = decays_across_block_start(g, g_i, i, C, SUB)
            o_i += mm_fine(mm_fine(q_i * after, tl.trans(k * before), FP32_DOT), v, FP32_DOT)
        out += place_rows(sel, o_i)
    return out


@triton.jit
def _intra_grads_exact(q, k, v, do, g, scale, C: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                       SUB: tl.constexpr, FP32_DOT: tl.constexpr):
    """Intra-chunk dq, dk without their t == s terms, and dv (with them), for any decay (as `_intra_exact`)."""
    rows = tl.arange(0, C)
    sub = tl.arange(0, SUB)
    dq = tl.zeros([C, K], dtype=tl.float32)
    dk = tl.zeros([C, K], dtype=tl.float32)
    dv = tl.zeros([C, V], dtype=tl.float32)
    for i in range(C // SUB):
        sel = block_selector(i, C, SUB)
        q_i, k_i, v_i, do_i, g_i = rows_of(sel, q), rows_of(sel, k), rows_of(sel, v), rows_of(sel, do), rows_of(sel, g)
        d_scores = tl.where(sub[:, None] > sub[None, :], mm_fine(do_i, tl.trans(v_i), FP32_DOT), 0.0) * scale
        scores = tl.zeros([SUB, SUB], dtype=tl.float32)
        dq_i = tl.zeros([SUB, K], dtype=tl.float32)
        dk_i = tl.zeros([SUB, K], dtype=tl.float32)
        for t in range(SUB):
            at_t = (sub == t)[:, None]
            q_t = row_of(q_i, at_t)
            ds_t = row_of(d_scores, at_t)
            decay = decays_into_row(g_i, t, SUB)
            k_decayed = k_i * decay
            scores = tl.where(at_t, (scale * tl.sum(k_decayed * q_t[None, :], axis=1))[None, :], scores)
            dq_i = tl.where(at_t, tl.sum(ds_t[:, None] * k_decayed, axis=0)[None, :], dq_i)
            dk_i += ds_t[:, None] * decay * q_t[None, :]
        dv_i = mm_fine(tl.trans(scores), do_i, FP32_DOT)
        if i > 0:
            after, before = decays_across_block_start(g, g_i, i, C, SUB)
            k_before = k * before
            q_after = q_i * after
            scores_off = mm_fine(q_after, tl.trans(k_before), FP32_DOT) * scale
            d_scores_off = tl.where(rows[None, :] < i * SUB, mm_fine(do_i, tl.trans(v), FP32_DOT), 0.0) * scale
            dq_i += mm_fine(d_scores_off, k_before, FP32_DOT) * after
            dk += mm_fine(tl.trans(d_scores_off), q_after, FP32_DOT) * before
            dv += mm_fine(tl.trans(scores_off), do_i, FP32_DOT)
        dq += place_rows(sel, dq_i)
        dk += place_rows(sel, dk_i)
        dv += place_rows(sel, dv_i)
    return dq, dk, dv

@triton.jit(do_not_specialize=["T", "H", "n_chunks", "rev", "col_h", "col_w"])
def _forward_kernel(q, k, v, g, out, z, w, o_pre, exact_chunks,
                    T, H, n_chunks, rev, col_h, col_w, scale, gate_norm, eps,
                    K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, SUB: tl.constexpr,
                    RAW_GATE: tl.constexpr, NORM: tl.constexpr, SAVE: tl.constexpr, FP32_DOT: tl.constexpr):
    """out (holding the flagged chunk's output without its intra-chunk part, before any norm)
    += the intra-chunk part; then the fused norm."""
    n = tl.program_id(0)
    bh = tl.program_id(1)
    if tl.load(exact_chunks + bh * n_chunks + n) != 0:
        row, valid = scan_rows(bh // H, bh % H, n, T, H, rev, col_h, col_w, C)
        q_c = load_tile(q, row, valid, K)
        k_c = load_tile(k, row, valid, K)
        v_c = load_tile(v, row, valid, V)
        g_c = load_gate(g, row, valid, K, RAW_GATE, gate_norm)
        o_c = load_tile(out, row, valid, V).to(tl.float32) + scale * _intra_exact(q_c, k_c, v_c, g_c, C, V, SUB,
                                                                                 FP32_DOT)
        if NORM:
            if SAVE:
                store_tile(o_pre, row, valid, o_c, V)
            o_c = gated_rms_norm(o_c, load_tile(z, row, valid, V).to(tl.float32), norm_weight(w, V, NORM), eps, V)
        store_tile(out, row, valid, o_c, V)


@triton.jit(do_not_specialize=["T", "H", "n_chunks", "rev", "col_h", "col_w"])
def _backward_kernel(q, k, v, g, do, z, w, o_pre, dq, dk, dv, dg, exact_chunks,
                     T, H, n_chunks, rev, col_h, col_w, scale, gate_norm, eps,
                     K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, SUB: tl.constexpr,
                     RAW_GATE: tl.constexpr, NORM: tl.constexpr, FP32_DOT: tl.constexpr):
    """dq, dk, dv, dg of a flagged chunk += the intra-chunk terms' share (the gate gradient's is
    the in-chunk reverse cumsum of q dq - k dk over those terms)."""
    n = tl.program_id(0)
    bh = tl.program_id(1)
    if tl.load(exact_chunks + bh * n_chunks + n) != 0:
        row, valid = scan_rows(bh // H, bh % H, n, T, H, rev, col_h, col_w, C)
        q_c = load_tile(q, row, valid, K)
        k_c = load_tile(k, row, valid, K)
        v_c = load_tile(v, row, valid, V)
        g_c = load_gate(g, row, valid, K, RAW_GATE, gate_norm)
        do_c, _, _ = output_grad(do, z, o_pre, row, valid, norm_weight(w, V, NORM), eps, V, NORM)
        dq_c, dk_c, dv_c = _intra_grads_exact(q_c, k_c, v_c, do_c, g_c, scale, C, K, V, SUB, FP32_DOT)
        d_gate = q_c * dq_c - k_c * dk_c
        dg_c = gate_input_grad(tl.cumsum(d_gate, axis=0, reverse=True), g, row, valid, K, RAW_GATE, gate_norm)
        store_tile(dq, row, valid, load_tile(dq, row, valid, K).to(tl.float32) + dq_c, K)
        store_tile(dk, row, valid, load_tile(dk, row, valid, K).to(tl.float32) + dk_c, K)
        store_tile(dv, row, valid, load_tile(dv, row, valid, V).to(tl.float32) + dv_c, V)
        store_tile(dg, row, valid, load_tile(dg, row, valid, K).to(tl.float32) + dg_c, K)


def add_forward(q, k, v, g, out, exact_chunks, scale, order_args, gate_norm, output_gate, norm_weight_, norm_eps,
                o_pre, fp32_dot) -> None:
    """Completes the flagged chunks of `triton_forward.forward`'s output in place."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    norm = output_gate is not None
    _forward_kernel[(triton.cdiv(T, CHUNK), B * H)](
        q, k, v, g, out, output_gate if norm else out, norm_weight_ if norm else out, o_pre, exact_chunks,
        T, H, triton.cdiv(T, CHUNK), *order_args, scale, gate_norm, norm_eps,
        K=K, V=V, C=CHUNK, SUB=SUB_BLOCK, RAW_GATE=gate_norm > 0, NORM=norm, SAVE=o_pre.numel() > 0,
        FP32_DOT=fp32_dot, num_warps=8)


def add_backward(q, k, v, g, d_out, grads, exact_chunks, scale, order_args, gate_norm, output_gate, norm_weight_,
                 norm_eps, o_pre, fp32_dot) -> None:
    """Completes the flagged chunks of `triton_backward.backward`'s (dq, dk, dv, dg) in place."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    norm = output_gate is not None
    extras = (output_gate, norm_weight_, o_pre) if norm else (d_out, d_out, d_out)
    _backward_kernel[(triton.cdiv(T, CHUNK), B * H)](
        q, k, v, g, d_out, *extras, *grads, exact_chunks,
        T, H, triton.cdiv(T, CHUNK), *order_args, scale, gate_norm, norm_eps,
        K=K, V=V, C=CHUNK, SUB=SUB_BLOCK, RAW_GATE=gate_norm > 0, NORM=norm, FP32_DOT=fp32_dot, num_warps=8)
