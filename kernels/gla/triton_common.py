"""Device-side building blocks shared by the Triton GLA kernels.

Token tiles: a chunk is CHUNK consecutive *scan* steps; `scan_rows` maps them to rows of the
raster-ordered [B, T, H, D] tensors by index arithmetic, so the kernels read every scan order
in place (decision 1 of DESIGN.md). Everything is computed in float32; on the GPU the matrix
products take bfloat16 (`mm`) or tf32 (`mm_fine`) operands, exact float32 for float32 inputs
and in the interpreter.
"""
from __future__ import annotations

import triton
import triton.language as tl

# Rows of one chunk; the inter-chunk state is saved once per chunk for the backward.
CHUNK = 64
# Diagonal sub-blocks of the exact (strong-decay) path.
SUB_BLOCK = 16
# The fast path factors exp(b_t - b_s) around the chunk's mid-point, so its factors reach
# exp(+-|b_last| / 2) (e^60 ~ 1e26: far inside float32/bfloat16 range, for any sane |q|, |k|);
# a chunk whose cumulative decay in some channel is below this takes the exact path instead.
FAST_PATH_MIN_DECAY = tl.constexpr(-120.0)


@triton.jit
def scan_rows(b, h, n, T, H, rev, col_h, col_w, ROWS: tl.constexpr):
    """Flat row index ((b*T + token)*H + h, int64) of scan steps n*ROWS .. n*ROWS+ROWS-1, and
    which of them exist. Row orders pass col_h=1, col_w=T; column orders the grid's (H, W)."""
    step = n * ROWS + tl.arange(0, ROWS)
    valid = step < T
    s = tl.where(rev != 0, T - 1 - step, step)
    s = tl.where(valid, s, 0)
    token = (s % col_h) * col_w + s // col_h
    return (b.to(tl.int64) * T + token) * H + h, valid


@triton.jit
def load_tile(ptr, row, valid, D: tl.constexpr):
    """[ROWS, D] tile of a [B, T, H, D] tensor in its own dtype (16-bit tiles take half the
    registers; arithmetic with float32 promotes them); rows past the end read as 0."""
    cols = tl.arange(0, D)
    return tl.load(ptr + row[:, None] * D + cols[None, :], mask=valid[:, None], other=0.0)


@triton.jit
def store_tile(ptr, row, valid, x, D: tl.constexpr):
    cols = tl.arange(0, D)
    tl.store(ptr + row[:, None] * D + cols[None, :], x.to(ptr.dtype.element_ty), mask=valid[:, None])


@triton.jit
def load_gate(g, row, valid, K: tl.constexpr, RAW_GATE: tl.constexpr, gate_norm):
    """Log-space gates: loaded as they are, or logsigmoid(x) / gate_norm of raw logits x."""
    x = load_tile(g, row, valid, K).to(tl.float32)
    if RAW_GATE:
        x = (tl.minimum(x, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(x)))) / gate_norm
        x = tl.where(valid[:, None], x, 0.0)
    return x


@triton.jit
def gate_input_grad(dg, g, row, valid, K: tl.constexpr, RAW_GATE: tl.constexpr, gate_norm):
    """Chain rule through `load_gate`: d logsigmoid(x)/dx = sigmoid(-x)."""
    if RAW_GATE:
        x = load_tile(g, row, valid, K).to(tl.float32)
        dg = dg / ((1.0 + tl.exp(x)) * gate_norm)
    return dg


@triton.jit
def state_ptrs(base, index, K: tl.constexpr, V: tl.constexpr):
    """Pointers to the [K, V] float32 state number `index` of a contiguous state array."""
    return base + index.to(tl.int64) * (K * V) + tl.arange(0, K)[:, None] * V + tl.arange(0, V)[None, :]


@triton.jit
def mm(a, b, FP32_DOT: tl.constexpr):
    """a @ b with float32 accumulation: exact float32 if FP32_DOT, else bfloat16 operands."""
    if FP32_DOT:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))


@triton.jit
def mm_fine(a, b, FP32_DOT: tl.constexpr):
    """`mm` with tf32 instead of bfloat16 operands, for the products whose rounding reaches the
    gate gradient: it is a small difference (q dq - k dk) of large terms, ~1e-2 off with
    bfloat16 everywhere, ~3e-3 with these in tf32 (the states and dq, dk)."""
    if FP32_DOT:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="tf32")


@triton.jit
def block_selector(i, ROWS: tl.constexpr, SUB: tl.constexpr):
    """[ROWS, SUB] one-hot float32 matrix picking rows i*SUB .. i*SUB+SUB-1: exact row
    extraction (sel^T @ x) and placement (sel @ y) of register tiles through float32 dots."""
    r = tl.arange(0, ROWS)[:, None]
    c = tl.arange(0, SUB)[None, :]
    return (r == i * SUB + c).to(tl.float32)


