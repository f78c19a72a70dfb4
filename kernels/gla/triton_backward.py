"""Triton GLA backward: per-segment sums of the state gradient, then the gradient sweep.

Sweeping chunks last to first with dS = dL/dS_out (the state leaving the chunk) and the saved
S_in (the state entering it), with A_ts = <q_t, k_s e^{b_t - b_s}> and dA_ts = scale do_t.v_s:
    dq_t = sum_s dA_ts k_s e^{b_t - b_s} + scale (do_t S_in^T) e^{b_t}
    dk_s = sum_t dA_ts q_t e^{b_t - b_s} + (v_s dS^T) e^{b_last - b_s}
    dv_s = scale sum_t A_ts do_t + (k_s e^{b_last - b_s}) dS
    dS_in = e^{b_last} dS + scale sum_t (q_t e^{b_t})^T do_t
The gates enter only through q e^{G} and k e^{-G} (G: global cumulative gate), so
dL/dg_t = sum_{u >= t} (q_u dq_u - k_u dk_u); the part of that sum beyond the chunk equals
<S_out, dS_out> summed over V, which makes the gate gradient local to the chunk.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import triton_exact
from .scan_order import ScanOrder
from .triton_common import (
    CHUNK,
    FAST_PATH_MIN_DECAY,
    decay_to_end,
    gate_input_grad,
    load_gate,
    load_tile,
    mm,
    mm_fine,
    norm_weight,
    output_grad,
    scan_rows,
    state_ptrs,
    store_tile,
)
from .triton_forward import exact_dots
from .triton_forward import forward as _forward
from .triton_segments import order_arguments, plan, scan_segments

# Launch settings (chosen by bench/gla.py's sweep on an H100).
BACKWARD_LAUNCH = {"num_warps": 8, "num_stages": 2}
SUMMARY_LAUNCH = {"num_warps": 4, "num_stages": 2}


@triton.jit
def _intra_grads_fast(q, k, v, do, b, b_last, scale, C: tl.constexpr, FP32_DOT: tl.constexpr):
    """Intra-chunk dq, dk without the t == s terms (see `_backward_kernel`), dv, plus e^{b} and
    e^{b_last - b}; factored around rho = b_last / 2."""
    rho = 0.5 * b_last
    e_q = tl.exp(b - rho[None, :])
    e_k = tl.exp(rho[None, :] - b)
    e_rho = tl.exp(rho)[None, :]
    q_f = q * e_q
    k_f = k * e_k
    rows = tl.arange(0, C)
    scores = tl.where(rows[:, None] >= rows[None, :], mm(q_f, tl.trans(k_f), FP32_DOT), 0.0) * scale
    dv = mm(tl.trans(scores), do, FP32_DOT)
    d_scores = tl.where(rows[:, None] > rows[None, :], mm(do, tl.trans(v), FP32_DOT), 0.0) * scale
    dq = mm_fine(d_scores, k_f, FP32_DOT) * e_q
    dk = mm_fine(tl.trans(d_scores), q_f, FP32_DOT) * e_k
    return dq, dk, dv, e_q * e_rho, e_k * e_rho


@triton.jit(do_not_specialize=["T", "H", "n_chunks", "chunks_per_seg", "n_segs", "rev", "col_h", "col_w"])
def _summary_kernel(q, g, do, z, w, o_pre, summaries, log_decays,
                    T, H, n_chunks, chunks_per_seg, n_segs, rev, col_h, col_w, scale, gate_norm, eps,
                    K: tl.constexpr, V: tl.constexpr, C: tl.constexpr,
                    RAW_GATE: tl.constexpr, NORM: tl.constexpr, FP32_DOT: tl.constexpr):
    """Gradient w.r.t. the state entering segment seg (>= 1) from that segment alone."""
    seg = tl.program_id(0) + 1
    bh = tl.program_id(1)
    b, h = bh // H, bh % H
    w_v = norm_weight(w, V, NORM)
    d_state = tl.zeros([K, V], dtype=tl.float32)
    total = tl.zeros([K], dtype=tl.float32)
    first = seg * chunks_per_seg
    last = tl.minimum(first + chunks_per_seg, n_chunks)
    for i in range(last - first):
        n = last - 1 - i
        row, valid = scan_rows(b, h, n, T, H, rev, col_h, col_w, C)
        q_c = load_tile(q, row, valid, K)
        g_c = load_gate(g, row, valid, K, RAW_GATE, gate_norm)
        do_c, _, _ = output_grad(do, z, o_pre, row, valid, w_v, eps, V, NORM)
        b_last = tl.sum(g_c, axis=0)
        q_from_start = q_c * tl.exp(tl.cumsum(g_c, axis=0))
        d_state = tl.exp(b_last)[:, None] * d_state + scale * mm_fine(tl.trans(q_from_start), do_c, FP32_DOT)
        total += b_last
    index = bh * n_segs + seg
    tl.store(state_ptrs(summaries, index, K, V), d_state)
    tl.store(log_decays + index.to(tl.int64) * K + tl.arange(0, K), total)


@triton.jit(do_not_specialize=["T", "H", "n_chunks", "chunks_per_seg", "n_segs", "rev", "col_h", "col_w"])
def _backward_kernel(q, k, v, g, do, states, seg_states, z, w, o_pre,
                     dq, dk, dv, dg, dz, dw_parts, exact_chunks,
                     T, H, n_chunks, chunks_per_seg, n_segs, rev, col_h, col_w, scale, gate_norm, eps,
                     K: tl.constexpr, V: tl.constexpr, C: tl.constexpr,
                     RAW_GATE: tl.constexpr, NORM: tl.constexpr, SEGMENTED: tl.constexpr,
                     FP32_DOT: tl.constexpr):
    seg = tl.program_id(0)
    bh = tl.program_id(1)
    b, h = bh // H, bh % H
    if SEGMENTED:
        d_state = tl.load(state_ptrs(seg_states, bh * n_segs + seg, K, V))
    else:
        d_state = tl.zeros([K, V], dtype=tl.float32)
    w_v = norm_weight(w, V, NORM)
    dw = tl.zeros([V], dtype=tl.float32)
    first = seg * chunks_per_seg
    last = tl.minimum(first + chunks_per_seg, n_chunks)
    # <S_out, dS_out> over V for the chunk in hand: the gate-gradient share of everything after it.
    # Past the sequence's end d_state is 0, so any finite state does there.
    state_out = tl.load(state_ptrs(states, bh * n_chunks + tl.minimum(last, n_chunks - 1), K, V))
    beyond = tl.sum(state_out * d_state, axis=1)
    for i in range(last - first):
        n = last - 1 - i
        row, valid = scan_rows(b, h, n, T, H, rev, col_h, col_w, C)
        q_c = load_tile(q, row, valid, K)
        k_c = load_tile(k, row, valid, K)
        v_c = load_tile(v, row, valid, V)
        g_c = load_gate(g, row, valid, K, RAW_GATE, gate_norm)
        do_c, dz_c, dw_c = output_grad(do, z, o_pre, row, valid, w_v, eps, V, NORM)
        if NORM:
            store_tile(dz, row, valid, dz_c, V)
            dw += dw_c
        state_in = tl.load(state_ptrs(states, bh * n_chunks + n, K, V))
        b_c = tl.cumsum(g_c, axis=0)
        b_last = tl.sum(g_c, axis=0)
        exact = tl.min(b_last, axis=0) <= FAST_PATH_MIN_DECAY
        tl.store(exact_chunks + bh * n_chunks + n, exact.to(tl.int8))
        if exact:  # triton_exact adds the intra-chunk terms
            dq_c = tl.zeros([C, K], dtype=tl.float32)
            dk_c = tl.zeros([C, K], dtype=tl.float32)
            dv_c = tl.zeros([C, V], dtype=tl.float32)
            e_from_start = tl.exp(b_c)
            e_to_end = decay_to_end(g_c)
        else:
            dq_c, dk_c, dv_c, e_from_start, e_to_end = _intra_grads_fast(
                q_c, k_c, v_c, do_c, b_c, b_last, scale, C, FP32_DOT)
        dq_c += scale * mm_fine(do_c, tl.trans(state_in), FP32_DOT) * e_from_start
        dk_c += mm_fine(v_c, tl.trans(d_state), FP32_DOT) * e_to_end
        dv_c += mm(k_c * e_to_end, d_state, FP32_DOT)
        # The t == s terms of dq and dk cancel exactly in q dq - k dk: leaving them out keeps the
        # gate gradient accurate where strong decay makes it tiny next to them.
        d_gate = q_c * dq_c - k_c * dk_c
        dg_c = tl.cumsum(d_gate, axis=0, reverse=True) + beyond[None, :]
        d_diag = scale * tl.sum(do_c.to(tl.float32) * v_c.to(tl.float32), axis=1)[:, None]
        store_tile(dq, row, valid, dq_c + d_diag * k_c, K)
        store_tile(dk, row, valid, dk_c + d_diag * q_c, K)
        store_tile(dv, row, valid, dv_c, V)
        store_tile(dg, row, valid, gate_input_grad(dg_c, g, row, valid, K, RAW_GATE, gate_norm), K)
        d_state = tl.exp(b_last)[:, None] * d_state + scale * mm_fine(tl.trans(q_c * e_from_start), do_c, FP32_DOT)
        beyond = tl.sum(state_in * d_state, axis=1)
    if NORM:
        tl.store(dw_parts + (bh * n_segs + seg).to(tl.int64) * V + tl.arange(0, V), dw)


def backward(q, k, v, g, d_out, scale: float, order: ScanOrder, height: int, width: int, *,
             states=None, o_pre=None, gate_norm: float = 0.0, output_gate=None, norm_weight=None,
             norm_eps: float = 1e-6) -> tuple[torch.Tensor, ...]:
    """Gradients of `triton_forward.forward` (same arguments) given d_out = dL/d(out).

    states / o_pre: what the forward saved; recomputed by a forward pass when missing.
    Returns (dq, dk, dv, dg, d_output_gate, d_norm_weight); the last two are empty without the norm,
    d_norm_weight is float32.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    norm = output_gate is not None
    if states is None or states.numel() == 0 or (norm and (o_pre is None or o_pre.numel() == 0)):
        _, states, o_pre = _forward(q, k, v, g, scale, order, height, width, gate_norm=gate_norm,
                                    output_gate=output_gate, norm_weight=norm_weight, norm_eps=norm_eps,
                                    save=True)
    p = plan(B * H, T, q.device)
    args = order_arguments(order, height, width)
    extras = (output_gate, norm_weight, o_pre) if norm else (d_out, d_out, d_out)
    flags = {"K": K, "V": V, "C": CHUNK, "RAW_GATE": gate_norm > 0, "NORM": norm, "FP32_DOT": exact_dots(q)}
    seg_states = states
    if p.n_segments > 1:
        summaries = q.new_empty(B * H, p.n_segments, K, V, dtype=torch.float32)
        log_decays = q.new_empty(B * H, p.n_segments, K, dtype=torch.float32)
        _summary_kernel[(p.n_segments - 1, B * H)](
            q, g, d_out, *extras, summaries, log_decays,
            T, H, p.n_chunks, p.chunks_per_segment, p.n_segments, *args, scale, gate_norm, norm_eps,
            **flags, **SUMMARY_LAUNCH)
        seg_states = scan_segments(summaries, log_decays, reverse=True)
    grads = tuple(torch.empty_like(x) for x in (q, k, v, g))
    dz = torch.empty_like(output_gate) if norm else d_out.new_empty(0)
    dw_parts = q.new_empty((B * H * p.n_segments, V) if norm else (0,), dtype=torch.float32)
    exact_chunks = q.new_empty(B * H * p.n_chunks, dtype=torch.int8)
    _backward_kernel[(p.n_segments, B * H)](
        q, k, v, g, d_out, states, seg_states, *extras, *grads, dz if norm else d_out, dw_parts, exact_chunks,
        T, H, p.n_chunks, p.chunks_per_segment, p.n_segments, *args, scale, gate_norm, norm_eps,
        SEGMENTED=p.n_segments > 1, **flags, **BACKWARD_LAUNCH)
    triton_exact.add_backward(q, k, v, g, d_out, grads, exact_chunks, scale, args, gate_norm, output_gate,
                              norm_weight, norm_eps, o_pre, exact_dots(q))
    dw = dw_parts.sum(0) if norm else dw_parts
    return (*grads, dz, dw)
