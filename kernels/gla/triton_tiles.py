"""Device-side building blocks of the Triton GLA kernels: chunk tiles read in scan order, gates,
matrix products at the precision each one needs, and the gated RMSNorm.

A chunk is CHUNK consecutive *scan* steps; `scan_rows` maps them to rows (tokens) of the
raster-ordered [B, T, H, D] tensors by index arithmetic, so every scan order is read in place.
Each tensor is B*T rows of packed heads with a row stride of its own: element (b, t, h, d) at
(b*T + t) * stride + h*D + d (`tile_ptrs`). So the inputs can be strided views, such as column
slices of one projection's output; what the kernels write is contiguous (row stride H*D). Tiles
live in registers as float32; matrix products take bfloat16 (`mm`) or tf32 (`mm_fine`) operands
with float32 accumulation on the GPU, and exact float32 ones for float32 inputs.
"""
from __future__ import annotations

import os

import triton
import triton.language as tl

# Scan steps per chunk: the side of the intra-chunk score tile, and the tokens per stored state.
CHUNK = 64
# The CPU interpreter's own bfloat16 truncates and its bfloat16 arithmetic is wrong, so there
# the 16-bit and tf32 products are emulated: operands rounded as the GPU rounds them, then
# multiplied in float32. Read when the kernels are defined (the tests set it first).
INTERPRET = tl.constexpr(os.environ.get("TRITON_INTERPRET") == "1")


@triton.jit
def chunk_program(T, C: tl.constexpr):
    """(chunk n, sequence-head bh, flat index bh * N + n) of this program of a per-chunk kernel.
    The grid has one axis of B*H*N programs, chunks fastest: a second axis would hold at most
    65,535 programs, which B*H passes at large micro-batches (3,641 DiG-XL/2 images)."""
    index = tl.program_id(0)
    n_chunks = tl.cdiv(T, C)
    return index % n_chunks, index // n_chunks, index


@triton.jit
def scan_rows(b, n, T, rev, col_h, col_w, C: tl.constexpr):
    """Row (flat token index b*T + token, int64) of scan steps n*C .. n*C+C-1 of sequence b, and
    which of them exist. Row orders pass col_h=1, col_w=T; column orders the grid's (height, width)."""
    step = n * C + tl.arange(0, C)
    valid = step < T
    s = tl.where(rev != 0, T - 1 - step, step)
    s = tl.where(valid, s, 0)
    token = (s % col_h) * col_w + s // col_h
    return b.to(tl.int64) * T + token, valid


@triton.jit
def tile_ptrs(ptr, stride, row, h, D: tl.constexpr):
    """Pointers to head h's [C, D] tile of the rows `row` of a tensor with row stride `stride`."""
    return ptr + row[:, None] * stride + h * D + tl.arange(0, D)[None, :]


def token_strides(*xs) -> tuple[int, ...]:
    """The row stride of each input a kernel reads, for `tile_ptrs`: dim 1's of a [B, T, H, D]
    tensor in the layout triton_backend checks; 0 for an absent one."""
    return tuple(0 if x is None else x.stride(1) for x in xs)


@triton.jit
def load_tile(ptr, stride, row, h, valid, D: tl.constexpr):
    """[C, D] tile of head h of a [B, T, H, D] tensor; rows past the end read as 0."""
    x = tl.load(tile_ptrs(ptr, stride, row, h, D), mask=valid[:, None], other=0.0)
    if INTERPRET:
        x = x.to(tl.float32)
    return x


@triton.jit
def store_tile(ptr, stride, row, h, valid, x, D: tl.constexpr):
    tl.store(tile_ptrs(ptr, stride, row, h, D), x.to(ptr.dtype.element_ty), mask=valid[:, None])


@triton.jit
def state_ptrs(base, index, K: tl.constexpr, V: tl.constexpr):
    """Pointers to the [K, V] float32 state number `index` of a contiguous state array."""
    return base + tl.cast(index, tl.int64) * (K * V) + tl.arange(0, K)[:, None] * V + tl.arange(0, V)[None, :]


