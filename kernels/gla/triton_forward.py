"""Triton GLA forward: per-segment state sums, then the output sweep (see triton_segments).

Within a chunk of C scan steps with in-chunk cumulative gates b_t (b_last = b_{C-1}):
    o_t = scale * [ (q_t e^{b_t}) S_in + sum_{s<=t} <q_t, k_s e^{b_t - b_s}> v_s ]
    S_out = e^{b_last} S_in + sum_s (k_s e^{b_last - b_s})^T v_s
Every exponent there is <= 0 except in the intra-chunk scores. This kernel factors those as
(q_t e^{b_t - rho}) (k_s e^{rho - b_s}) with rho = b_last / 2 (one matrix product); a chunk where
some channel decays by more than FAST_PATH_MIN_DECAY is flagged instead and gets its
intra-chunk part from triton_exact.
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
    gated_rms_norm,
    load_gate,
    load_tile,
    mm,
    mm_fine,
    scan_rows,
    state_ptrs,
    store_tile,
)
from .triton_segments import order_arguments, plan, scan_segments

# Launch settings (chosen by bench/gla.py's sweep on an H100).
FORWARD_LAUNCH = {"num_warps": 8, "num_stages": 2}
SUMMARY_LAUNCH = {"num_warps": 4, "num_stages": 2}


@triton.jit
def _intra_fast(q, k, v, b, b_last, C: tl.constexpr, FP32_DOT: tl.constexpr):
    """Unscaled intra-chunk output [C, V], plus e^{b} and e^{b_last - b} ([C, K])."""
    rho = 0.5 * b_last
    e_q = tl.exp(b - rho[None, :])
    e_k = tl.exp(rho[None, :] - b)
    e_rho = tl.exp(rho)[None, :]
    rows = tl.arange(0, C)
    scores = mm(q * e_q, tl.trans(k * e_k), FP32_DOT)
    scores = tl.where(rows[:, None] >= rows[None, :], scores, 0.0)
    return mm(scores, v, FP32_DOT), e_q * e_rho, e_k * e_rho


@triton.jit(do_not_specialize=["T", "H", "n_chunks", "chunks_per_seg", "n_segs", "rev", "col_h", "col_w"])
def _summary_kernel(k, v, g, summaries, log_decays,
                    T, H, n_chunks, chunks_per_seg, n_segs, rev, col_h, col_w, gate_norm,
                    K: tl.constexpr, V: tl.constexpr, C: tl.constexpr,
                    RAW_GATE: tl.constexpr, FP32_DOT: tl.constexpr):
    """State built by one segment alone (from zero), and its total log-decay."""
    seg = tl.program_id(0)
    bh = tl.program_id(1)
    b, h = bh // H, bh % H
    state = tl.zeros([K, V], dtype=tl.float32)
    total = tl.zeros([K], dtype=tl.float32)
    first = seg * chunks_per_seg
    for n in range(first, tl.minimum(first + chunks_per_seg, n_chunks)):
        row, valid = scan_rows(b, h, n, T, H, rev, col_h, col_w, C)
        k_c = load_tile(k, row, valid, K)
        v_c = load_tile(v, row, valid, V)
        g_c = load_gate(g, row, valid, K, RAW_GATE, gate_norm)
        b_last = tl.sum(g_c, axis=0)
        state = tl.exp(b_last)[:, None] * state + mm_fine(tl.trans(k_c * decay_to_end(g_c)), v_c, FP32_DOT)
        total += b_last
    index = bh * n_segs + seg
    tl.store(state_ptrs(summaries, index, K, V), state)
    tl.store(log_decays + index.to(tl.int64) * K + tl.arange(0, K), total)


@triton.jit(do_not_specialize=["T", "H", "n_chunks", "chunks_per_seg", "n_segs", "rev", "col_h", "col_w"])
def _forward_kernel(q, k, v, g, out, states, seg_states, z, w, o_pre, exact_chunks,
                    T, H, n_chunks, chunks_per_seg, n_segs, rev, col_h, col_w, scale, gate_norm, eps,
                    K: tl.constexpr, V: tl.constexpr, C: tl.constexpr,
                    RAW_GATE: tl.constexpr, NORM: tl.constexpr, SAVE: tl.constexpr,
                    SEGMENTED: tl.constexpr, FP32_DOT: tl.constexpr):
    seg = tl.program_id(0)
    bh = tl.program_id(1)
    b, h = bh // H, bh % H
    if SEGMENTED:
        state = tl.load(state_ptrs(seg_states, bh * n_segs + seg, K, V))
    else:
        state = tl.zeros([K, V], dtype=tl.float32)
    if NORM:
        w_v = tl.load(w + tl.arange(0, V)).to(tl.float32)
    first = seg * chunks_per_seg
    for n in range(first, tl.minimum(first + chunks_per_seg, n_chunks)):
        row, valid = scan_rows(b, h, n, T, H, rev, col_h, col_w, C)
        q_c = load_tile(q, row, valid, K)
        k_c = load_tile(k, row, valid, K)
        v_c = load_tile(v, row, valid, V)
        g_c = load_gate(g, row, valid, K, RAW_GATE, gate_norm)
        if SAVE:
            tl.store(state_ptrs(states, bh * n_chunks + n, K, V), state)
        b_c = tl.cumsum(g_c, axis=0)
        b_last = tl.sum(g_c, axis=0)
        exact = tl.min(b_last, axis=0) <= FAST_PATH_MIN_DECAY
        tl.store(exact_chunks + bh * n_chunks + n, exact.to(tl.int8))
        if exact:  # triton_exact adds the intra-chunk part
            o_c = tl.zeros([C, V], dtype=tl.float32)
            e_from_start = tl.exp(b_c)
            e_to_end = decay_to_end(g_c)
        else:
            o_c, e_from_start, e_to_end = _intra_fast(q_c, k_c, v_c, b_c, b_last, C, FP32_DOT)
        o_c = scale * (o_c + mm(q_c * e_from_start, state, FP32_DOT))
        state = tl.exp(b_last)[:, None] * state + mm_fine(tl.trans(k_c * e_to_end), v_c, FP32_DOT)
        if NORM:
            if SAVE:
                store_tile(o_pre, row, valid, o_c, V)
            normed = gated_rms_norm(o_c, load_tile(z, row, valid, V).to(tl.float32), w_v, eps, V)
            o_c = tl.where(exact, o_c, normed)  # an exact chunk's norm waits for its full output
        store_tile(out, row, valid, o_c, V)


def exact_dots(x: torch.Tensor) -> bool:
    """float32 inputs (and the CPU interpreter) multiply in exact float32; others in bf16 / tf32."""
    return x.dtype == torch.float32 or x.device.type != "cuda"


def segment_summaries(k, v, g, p, order_args, gate_norm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-segment state sums [BH, n_segs, K, V] and log-decays [BH, n_segs, K] (last segment unused)."""
    B, T, H, K = k.shape
    V = v.shape[-1]
    summaries = k.new_empty(B * H, p.n_segments, K, V, dtype=torch.float32)
    log_decays = k.new_empty(B * H, p.n_segments, K, dtype=torch.float32)
    _summary_kernel[(p.n_segments - 1, B * H)](
        k, v, g, summaries, log_decays, T, H, p.n_chunks, p.chunks_per_segment, p.n_segments,
        *order_args, gate_norm, K=K, V=V, C=CHUNK, RAW_GATE=gate_norm > 0, FP32_DOT=exact_dots(k),
        **SUMMARY_LAUNCH)
    return summaries, log_decays