@triton.jit
def rows_of(sel, x):
    return tl.dot(tl.trans(sel), x.to(tl.float32), input_precision="ieee")


@triton.jit
def place_rows(sel, y):
    return tl.dot(sel, y, input_precision="ieee")


@triton.jit
def decays_into_row(g_i, t, SUB: tl.constexpr):
    """exp(sum_{s<u<=t} g_u) for the rows s <= t of a sub-block with gates g_i [SUB, K], else 0."""
    upto = (tl.arange(0, SUB) <= t)[:, None]
    g_upto = tl.where(upto, g_i, 0.0)
    return tl.where(upto, tl.exp(tl.cumsum(g_upto, axis=0, reverse=True) - g_upto), 0.0)


@triton.jit
def decays_across_block_start(g, g_i, i, C: tl.constexpr, SUB: tl.constexpr):
    """Around the start of sub-block i (row i*SUB) of a chunk with gates g [C, K] (g_i: the block's):
    after[t]  = exp(sum_{i*SUB <= u <= t} g_u) for the block's rows          [SUB, K]
    before[s] = exp(sum_{s<u<i*SUB} g_u) for chunk rows s < i*SUB, else 0     [C, K]
    Like `decays_into_row`, sums of the gates themselves, never differences of long cumulative
    sums, so the strongly decayed neighbours that dominate the gate gradient stay accurate."""
    after = tl.exp(tl.cumsum(g_i, axis=0))
    earlier = (tl.arange(0, C) < i * SUB)[:, None]
    g_before = tl.where(earlier, g, 0.0)
    before = tl.where(earlier, tl.exp(tl.cumsum(g_before, axis=0, reverse=True) - g_before), 0.0)
    return after, before


@triton.jit
def row_of(x, at_t):
    """Row t of a register tile, with at_t = (rows == t)[:, None]."""
    return tl.sum(tl.where(at_t, x, 0.0), axis=0)


@triton.jit
def decay_to_end(g):
    """exp(sum_{u>t} g_u) over a chunk's rows, summed from the end for accuracy near it."""
    return tl.exp(tl.cumsum(g, axis=0, reverse=True) - g)


@triton.jit
def gated_rms_norm(o, z, w, eps, V: tl.constexpr):
    """Per-row RMSNorm(o) * w * silu(z) of [ROWS, V] float32 tiles, w: [V]."""
    r = 1.0 / tl.sqrt(tl.sum(o * o, axis=1) / V + eps)
    return o * r[:, None] * w[None, :] * (z * tl.sigmoid(z))


@triton.jit
def gated_rms_norm_grad(d_out, o, z, w, eps, V: tl.constexpr):
    """Gradients of `gated_rms_norm` for o and z ([ROWS, V]) and w's share from these rows ([V])."""
    r = 1.0 / tl.sqrt(tl.sum(o * o, axis=1) / V + eps)
    y = o * r[:, None]
    sig = tl.sigmoid(z)
    swish = z * sig
    dy = d_out * w[None, :] * swish
    do = r[:, None] * (dy - y * (tl.sum(dy * y, axis=1) / V)[:, None])
    dz = d_out * y * w[None, :] * sig * (1.0 + z * (1.0 - sig))
    dw = tl.sum(d_out * y * swish, axis=0)
    return do, dz, dw


@triton.jit
def norm_weight(w, V: tl.constexpr, NORM: tl.constexpr):
    """The fused norm's weight [V] as float32 (zeros, unused, without the norm)."""
    if NORM:
        w_v = tl.load(w + tl.arange(0, V)).to(tl.float32)
    else:
        w_v = tl.zeros([V], dtype=tl.float32)
    return w_v


@triton.jit
def output_grad(do, z, o_pre, row, valid, w_v, eps, V: tl.constexpr, NORM: tl.constexpr):
    """dL/do of the GLA output; with the fused norm, `do` holds dL/d(out) and the norm's
    gradients for its gate and weight come along (zeros without it)."""
    d_out = load_tile(do, row, valid, V)
    if NORM:
        o = load_tile(o_pre, row, valid, V).to(tl.float32)
        z_c = load_tile(z, row, valid, V).to(tl.float32)
        d_o, dz, dw = gated_rms_norm_grad(d_out.to(tl.float32), o, z_c, w_v, eps, V)
    else:
        d_o, dz, dw = d_out, d_out, tl.zeros([V], dtype=tl.float32)
    return d_o, dz, dw
