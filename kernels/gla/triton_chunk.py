"""Per-chunk math shared by the fast kernels (triton_forward, triton_backward) and the exact ones
(triton_exact): everything a chunk needs besides its intra-chunk scores and their adjoints."""
from __future__ import annotations

import triton
import triton.language as tl

from .triton_tiles import gate_input_grad, gated_rms_norm, load_tile, mm, store_tile


@triton.jit
def chunk_output(q, v, A, e_from_start, S, scale, EXACT: tl.constexpr):
    """o ([C, V] float32) from the chunk's scores A and the state S entering it."""
    return scale * (mm(A, v, EXACT) + mm(q * e_from_start, S, EXACT))


@triton.jit
def store_output(o, z, z_stride, w, out, o_pre, row, h, H, valid, eps, V: tl.constexpr, NORM: tl.constexpr,
                 SAVE: tl.constexpr):
    """out = o, or the gated RMSNorm of o (keeping o itself for the backward with SAVE)."""
    if NORM:
        if SAVE:
            store_tile(o_pre, H * V, row, h, valid, o, V)
        o = gated_rms_norm(o, load_tile(z, z_stride, row, h, valid, V), tl.load(w + tl.arange(0, V)).to(tl.float32),
                           eps, V)
    store_tile(out, H * V, row, h, valid, o, V)


# The backward's gradients, in steps that the kernels call as soon as each input is ready:
# results leave the registers early, and fewer values are live at once (see triton_backward
# for the formulas). dq and dk arrive as their intra-chunk parts without the t == s terms, which
# take `diagonal`. _grad_qkg_kernel calls grad_k_from_state before computing dk's intra-chunk part:
# the order in which it fits 255 registers without spills. The gradients are contiguous (row
# stride H*D).


@triton.jit
def store_dv(A, k, do, e_to_end, dS, scale, dv_ptr, row, h, H, valid, V: tl.constexpr, EXACT: tl.constexpr):
    store_tile(dv_ptr, H * V, row, h, valid, scale * mm(tl.trans(A), do, EXACT) + mm(k * e_to_end, dS, EXACT), V)


@triton.jit
def diagonal_factor(do, v, scale):
    """The t == s factor scale * do_t . v_t of dq and dk ([C, 1])."""
    return scale * tl.sum(do.to(tl.float32) * v.to(tl.float32), axis=1)[:, None]


@triton.jit
def store_dq(dq, diagonal, q, k, do, e_from_start, S, scale, dq_ptr, row, h, H, valid, K: tl.constexpr,
             EXACT: tl.constexpr):
    """Adds the state's part to dq and stores it; returns q dq, the first half of the gate gradient's dG."""
    dq += scale * mm(do, tl.trans(S), EXACT) * e_from_start
    store_tile(dq_ptr, H * K, row, h, valid, dq + diagonal * k, K)
    return q * dq


@triton.jit
def grad_k_from_state(v, dS, S, b_last, e_to_end, EXACT: tl.constexpr):
    """dk's part from the gradient leaving the chunk, and e^{b_last} sum_V S * dS: the gate
    gradient's share of everything after the chunk that does not pass through its own Delta."""
    across = tl.exp(b_last) * tl.sum(S * dS, axis=1)
    return mm(v, tl.trans(dS), EXACT) * e_to_end, across


@triton.jit
def store_dk_dg(dk, dk_inter, across, q_dq, diagonal, q, k, g, g_stride, dk_ptr, dg_ptr, row, h, H, valid,
                gate_norm, K: tl.constexpr, RAW_GATE: tl.constexpr):
    """Stores dk (dk_inter included) and dg."""
    store_tile(dk_ptr, H * K, row, h, valid, dk + diagonal * q, K)
    # The t == s terms of dq and dk cancel exactly in dG = q dq - k dk: left out of both. Everything
    # after the chunk: sum_V S_out * dS, with sum_V Delta * dS = sum_s k_s * dk_inter_s.
    beyond = across + tl.sum(k * dk_inter, axis=0)
    dg = tl.cumsum(q_dq - k * dk, axis=0, reverse=True) + beyond[None, :]
    store_tile(dg_ptr, H * K, row, h, valid, gate_input_grad(dg, g, g_stride, row, h, valid, K, RAW_GATE, gate_norm),
               K)
