"""EMA sample grids during training: fixed seed and classes, so grids are comparable over time.
The same sampling path as `python -m dig_scale.sample` (DDPM with the learned variance)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from dig_scale.config import ExperimentConfig
from dig_scale.data import DatasetMetadata
from dig_scale.sampling import Decoder, SamplerSettings, generate, sample_generators, save_grid, to_uint8


class SampleGridWriter:
    """Samples the EMA model with the configured steps and CFG scale and writes a PNG; latent
    datasets are decoded with the VAE (and subfolder) named in the dataset metadata."""

    def __init__(self, cfg: ExperimentConfig, metadata: DatasetMetadata, device: torch.device):
        self.cfg = cfg
        self.decoder = Decoder.from_record(dataclasses.asdict(metadata), device)

    def write(self, model: torch.nn.Module, path: Path) -> Path:
        s, m = self.cfg.sampling, self.cfg.model
        conditional = m.num_classes > 0
        labels = torch.tensor(s.classes, device=self.decoder.device) % m.num_classes if conditional else None
        settings = SamplerSettings("ddpm", s.num_steps, s.cfg_scale if conditional else 1.0)
        samples = generate(model, labels, sample_generators(s.seed, range(len(s.classes))), settings,
                           self.cfg.diffusion.num_timesteps)
        return save_grid(to_uint8(self.decoder(samples)), path, columns=min(len(s.classes), 8))
