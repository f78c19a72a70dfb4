"""Triton GLA forward: chunk summaries, the state scan, then every chunk's output in parallel.

Per chunk of C scan steps with in-chunk cumulative log-gates b (b_last: over the whole chunk),
the state S entering it ([K, V] float32) and its intra-chunk scores A (triton_intra):
    o_t   = scale * [ sum_{s<=t} A_ts v_s + (q_t e^{b_t}) S ]
    Delta = sum_s (k_s e^{b_last - b_s})^T v_s            (the state the chunk builds from zero)
1. _summary_kernel, a program per chunk: Delta and b_last.
2. triton_scan: S for every chunk from those.
3. _output_kernel, a program per chunk: o, then the gated RMSNorm; writes out (and o for the
   backward). Chunks that decay too strongly for its fast intra-chunk path are flagged instead
   and completed by triton_exact.
Sequences of at most SHORT_FORWARD chunks take one launch instead of the three:
_short_forward_kernel, a program per sequence-head, walks its chunks in scan order with S in
registers, doing per chunk what the three do (then triton_exact as above).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import triton_exact
from .triton_chunk import chunk_output, store_output
from .triton_intra import fast_factors, fast_scores, needs_exact
from .triton_scan import scan_states
from .triton_tiles import CHUNK, chunk_program, load_gate, load_tile, mm, scan_rows, state_ptrs, token_strides

# Launch settings at DiG's head dims (key 32, value 64): registers per thread without spills,
# and programs per multiprocessor, from bench/gla_resources.py (sm_90).
SUMMARY_LAUNCH = {"num_warps": 4, "num_stages": 1}  # 72 registers, up to 7 programs
OUTPUT_LAUNCH = {"num_warps": 4, "num_stages": 1}  # 128 registers, 4 programs
# At most this many chunks (T <= 256: DiG's 256 px step has 4): one program per sequence-head for
# the whole forward, one launch instead of three, no state through memory between them. Measured
# on an H200 (kernels/gla/README.md): 17-23% faster at B = 256; at DiG-XL/2's batch of 32 its 576
# programs fill the GPU only 2.2 waves deep and the step's kernel time is unchanged.
SHORT_FORWARD = 4
SHORT_FORWARD_LAUNCH = {"num_warps": 4, "num_stages": 1}  # 255 registers (plain: 247), 2 programs
# Sizes that vary per call: no recompiling for each (Triton would specialise on divisibility).
RUNTIME_SIZES = ["T", "H", "rev", "col_h", "col_w"]


@triton.jit
def _contribution(k, v, g, EXACT: tl.constexpr):
    """Delta ([K, V] float32): the state a chunk with log-gates g builds from zero."""
    to_end = tl.exp(tl.cumsum(g, axis=0, reverse=True) - g)  # e^{b_last - b}, summed from the end
    return mm(tl.trans(k * to_end), v, EXACT)


@triton.jit(do_not_specialize=RUNTIME_SIZES)
def _summary_kernel(k, v, g, k_stride, v_stride, g_stride, contributions, log_decays, T, H, rev, col_h, col_w,
                    gate_norm, K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, RAW_GATE: tl.constexpr,
                    EXACT: tl.constexpr):
    n, bh, index = chunk_program(T, C)
    h = bh % H
    row, valid = scan_rows(bh // H, n, T, rev, col_h, col_w, C)
    k_c = load_tile(k, k_stride, row, h, valid, K)
    v_c = load_tile(v, v_stride, row, h, valid, V)
    g_c = load_gate(g, g_stride, row, h, valid, K, RAW_GATE, gate_norm)
    tl.store(state_ptrs(contributions, index, K, V), _contribution(k_c, v_c, g_c, EXACT))
    tl.store(log_decays + index.to(tl.int64) * K + tl.arange(0, K), tl.sum(g_c, axis=0))


@triton.jit(do_not_specialize=RUNTIME_SIZES)
def _output_kernel(q, k, v, g, z, q_stride, k_stride, v_stride, g_stride, z_stride, w, states, out, o_pre,
                   exact_flags, T, H, rev, col_h, col_w, scale, gate_norm, eps, K: tl.constexpr, V: tl.constexpr,
                   C: tl.constexpr, RAW_GATE: tl.constexpr, NORM: tl.constexpr, SAVE: tl.constexpr,
                   EXACT: tl.constexpr):
    n, bh, index = chunk_program(T, C)
    h = bh % H
    row, valid = scan_rows(bh // H, n, T, rev, col_h, col_w, C)
    g_c = load_gate(g, g_stride, row, h, valid, K, RAW_GATE, gate_norm)
    b = tl.cumsum(g_c, axis=0)
    b_last = tl.sum(g_c, axis=0)
    flagged = needs_exact(b_last)
    tl.store(exact_flags + index, flagged.to(tl.int8))
    if not flagged:
        q_c = load_tile(q, q_stride, row, h, valid, K)
        k_c = load_tile(k, k_stride, row, h, valid, K)
        v_c = load_tile(v, v_stride, row, h, valid, V)
        e_from_start = tl.exp(b)
        e_q, e_k = fast_factors(e_from_start, tl.exp(b_last[None, :] - b), b_last)
        A = fast_scores(q_c, k_c, e_q, e_k, C, EXACT)
        o = chunk_output(q_c, v_c, A, e_from_start, tl.load(state_ptrs(states, index, K, V)), scale, EXACT)
        store_output(o, z, z_stride, w, out, o_pre, row, h, H, valid, eps, V, NORM, SAVE)


@triton.jit(do_not_specialize=RUNTIME_SIZES)
def _short_forward_kernel(q, k, v, g, z, q_stride, k_stride, v_stride, g_stride, z_stride, w, states, out, o_pre,
                          exact_flags, T, H, rev, col_h, col_w, scale, gate_norm, eps, K: tl.constexpr,
                          V: tl.constexpr, C: tl.constexpr, RAW_GATE: tl.constexpr, NORM: tl.constexpr,
                          SAVE: tl.constexpr, EXACT: tl.constexpr):
    """All three launches for one sequence-head: per chunk, the output kernel's work with S from
    registers (storing S, the state entering the chunk, for the backward and triton_exact), then
    S = e^{b_last} S + Delta as the summary and the scan compute it."""
    bh = tl.program_id(0)
    h = bh % H
    n_chunks = tl.cdiv(T, C)
    S = tl.zeros([K, V], dtype=tl.float32)
    for n in range(0, n_chunks):
        index = bh * n_chunks + n
        row, valid = scan_rows(bh // H, n, T, rev, col_h, col_w, C)
        g_c = load_gate(g, g_stride, row, h, valid, K, RAW_GATE, gate_norm)
        b = tl.cumsum(g_c, axis=0)
        b_last = tl.sum(g_c, axis=0)
        tl.store(state_ptrs(states, index, K, V), S)
        flagged = needs_exact(b_last)
        tl.store(exact_flags + index, flagged.to(tl.int8))
        k_c = load_tile(k, k_stride, row, h, valid, K)
        v_c = load_tile(v, v_stride, row, h, valid, V)
        if not flagged:
            q_c = load_tile(q, q_stride, row, h, valid, K)
            e_from_start = tl.exp(b)
            e_q, e_k = fast_factors(e_from_start, tl.exp(b_last[None, :] - b), b_last)
            A = fast_scores(q_c, k_c, e_q, e_k, C, EXACT)
            o = chunk_output(q_c, v_c, A, e_from_start, S, scale, EXACT)
            store_output(o, z, z_stride, w, out, o_pre, row, h, H, valid, eps, V, NORM, SAVE)
        S = tl.exp(b_last)[:, None] * S + _contribution(k_c, v_c, g_c, EXACT)


def flags(q: torch.Tensor, v: torch.Tensor, gate_norm: float) -> dict:
    """Compile-time arguments shared by the kernels; float32 inputs get exact float32 products."""
    return {"K": q.shape[-1], "V": v.shape[-1], "C": CHUNK, "RAW_GATE": gate_norm > 0,
            "EXACT": q.dtype == torch.float32}


def forward(q, k, v, g, output_gate, norm_weight, scale: float, gate_norm: float, norm_eps: float,
            order_args: tuple[int, int, int], save: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, states, o_pre) of the op (see op.py) over inputs in the layout triton_backend checks
    (out and o_pre contiguous); order_args from `triton_backend.order_arguments`."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    n_chunks = triton.cdiv(T, CHUNK)
    states = q.new_empty(B * H, n_chunks, K, V, dtype=torch.float32)  # the state entering each chunk
    norm = output_gate is not None
    out = v.new_empty(v.shape)  # contiguous, whatever v's strides
    o_pre = v.new_empty(v.shape) if save and norm else v.new_empty(0)
    exact_flags = q.new_empty(B * H, n_chunks, dtype=torch.int8)
    # The arguments _output_kernel and _short_forward_kernel share.
    output_args = (q, k, v, g, output_gate, *token_strides(q, k, v, g, output_gate), norm_weight, states, out, o_pre,
                   exact_flags, T, H, *order_args, scale, gate_norm, norm_eps)
    output_flags = {"NORM": norm, "SAVE": save and norm, **flags(q, v, gate_norm)}
    if n_chunks <= SHORT_FORWARD:
        _short_forward_kernel[(B * H,)](*output_args, **output_flags, **SHORT_FORWARD_LAUNCH)
    else:
        grid = (B * H * n_chunks,)  # one axis: triton_tiles.chunk_program
        log_decays = q.new_empty(B * H, n_chunks, K, dtype=torch.float32)
        _summary_kernel[grid](k, v, g, *token_strides(k, v, g), states, log_decays, T, H, *order_args, gate_norm,
                              **flags(q, v, gate_norm), **SUMMARY_LAUNCH)  # states: first each chunk's Delta
        scan_states(states, log_decays, reverse=False)
        _output_kernel[grid](*output_args, **output_flags, **OUTPUT_LAUNCH)
    triton_exact.complete_forward(q, k, v, g, output_gate, norm_weight, states, out, o_pre, exact_flags, scale,
                                  gate_norm, norm_eps, order_args)
    return out, states, o_pre
