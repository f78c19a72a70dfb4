"""Building blocks shared by DiG and DiT: embedders, adaLN modulation, sin-cos positions, final layer."""
from __future__ import annotations

import math

import torch
import torch.nn as nn


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x (N, T, D) scaled and shifted per sample by (N, D) vectors."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def as_grid(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """An int means a square; (height, width) otherwise."""
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


class TimestepEmbedder(nn.Module):
    """Scalar diffusion timesteps -> (N, D): sinusoidal features (fp32) then a 2-layer MLP."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        """[cos(t w_i), sin(t w_i)] with w_i = max_period^(-i/half), i < half; (N,) -> (N, dim)."""
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
        return embedding

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        features = self.timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class labels -> (N, D). With dropout > 0 an extra "null" class (index num_classes) is
    learned and labels are replaced by it with probability `dropout_prob` while training (CFG)."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def forward(self, labels: torch.Tensor, train: bool, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        if force_drop_ids is not None:
            drop = force_drop_ids == 1
        elif train and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
        else:
            drop = None
        if drop is not None:
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels)


class PatchEmbed(nn.Module):
    """(N, C, H, W) -> (N, T, D) with T = (H/p)(W/p) tokens in raster order."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm + linear to p*p*C_out values per token."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


def unpatchify(x: torch.Tensor, patch_size: int, channels: int, grid: tuple[int, int]) -> torch.Tensor:
    """(N, T, p*p*C) tokens in raster order -> (N, C, H*p, W*p)."""
    height, width = grid
    p = patch_size
    x = x.reshape(x.shape[0], height, width, p, p, channels)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], channels, height * p, width * p)


def sincos_pos_embed_2d(dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding, (H*W, dim), float32, raster order.

    MAE/DiT convention: the first dim/2 channels encode the column (x) coordinate, the last
    dim/2 the row (y); each half is [sin(pos w), cos(pos w)] with w_i = 10000^(-i/(dim/4)).
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs hidden_size divisible by 4, got {dim}")
    height, width = grid
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    rows, cols = torch.meshgrid(torch.arange(height, dtype=torch.float64),
                                torch.arange(width, dtype=torch.float64), indexing="ij")

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * omega
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)

    return torch.cat([encode(cols), encode(rows)], dim=1).float()



def init_linear_xavier(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every nn.Linear under `module`."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
