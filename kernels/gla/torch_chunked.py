"""Pure-PyTorch chunked GLA: the `torch` backend (CPU, tests, reference for the kernels).

Recurrence, per batch and head (gates g in log space, g <= 0):
    S_t = diag(exp g_t) S_{t-1} + k_t^T v_t,      o_t = scale * q_t S_t.
Within a chunk of C steps with in-chunk cumulative gates b_t = g_1 + ... + g_t:
    o_t = scale * [ (q_t * e^{b_t}) S_in + sum_{s<=t} <q_t, k_s * e^{b_t - b_s}> v_s ]
    S_out = e^{b_C} * S_in + sum_s (k_s * e^{b_C - b_s})^T v_s
Every exponent above is <= 0, so strong decay underflows to 0 instead of overflowing; the
in-chunk scores keep that property through sub-chunking (see _IntraChunk).
Arithmetic and results are float32 (float64 for float64 inputs); the forward also returns the
state entering every chunk, which the backward takes back instead of recomputing.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK = 32
SUB_CHUNK = 8  # pairwise decay only inside these; factorised between them


def chunk_length(T: int) -> int:
    """CHUNK, or less for sequences shorter than one chunk (a multiple of SUB_CHUNK)."""
    return min(CHUNK, -(-T // SUB_CHUNK) * SUB_CHUNK)


def _to_chunks(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, T, H, D] -> [B, H, N, C, D], zero-padded at the end (causal: padding never leaks back)."""
    B, T, H, D = x.shape
    chunk = chunk_length(T)
    pad = -T % chunk
    x = F.pad(x.to(dtype), (0, 0, 0, 0, 0, pad))
    return x.view(B, (T + pad) // chunk, chunk, H, D).permute(0, 3, 1, 2, 4)


def _from_chunks(x: torch.Tensor, T: int) -> torch.Tensor:
    B, H, N, C, D = x.shape
    return x.permute(0, 2, 3, 1, 4).reshape(B, N * C, H, D)[:, :T]


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class _IntraChunk:
    """In-chunk decayed products sum_k x_tk y_sk e^{b_tk - b_sk} (s <= t) and their adjoints.

    The chunk is cut into sub-chunks of SUB_CHUNK steps. Inside a sub-chunk the decay is formed
    pairwise; between query sub-chunk i and an earlier key sub-chunk j it factorises around r_j,
    the cumulative gate at the end of j: e^{b_t - b_s} = e^{b_t - r_j} e^{r_j - b_s}, where both
    exponents are <= 0 (t comes after r_j, s before it). Exact and overflow-free for any gates.
    Tensors are [B, H, N, C, K]; scores [B, H, N, C(t), C(s)].
    """

    def __init__(self, b: torch.Tensor):
        *lead, C, K = b.shape
        self.M = C // SUB_CHUNK
        bs = b.view(*lead, self.M, SUB_CHUNK, K)
        ref = bs[..., -1, :]                                                    # [.., M, K]
        inside = torch.ones(SUB_CHUNK, SUB_CHUNK, dtype=torch.bool, device=b.device).tril()
        diff = bs.unsqueeze(-2) - bs.unsqueeze(-3)                              # [.., M, S, S, K]
        self.diag_decay = diff.masked_fill(~inside[:, :, None], float("-inf")).exp()
        earlier = torch.ones(self.M, self.M, dtype=torch.bool, device=b.device).tril(-1)  # j < i
        grow = bs.unsqueeze(-3) - ref[..., None, :, None, :]                    # [.., M(i), M(j), S, K]
        self.grow = grow.masked_fill(~earlier[:, :, None, None], float("-inf")).exp()
        self.shrink = (ref.unsqueeze(-2) - bs).exp()                            # [.., M(j), S, K]
        self.eye = torch.eye(self.M, dtype=torch.bool, device=b.device)[:, :, None, None]

    def _sub(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-2, (self.M, SUB_CHUNK))

    def _blocks(self, d: torch.Tensor) -> torch.Tensor:
        """[.., C, C] -> [.., M(i), M(j), S(t), S(s)]."""
        return d.unflatten(-1, (self.M, SUB_CHUNK)).unflatten(-3, (self.M, SUB_CHUNK)).transpose(-3, -2)

    def _diagonal(self, blocks: torch.Tensor) -> torch.Tensor:
        return torch.diagonal(blocks, dim1=-4, dim2=-3).movedim(-1, -3)       # [.., M, S, S]

    def scores(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        xs, ys = self._sub(x), self._sub(y)
        inside = torch.einsum("...mtk,...msk,...mtsk->...mts", xs, ys, self.diag_decay)
        across = torch.einsum("...ijtk,...jsk->...ijts", xs.unsqueeze(-3) * self.grow, ys * self.shrink)
        blocks = across + self.eye * inside.unsqueeze(-3)
        return blocks.transpose(-3, -2).flatten(-4, -3).flatten(-2, -1)

    def to_rows(self, d: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """sum_{s<=t} d_ts y_sk e^{b_tk - b_sk}."""
        blocks, ys = self._blocks(d), self._sub(y)
        inside = torch.einsum("...mts,...msk,...mtsk->...mtk", self._diagonal(blocks), ys, self.diag_decay)
        across = (torch.einsum("...ijts,...jsk->...ijtk", blocks, ys * self.shrink) * self.grow).sum(-3)
        return (inside + across).flatten(-3, -2)

    def to_columns(self, d: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """sum_{t>=s} d_ts x_tk e^{b_tk - b_sk}."""
        blocks, xs = self._blocks(d), self._sub(x)
        inside = torch.einsum("...mts,...mtk,...mtsk->...msk", self._diagonal(blocks), xs, self.diag_decay)
        across = self.shrink * torch.einsum("...ijts,...ijtk->...jsk", blocks, xs.unsqueeze(-3) * self.grow)
        return (inside + across).flatten(-3, -2)


def _incoming_states(k_to_end: torch.Tensor, v: torch.Tensor, chunk_decay: torch.Tensor) -> torch.Tensor:
    """State entering each chunk, [B, H, N, K, V]; the scan over chunks is the only sequential part."""
    contribution = k_to_end.transpose(-1, -2) @ v
    states = torch.zeros_like(contribution)
    for n in range(1, contribution.shape[2]):
        states[:, :, n] = chunk_decay[:, :, n - 1, :, None] * states[:, :, n - 1] + contribution[:, :, n - 1]
    return states


def _prepare(q, k, v, g):
    dtype = compute_dtype(q)
    q, k, v, g = (_to_chunks(x, dtype) for x in (q, k, v, g))
    b = g.cumsum(-2)
    return q, k, v, b


def gla_forward(q, k, v, g, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain causal GLA. q, k, g: [B, T, H, K]; v: [B, T, H, V] -> o [B, T, H, V] and the
    states entering each chunk [B*H, N, K, V]."""
    T = q.shape[1]
    q, k, v, b = _prepare(q, k, v, g)
    scores = _IntraChunk(b).scores(q, k)
    states = _incoming_states(k * (b[..., -1:, :] - b).exp(), v, b[..., -1, :].exp())
    o = scale * (scores @ v + (q * b.exp()) @ states)
    return _from_chunks(o, T), states.flatten(0, 1)


def gla_backward(q, k, v, g, do, scale: float, states: torch.Tensor):
    """Gradients (dq, dk, dv, dg) of `gla_forward` given do = dL/do and its states."""
    T = q.shape[1]
    q, k, v, b = _prepare(q, k, v, g)
    do = _to_chunks(do, q.dtype)
    states = states.view(*q.shape[:3], *states.shape[-2:])
    intra = _IntraChunk(b)
    q_from_start = q * b.exp()
    to_end = (b[..., -1:, :] - b).exp()
    chunk_decay = b[..., -1, :].exp()

    # Gradient w.r.t. the state leaving each chunk, scanned from the end.
    d_states = torch.zeros_like(states)
    from_this_chunk = scale * q_from_start.transpose(-1, -2) @ do
    for n in range(states.shape[2] - 2, -1, -1):
        d_states[:, :, n] = chunk_decay[:, :, n + 1, :, None] * d_states[:, :, n + 1] + from_this_chunk[:, :, n + 1]

    scores = scale * intra.scores(q, k)
    d_scores = scale * (do @ v.transpose(-1, -2))
    dq = intra.to_rows(d_scores, k) + scale * (do @ states.transpose(-1, -2)) * b.exp()
    dk = intra.to_columns(d_scores, q) + (v @ d_states.transpose(-1, -2)) * to_end
    dv = scores.transpose(-1, -2) @ do + (k * to_end) @ d_states

    # Output depends on the gates only through q_t e^{G_t} and k_s e^{-G_s} (G: global cumulative
    # gate), so dL/dG_t = q_t dq_t - k_t dk_t and dL/dg_t = sum_{u >= t} dL/dG_u.
    dG = _from_chunks(q * dq - k * dk, T)
    dg = dG.flip(1).cumsum(1).flip(1)
    return (*(_from_chunks(x, T) for x in (dq, dk, dv)), dg)
