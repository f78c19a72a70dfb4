"""A literal re-statement of the reference DiG forward (hustvl/DiG models_dig.py, configs
DiG-*/2-bid-layer-dwconv-qdir[-skip]): the token sequence is physically flipped after every block
and its grid transposed after every odd block; each block's depthwise conv runs on the sequence
as it stands; GLA is the float64 step-by-step recurrence. Module names are the reference's.

Unlike the reference, tokens are put back in raster order before the final layer, so that any
depth gives a meaningful output (the reference's permutations cancel only for depth % 4 == 0).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from dig_scale.models.layers import FinalLayer, LabelEmbedder, PatchEmbed, TimestepEmbedder, modulate
from kernels.gla.naive import recurrent_gla


class RefGLA(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj = nn.Linear(d, d // 2, bias=False), nn.Linear(d, d // 2, bias=False)
        self.v_proj, self.g_proj = nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False)
        self.gk_proj = nn.Sequential(nn.Linear(d, 16, bias=False), nn.Linear(16, d // 2, bias=True))
        self.o_proj = nn.Linear(d, d, bias=False)
        self.g_norm_swish_gate = nn.Module()
        self.g_norm_swish_gate.weight = nn.Parameter(torch.ones(d // self.heads))

    def forward(self, x):
        N, T, _ = x.shape
        split = lambda y: y.reshape(N, T, self.heads, -1)  # noqa: E731
        gk = F.logsigmoid(self.gk_proj(x)) / 16
        o = recurrent_gla(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)), split(gk))
        o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + 1e-6) * self.g_norm_swish_gate.weight
        o = o * F.silu(split(self.g_proj(x)))
        return self.o_proj(o.reshape(N, T, -1))


class RefBlock(nn.Module):
    def __init__(self, d, heads, mlp_hidden, with_skip):
        super().__init__()
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.attn = RefGLA(d, heads)
        self.mlp = nn.Module()
        self.mlp.gate_proj = nn.Linear(d, 2 * mlp_hidden, bias=False)
        self.mlp.down_proj = nn.Linear(mlp_hidden, d, bias=False)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.dw_conv = nn.Conv2d(d, d, 3, padding=1, groups=d)
        self.skip_linear = nn.Linear(2 * d, d) if with_skip else None

    def forward(self, x, c, seq_grid, skip):
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        s1, sc1, g1, s2, sc2, g2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + g1.unsqueeze(1) * self.attn(modulate(self.norm1(x), s1, sc1))
        h = modulate(self.norm2(x), s2, sc2)
        gate, value = self.mlp.gate_proj(h).chunk(2, dim=-1)
        x = x + g2.unsqueeze(1) * self.mlp.down_proj(F.silu(gate) * value)
        N, T, D = x.shape
        image = x.transpose(1, 2).reshape(N, D, *seq_grid)
        return self.dw_conv(image).flatten(2).transpose(1, 2)


class ReferenceDiG(nn.Module):
    def __init__(self, grid, patch, channels, d, depth, heads, mlp_hidden, num_classes, skip):
        super().__init__()
        self.grid, self.patch, self.channels, self.depth, self.skip = grid, patch, channels, depth, skip
        self.x_embedder = PatchEmbed(patch, channels, d)
        self.t_embedder = TimestepEmbedder(d)
        self.y_embedder = LabelEmbedder(num_classes, d, 0.1)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1], d), requires_grad=False)
        self.blocks = nn.ModuleList(
            [RefBlock(d, heads, mlp_hidden, skip and i > depth // 2) for i in range(depth)])
        self.final_layer = FinalLayer(d, patch, 2 * channels)

    def forward(self, x, t, y):
        x = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y, False)
        N, T, D = x.shape
        seq_grid = self.grid
        where = torch.arange(T)  # raster index of the token at each sequence position
        skips = []
        for i, block in enumerate(self.blocks):
            x = block(x, c, seq_grid, skips.pop() if self.skip and i > self.depth // 2 else None)
            x, where = x.flip(1), where.flip(0)
            if i % 2 == 1:
                x = x.reshape(N, *seq_grid, D).transpose(1, 2).flatten(1, 2)
                where = where.reshape(*seq_grid).t().flatten()
                seq_grid = seq_grid[::-1]
            if self.skip and i < self.depth // 2 - 1:
                skips.append(x)
        raster = torch.empty_like(x)
        raster[:, where] = x
        out = self.final_layer(raster, c)
        h, w = self.grid
        p, C = self.patch, 2 * self.channels
        out = out.reshape(N, h, w, p, p, C).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(N, C, h * p, w * p)
