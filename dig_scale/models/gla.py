"""The gated linear attention layer of DiG (reference: hustvl/DiG module_dig.GatedLinearAttention)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels.gla import ScanOrder, chunk_length, resolve_backend, scan_gla


class GatedRMSNorm(nn.Module):
    """Weight and eps of the per-head RMSNorm(o) * weight * swish(gate) on the GLA output; the
    GLA op applies it (statistics in fp32), fused with the scan."""

    def __init__(self, head_dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(head_dim))
        self.eps = eps


class GatedLinearAttention(nn.Module):
    """GLA with key dim D/2, value dim D, a rank-16 data-dependent forget gate
    `logsigmoid(W2 W1 x + b) / 16` and a gated RMSNorm output, scanned in a given order."""

    def __init__(self, hidden_size: int, num_heads: int, gate_low_rank_dim: int = 16,
                 gate_logit_normalizer: float = 16.0, backend: str | None = None):
        super().__init__()
        key_dim, value_dim = hidden_size // 2, hidden_size
        if key_dim % num_heads or value_dim % num_heads:
            raise ValueError(f"hidden_size/2={key_dim} and hidden_size={value_dim} "
                             f"must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_k_dim, self.head_v_dim = key_dim // num_heads, value_dim // num_heads
        self.gate_logit_normalizer = gate_logit_normalizer
        self.backend = backend
        self.q_proj = nn.Linear(hidden_size, key_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, key_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, value_dim, bias=False)
        self.g_proj = nn.Linear(hidden_size, value_dim, bias=False)
        self.gk_proj = nn.Sequential(nn.Linear(hidden_size, gate_low_rank_dim, bias=False),
                                     nn.Linear(gate_low_rank_dim, key_dim, bias=True))
        self.o_proj = nn.Linear(value_dim, hidden_size, bias=False)
        self.out_norm = GatedRMSNorm(self.head_v_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The reference GLA init: Xavier-uniform with gain 2^-2.5 on every projection."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight, gain=2**-2.5)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.ones_(self.out_norm.weight)

    def scan_flops(self, tokens: int) -> int:
        """Matmul FLOPs of the GLA scan over `tokens` with the backend that runs on this layer's
        device, whose chunks have C tokens: per token and head, scores and values over its chunk
        (q k^T and A v on C x C blocks, as the kernels compute them) 2 C (dk + dv), the
        inter-chunk output q S 2 dk dv and the state update k^T v 2 dk dv."""
        chunk = chunk_length(resolve_backend(self.backend, self.q_proj.weight.device), tokens)
        dk, dv = self.head_k_dim, self.head_v_dim
        return tokens * self.num_heads * (2 * chunk * (dk + dv) + 4 * dk * dv)

    def forward(self, x: torch.Tensor, order: ScanOrder, grid: tuple[int, int]) -> torch.Tensor:
        """x: (N, T, D) in raster order over `grid` -> (N, T, D)."""
        N, T, _ = x.shape
        if torch.is_autocast_enabled(x.device.type):
            # One cast of x, kept for the backward. (Separate projections each cast x and kept a
            # copy; the one matmul below would also cast it only once.)
            x = x.to(torch.get_autocast_dtype(x.device.type))
        # The five projections of x as one matmul over their weights concatenated on the fly (the
        # parameters stay as they are), split into views of its output. q, k, v and the output
        # gate go to the op as column slices: the Triton kernels read them in place (row stride:
        # the total width, 3472 at XL). The concatenated weight is a new tensor at every call,
        # kept for the backward (8 MB per layer at XL in bf16); under autocast it takes the place
        # of the five projections' weight casts.
        projections = (self.q_proj, self.k_proj, self.v_proj, self.g_proj, self.gk_proj[0])
        fused = F.linear(x, torch.cat([p.weight for p in projections]))
        q, k, v, output_gate, gate_low_rank = fused.split([p.out_features for p in projections], dim=-1)
        heads = lambda y: y.view(N, T, self.num_heads, -1)  # noqa: E731
        # The op applies logsigmoid / normalizer to the raw gate logits (summing the gates in
        # fp32) and the gated RMSNorm to its output: no extra passes over (N, T, D).
        o = scan_gla(heads(q), heads(k), heads(v), heads(self.gk_proj[1](gate_low_rank)), order, grid,
                     backend=self.backend, gate_logit_normalizer=self.gate_logit_normalizer,
                     output_gate=heads(output_gate), norm_weight=self.out_norm.weight, norm_eps=self.out_norm.eps)
        return self.o_proj(o.reshape(N, T, -1))
