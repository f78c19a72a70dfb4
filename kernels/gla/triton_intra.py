"""The intra-chunk part of GLA: decayed scores between the steps of one chunk, and their adjoints.

For steps s <= t of a chunk, with in-chunk cumulative log-gates b (float32, per key channel):
    A_ts = sum_k q_tk k_sk e^{b_tk - b_sk}
    dq_t = sum_{s<t} dA_ts k_s e^{b_t - b_s},      dk_s = sum_{t>s} dA_ts q_t e^{b_t - b_s}
Fast path (the main kernels): one matrix product each, factoring e^{b_t - b_s} = e^{b_t - rho}
e^{rho - b_s} around rho = b_last / 2, the middle of the chunk's decay range, so every factor lies
within e^{+-|b_last| / 2}: well inside the bfloat16/tf32 operand range while no channel decays by
more than MAX_FAST_DECAY over the chunk. A chunk that decays more (gates below -1.25 per step on
average; DiG's logsigmoid(x)/16 gates only for logits below -20) is left to triton_exact, which
uses `exact`: row by row, the decay summed from the gates themselves, only non-positive exponents.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .triton_tiles import mm_fine

MAX_FAST_DECAY = tl.constexpr(80.0)


@triton.jit
def needs_exact(b_last):
    """Whether a chunk with total log-decays b_last ([K]) is past the fast path's range."""
    return tl.min(b_last, axis=0) < -MAX_FAST_DECAY


@triton.jit
def lower(A, C: tl.constexpr, STRICT: tl.constexpr):
    """A with the entries s > t (s >= t if STRICT) zeroed."""
    rows = tl.arange(0, C)
    if STRICT:
        keep = rows[:, None] > rows[None, :]
    else:
        keep = rows[:, None] >= rows[None, :]
    return tl.where(keep, A, 0.0)


@triton.jit
def upper(A, C: tl.constexpr):
    """A with the entries s >= t zeroed: `lower(., C, True)` of A's transpose, for operands built transposed."""
    rows = tl.arange(0, C)
    return tl.where(rows[:, None] < rows[None, :], A, 0.0)


@triton.jit
def fast_factors(e_from_start, e_to_end, b_last):
    """e^{b - rho} for queries and e^{rho - b} for keys ([C, K]), rho = b_last / 2, from
    e^{b} and e^{b_last - b}: both factors are these scaled by e^{-rho} = e^{|b_last| / 2}."""
    e_rho = tl.exp(-0.5 * b_last)[None, :]
    return e_from_start * e_rho, e_to_end * e_rho


@triton.jit
def fast_scores(q, k, e_q, e_k, C: tl.constexpr, EXACT: tl.constexpr):
    """A [C, C], unscaled, zero above the diagonal."""
    return lower(mm_fine(q * e_q, tl.trans(k * e_k), EXACT), C, False)


@triton.jit
def fast_grad_q(k, e_q, e_k, d_scores, EXACT: tl.constexpr):
    """Intra-chunk dq ([C, K]) for d_scores = dL/dA, zero on and above the diagonal (the t == s
    terms cancel in the gate gradient; the caller adds them to dq and dk)."""
    return mm_fine(d_scores, k * e_k, EXACT) * e_q


@triton.jit
def fast_grad_k(q, e_q, e_k, d_scores_t, EXACT: tl.constexpr):
    """Intra-chunk dk, as `fast_grad_q`, from the transposed d_scores (zero on and below the
    diagonal): built transposed, it needs no transpose in registers."""
    return mm_fine(d_scores_t, q * e_q, EXACT) * e_k


@triton.jit
def exact(q, k, g, d_scores, C: tl.constexpr, K: tl.constexpr, GRADS: tl.constexpr):
    """A (and with GRADS dq, dk as `fast_grads`) for any gates, one row t at a time:
    e^{b_t - b_s} = e^{sum_{s<u<=t} g_u}, summed from the gates next to t, so the strongly
    decayed neighbours that dominate the gate gradient stay accurate."""
    rows = tl.arange(0, C)
    A = tl.zeros([C, C], dtype=tl.float32)
    dq = tl.zeros([C, K], dtype=tl.float32)
    dk = tl.zeros([C, K], dtype=tl.float32)
    for t in range(C):
        at_t = rows[:, None] == t
        upto = rows[:, None] <= t
        g_upto = tl.where(upto, g, 0.0)
        decay = tl.where(upto, tl.exp(tl.cumsum(g_upto, axis=0, reverse=True) - g_upto), 0.0)  # [C(s), K]
        q_t = tl.sum(tl.where(at_t, q, 0.0), axis=0)
        k_decayed = k * decay
        A = tl.where(at_t, tl.sum(k_decayed * q_t[None, :], axis=1)[None, :], A)
        if GRADS:
            ds_t = tl.sum(tl.where(at_t, d_scores, 0.0), axis=0)
            dq = tl.where(at_t, tl.sum(ds_t[:, None] * k_decayed, axis=0)[None, :], dq)
            dk += ds_t[:, None] * decay * q_t[None, :]
    return A, dq, dk
