"""EMA sample grids during training: fixed seed and classes, so grids are comparable over time."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dig_scale.config import ExperimentConfig
from dig_scale.data import DatasetMetadata
from dig_scale.diffusion import create_diffusion, ddpm_sample


def to_uint8_grid(images: torch.Tensor, columns: int, min_cell: int = 64) -> Image.Image:
    """(N, C, H, W) in [-1, 1], C in {1, 3} -> one RGB image, `columns` wide; images smaller than
    `min_cell` pixels are enlarged by an integer factor (nearest) so they can be seen."""
    factor = max(1, min_cell // images.shape[-1])
    images = images.float().repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
    images = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    n, c, h, w = images.shape
    rows = math.ceil(n / columns)
    grid = torch.zeros(3, rows * (h + 2) + 2, columns * (w + 2) + 2, dtype=torch.uint8)
    for i, image in enumerate(images[:, :3]):
        r, col = divmod(i, columns)
        grid[:, 2 + r * (h + 2): 2 + r * (h + 2) + h, 2 + col * (w + 2): 2 + col * (w + 2) + w] = image
    return Image.fromarray(np.ascontiguousarray(grid.permute(1, 2, 0).numpy()))


class SampleGridWriter:
    """Samples the EMA model (DDPM with the configured steps and CFG scale) and writes a PNG.
    Latent datasets are decoded with the VAE named in the dataset metadata."""

    def __init__(self, cfg: ExperimentConfig, metadata: DatasetMetadata, device: torch.device):
        self.cfg, self.metadata, self.device = cfg, metadata, device
        self.diffusion = create_diffusion(cfg.diffusion.num_timesteps, cfg.model.learn_sigma, cfg.sampling.num_steps)
        self._vae = None

    def _decode(self, samples: torch.Tensor) -> torch.Tensor:
        """Training-space samples -> pixels in [-1, 1] (the inverse of the reader's scaling)."""
        meta = self.metadata
        if meta.kind == "pixel":
            return samples
        if self._vae is None:
            from diffusers import AutoencoderKL

            self._vae = AutoencoderKL.from_pretrained(meta.vae).to(self.device).eval()
        return self._vae.decode(samples / meta.scaling_factor + meta.shift_factor).sample

    @torch.no_grad()
    def write(self, model: torch.nn.Module, path: Path) -> Path:
        s, m = self.cfg.sampling, self.cfg.model
        classes = torch.tensor(s.classes, device=self.device) % max(m.num_classes, 1)
        n = len(classes)
        generator = torch.Generator(self.device).manual_seed(s.seed)
        shape = (n, m.in_channels, *model.input_size)
        noise = torch.randn(shape, generator=generator, device=self.device)
        if m.num_classes > 0 and s.cfg_scale != 1.0:
            null = torch.full_like(classes, m.num_classes)
            fn = lambda x, t, y: model.forward_with_cfg(x, t, y, s.cfg_scale)  # noqa: E731
            out = ddpm_sample(self.diffusion, fn, torch.cat([noise, noise]), {"y": torch.cat([classes, null])},
                              generator=generator)[:n]
        else:
            out = ddpm_sample(self.diffusion, model, noise, {"y": classes if m.num_classes > 0 else None},
                              generator=generator)
        path.parent.mkdir(parents=True, exist_ok=True)
        to_uint8_grid(self._decode(out), columns=min(n, 8)).save(path)
        return path