def forward(q, k, v, g, scale: float, order: ScanOrder, height: int, width: int, *,
            gate_norm: float = 0.0, output_gate=None, norm_weight=None, norm_eps: float = 1e-6,
            save: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GLA forward over contiguous [B, T, H, D] tensors in scan order `order`.

    gate_norm > 0: g holds raw gate logits x and the gates are logsigmoid(x) / gate_norm.
    output_gate ([B, T, H, V]) with norm_weight ([V]): returns RMSNorm(o) * weight * silu(gate)
    per head instead of o. save: also return the state entering every chunk
    ([B*H, n_chunks, K, V] float32) and, with the norm, o itself, for `backward`.
    Returns (out, states, o_pre); the last two are empty unless saved.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    p = plan(B * H, T, q.device)
    args = order_arguments(order, height, width)
    norm = output_gate is not None
    out = torch.empty_like(v)
    states = q.new_empty((B * H, p.n_chunks, K, V) if save else (0,), dtype=torch.float32)
    o_pre = torch.empty_like(v) if save and norm else v.new_empty(0)
    seg_states = states
    if p.n_segments > 1:
        seg_states = scan_segments(*segment_summaries(k, v, g, p, args, gate_norm), reverse=False)
    exact_chunks = q.new_empty(B * H * p.n_chunks, dtype=torch.int8)
    extras = (output_gate, norm_weight) if norm else (out, out)
    _forward_kernel[(p.n_segments, B * H)](
        q, k, v, g, out, states, seg_states, *extras, o_pre, exact_chunks,
        T, H, p.n_chunks, p.chunks_per_segment, p.n_segments, *args, scale, gate_norm, norm_eps,
        K=K, V=V, C=CHUNK, RAW_GATE=gate_norm > 0, NORM=norm, SAVE=save,
        SEGMENTED=p.n_segments > 1, FP32_DOT=exact_dots(q), **FORWARD_LAUNCH)
    triton_exact.add_forward(q, k, v, g, out, exact_chunks, scale, args, gate_norm, output_gate, norm_weight,
                             norm_eps, o_pre, exact_dots(q))
    return out, states, o_pre
