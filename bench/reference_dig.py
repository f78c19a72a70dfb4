"""A reference-style DiG for side-by-side benchmarks only (never used by the product).

Written after hustvl/DiG's models_dig.py (configs DiG-*/2-bid-layer-dwconv-qdir): the token
sequence is physically flipped after every block and its grid transposed after every odd block,
the depthwise conv runs on an NCHW image of the sequence, and GLA is flash-linear-attention's
`chunk_gla` with its fused RMSNorm-swish output gate, in eager PyTorch — what a user running the
published code on today's fla gets. Parameter shapes match dig_scale's DiG, so FLOPs are equal.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from dig_scale.models.dig import swiglu_hidden_size
from dig_scale.models.layers import FinalLayer, LabelEmbedder, PatchEmbed, TimestepEmbedder, modulate


class FlaGLA(nn.Module):
    def __init__(self, d: int, heads: int):
        from fla.modules import FusedRMSNormGated
        from fla.ops.gla import chunk_gla

        super().__init__()
        self.heads, self.chunk_gla = heads, chunk_gla
        self.q_proj, self.k_proj = nn.Linear(d, d // 2, bias=False), nn.Linear(d, d // 2, bias=False)
        self.v_proj, self.g_proj = nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False)
        self.gk_proj = nn.Sequential(nn.Linear(d, 16, bias=False), nn.Linear(16, d // 2, bias=True))
        self.o_proj = nn.Linear(d, d, bias=False)
        self.g_norm_swish_gate = FusedRMSNormGated(d // heads, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, T, _ = x.shape
        split = lambda y: y.reshape(N, T, self.heads, -1)  # noqa: E731
        gk = F.logsigmoid(self.gk_proj(x).float()) / 16
        o, _ = self.chunk_gla(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)), split(gk))
        o = self.g_norm_swish_gate(o, split(self.g_proj(x)))
        return self.o_proj(o.reshape(N, T, -1))


class RefBlock(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.attn = FlaGLA(d, heads)
        hidden = swiglu_hidden_size(d)
        self.gate_proj = nn.Linear(d, 2 * hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d, bias=False)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.dw_conv = nn.Conv2d(d, d, 3, padding=1, groups=d)

    def forward(self, x: torch.Tensor, c: torch.Tensor, seq_grid: tuple[int, int]) -> torch.Tensor:
        s1, sc1, g1, s2, sc2, g2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + g1.unsqueeze(1) * self.attn(modulate(self.norm1(x), s1, sc1))
        gate, value = self.gate_proj(modulate(self.norm2(x), s2, sc2)).chunk(2, dim=-1)
        x = x + g2.unsqueeze(1) * self.down_proj(F.silu(gate) * value)
        N, T, D = x.shape
        image = x.transpose(1, 2).reshape(N, D, *seq_grid)
        return self.dw_conv(image).flatten(2).transpose(1, 2)


class ReferenceDiG(nn.Module):
    def __init__(self, input_size: int, patch_size: int = 2, in_channels: int = 4, hidden_size: int = 1152,
                 depth: int = 28, num_heads: int = 18, num_classes: int = 1000):
        super().__init__()
        self.grid = (input_size // patch_size, input_size // patch_size)
        self.patch, self.out_channels = patch_size, 2 * in_channels
        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, 0.1)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList([RefBlock(hidden_size, num_heads) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y, self.training)
        N, T, D = x.shape
        seq_grid = self.grid
        for i, block in enumerate(self.blocks):
            x = block(x, c, seq_grid).flip(1)
            if i % 2 == 1:
                x = x.reshape(N, *seq_grid, D).transpose(1, 2).flatten(1, 2)
                seq_grid = seq_grid[::-1]
        out = self.final_layer(x, c)  # depth % 4 == 0 (28 for XL): the permutations cancel
        h, w = self.grid
        out = out.reshape(N, h, w, self.patch, self.patch, self.out_channels).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(N, self.out_channels, h * self.patch, w * self.patch)
