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
def store_output(o, z, w, out, o_pre, row, valid, eps, V: tl.constexpr, NORM: tl.constexpr, SAVE: tl.constexpr):
    """out = o, or the gated RMSNorm of o (keeping o itself for the backward with SAVE)."""
    if NORM:
        if SAVE:
            store_tile(o_pre, row, valid, o, V)
        o = gated_rms_norm(o, load_tile(z, row, valid, V), tl.load(w + tl.arange(0, V)).to(tl.float32), eps, V)
    store_tile(out, row, valid, o, V)


# The backward's stores, in three steps that the kernels call as soon as each input is ready:
# results leave the registers early, and fewer values are live at once (see triton_backward
# for the formulas). dq and dk arrive as their intra-chunk parts without the t == s terms.
# triton_backward's _grad_qkg_kernel does store_dq's and store_dk_dg's math inline, in the order
# that fits its registers; triton_exact and _grad_v_kernel call these.


@triton.jit
def store_dv(A, k, do, e_to_end, dS, scale, dv_ptr, row, valid, V: tl.constexpr, EXACT: tl.constexpr):
    store_tile(dv_ptr, row, valid, scale * mm(tl.trans(A), do, EXACT) + mm(k * e_to_end, dS, EXACT), V)


@triton.jit
def store_dq(dq, q, k, v, do, e_from_start, S, scale, dq_ptr, row, valid, K: tl.constexpr, EXACT: tl.constexpr):
    """Returns q dq, the first half of the gate gradient's dG, and the t == s factor do_t . v_t."""
    dq += scale * mm(do, tl.trans(S), EXACT) * e_from_start
    diagonal = scale * tl.sum(do.to(tl.float32) * v.to(tl.float32), axis=1)[:, None]
    store_tile(dq_ptr, row, valid, dq + diagonal * k, K)
    return q * dq, diagonal


@triton.jit
def store_dk_dg(dk, d_gate, diagonal, q, k, v, g, b_last, e_to_end, S, dS, dk_ptr, dg_ptr, row, valid, gate_norm,
                K: tl.constexpr, RAW_GATE: tl.constexpr, EXACT: tl.constexpr):
    dk_inter = mm(v, tl.trans(dS), EXACT) * e_to_end
    dk += dk_inter
    store_tile(dk_ptr, row, valid, dk + diagonal * q, K)
    # The t == s terms of dq and dk cancel exactly in dG = q dq - k dk: left out of both.
    d_gate -= k * dk
    # Everything after the chunk: sum_V S_out * dS, with sum_V Delta * dS = sum_s k_s * dk_inter_s.
    beyond = tl.exp(b_last) * tl.sum(S * dS, axis=1) + tl.sum(k * dk_inter, axis=0)
    dg = tl.cumsum(d_gate, axis=0, reverse=True) + beyond[None, :]
    store_tile(dg_ptr, row, valid, gate_input_grad(dg, g, row, valid, K, RAW_GATE, gate_norm), K)