@triton.jit
def load_gate(g, stride, row, h, valid, K: tl.constexpr, RAW_GATE: tl.constexpr, gate_norm):
    """Log-space gates of a chunk: loaded as they are, or logsigmoid(x) / gate_norm of raw logits x."""
    x = load_tile(g, stride, row, h, valid, K).to(tl.float32)
    if RAW_GATE:
        x = tl.where(valid[:, None], (tl.minimum(x, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(x)))) / gate_norm, 0.0)
    return x


@triton.jit
def gate_input_grad(dg, g, stride, row, h, valid, K: tl.constexpr, RAW_GATE: tl.constexpr, gate_norm):
    """Chain rule through `load_gate`: d logsigmoid(x)/dx = sigmoid(-x) = 1 / (1 + e^x)."""
    if RAW_GATE:
        dg = dg / ((1.0 + tl.exp(load_tile(g, stride, row, h, valid, K).to(tl.float32))) * gate_norm)
    return dg


@triton.jit
def _round_bf16(x):
    """x rounded to bfloat16 (to nearest, ties to even, as the GPU converts), kept in float32."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _round_tf32(x):
    """x rounded to tf32's 10 mantissa bits (to nearest, ties to even), kept in float32. The
    tensor cores would truncate: the rounding halves the error and removes its bias."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0xFFF + ((bits >> 13) & 1)) >> 13 << 13
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def mm(a, b, EXACT: tl.constexpr):
    """a @ b with float32 accumulation: bfloat16 operands (exact float32 if EXACT)."""
    if EXACT:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    elif INTERPRET:
        return tl.dot(_round_bf16(a.to(tl.float32)), _round_bf16(b.to(tl.float32)), input_precision="ieee")
    else:
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))


@triton.jit
def mm_fine(a, b, EXACT: tl.constexpr):
    """`mm` with tf32 operands, for the intra-chunk scores and their adjoints dq, dk. The gate
    gradient is q dq - k dk, in which most intra-chunk terms cancel pairwise; with bfloat16
    operands their rounding would not (2-3x the error against float64), and bfloat16 scores
    would put most of the output's error budget on DiG's slowly decaying chunks."""
    a = a.to(tl.float32)
    b = b.to(tl.float32)
    if EXACT:
        return tl.dot(a, b, input_precision="ieee")
    elif INTERPRET:
        return tl.dot(_round_tf32(a), _round_tf32(b), input_precision="ieee")
    else:
        return tl.dot(_round_tf32(a), _round_tf32(b), input_precision="tf32")


@triton.jit
def gated_rms_norm(o, z, w, eps, V: tl.constexpr):
    """Per-row RMSNorm(o) * w * silu(z) of [C, V] tiles (o float32), w: [V]."""
    z = z.to(tl.float32)
    r = 1.0 / tl.sqrt(tl.sum(o * o, axis=1) / V + eps)
    return o * r[:, None] * w[None, :] * (z * tl.sigmoid(z))


@triton.jit
def gated_rms_norm_grad(d_out, o, z, w, eps, V: tl.constexpr):
    """Gradients of `gated_rms_norm` for o and z ([C, V]) and w's share from these rows ([V])."""
    d_out = d_out.to(tl.float32)
    o = o.to(tl.float32)
    z = z.to(tl.float32)
    r = 1.0 / tl.sqrt(tl.sum(o * o, axis=1) / V + eps)
    y = o * r[:, None]
    sig = tl.sigmoid(z)
    swish = z * sig
    dy = d_out * w[None, :] * swish
    do = r[:, None] * (dy - y * (tl.sum(dy * y, axis=1) / V)[:, None])
    dz = d_out * y * w[None, :] * sig * (1.0 + z * (1.0 - sig))
    dw = tl.sum(d_out * y * swish, axis=0)
    return do, dz, dw
