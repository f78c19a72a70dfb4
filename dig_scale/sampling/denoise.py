"""Noise -> samples with diffusers' schedulers, classifier-free guidance and per-sample randomness.

Samplers (all on the linear-beta process the model was trained with, `dig_scale.diffusion`):

    ddpm   ancestral sampling with DiT's learned variance (DDPMScheduler, variance_type
           "learned_range"), on DiT's respaced timesteps: 250 steps is the papers' FID protocol
    ddim   DDIMScheduler (eta 0: deterministic), the DDIM paper's strided timesteps
    dpm++  DPMSolverMultistepScheduler, DPM-Solver++(2M)

Every sample owns a random stream seeded by (seed, sample index): its initial noise and every
noise draw of the sampler come from it, so a sample does not depend on which batch or rank
produced it (diffusers draws per-sample noise when given one generator per sample).
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.utils.torch_utils import randn_tensor

from dig_scale.diffusion import linear_betas, space_timesteps

SAMPLERS = ("ddpm", "ddim", "dpm++")


@dataclass(frozen=True)
class SamplerSettings:
    sampler: str = "ddpm"
    steps: int = 250
    cfg_scale: float = 1.5
    guided_channels: int | None = None   # None: every noise channel; 3: DiT's published samples
    ddim_eta: float = 0.0

    def check(self, num_timesteps: int) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler {self.sampler!r}: expected one of {', '.join(SAMPLERS)}")
        if not 1 <= self.steps <= num_timesteps:
            raise ValueError(f"steps {self.steps}: expected 1..{num_timesteps} (the trained process)")
        if self.cfg_scale < 1:
            raise ValueError(f"cfg scale {self.cfg_scale}: expected >= 1 (1 = no guidance)")
        if self.guided_channels is not None and self.guided_channels < 1:
            raise ValueError(f"guided channels {self.guided_channels}: expected >= 1 or None (all)")
        if self.ddim_eta and self.sampler != "ddim":
            raise ValueError(f"ddim eta {self.ddim_eta} is only meaningful with the ddim sampler")


def make_scheduler(settings: SamplerSettings, num_timesteps: int, learn_sigma: bool):
    """A diffusers scheduler over our schedule's betas, with its timesteps set."""
    common = dict(num_train_timesteps=num_timesteps, trained_betas=linear_betas(num_timesteps),
                  prediction_type="epsilon")
    if settings.sampler == "ddpm":
        # "fixed_large" (beta_t) is what DiT samples with when the variance is not learned.
        scheduler = DDPMScheduler(**common, clip_sample=False,
                                  variance_type="learned_range" if learn_sigma else "fixed_large")
        scheduler.set_timesteps(timesteps=space_timesteps(num_timesteps, settings.steps)[::-1])
    elif settings.sampler == "ddim":
        scheduler = DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True, timestep_spacing="leading")
        scheduler.set_timesteps(settings.steps)
    else:
        scheduler = DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2)
        scheduler.set_timesteps(settings.steps)
    return scheduler


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample `index`'s random stream: a hash, so nearby seeds give unrelated streams."""
    return int.from_bytes(hashlib.blake2b(f"{seed}/sample/{index}".encode(), digest_size=8).digest(), "little") >> 1


def sample_generators(seed: int, indices: list[int] | range) -> list[torch.Generator]:
    """One CPU generator per sample: the same noise on any device, batch or rank."""
    return [torch.Generator().manual_seed(sample_seed(seed, i)) for i in indices]


def guided_model(model: nn.Module, labels: torch.Tensor | None, cfg_scale: float,
                 guided_channels: int | None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """(x_t, t) -> float32 model output for `labels`, with classifier-free guidance when
    cfg_scale > 1 (conditional and null-label halves in one batched forward)."""
    dtype = next(model.parameters()).dtype
    if labels is None and cfg_scale != 1:
        raise ValueError("classifier-free guidance needs a class-conditional model; use cfg scale 1")
    if cfg_scale == 1:
        return lambda x, t: model(x.to(dtype), t.expand(len(x)), labels).float()
    embedder = model.y_embedder
    if embedder.dropout_prob == 0:
        raise ValueError("the model was trained without label dropout (class_dropout_prob 0), so it has no "
                         "null class for classifier-free guidance; use cfg scale 1")
    both = torch.cat([labels, torch.full_like(labels, embedder.num_classes)])

    def forward(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        doubled = torch.cat([x, x]).to(dtype)
        out = model.forward_with_cfg(doubled, t.expand(len(doubled)), both, cfg_scale, guided_channels)
        return out[:len(x)].float()

    return forward


@torch.no_grad()
def generate(model: nn.Module, labels: torch.Tensor | None, generators: list[torch.Generator],
             settings: SamplerSettings, num_timesteps: int) -> torch.Tensor:
    """Samples in the model's space (N, C, H, W), float32, one per generator (and label)."""
    settings.check(num_timesteps)
    device = next(model.parameters()).device
    channels = model.in_channels
    learn_sigma = model.out_channels == 2 * channels
    scheduler = make_scheduler(settings, num_timesteps, learn_sigma)
    predict = guided_model(model, labels, settings.cfg_scale, settings.guided_channels)
    x = randn_tensor((len(generators), channels, *model.input_size), generator=generators, device=device,
                     dtype=torch.float32)
    extra = {"eta": settings.ddim_eta} if settings.sampler == "ddim" else {}
    for t in scheduler.timesteps:
        output = predict(x, t.to(device))
        if settings.sampler != "ddpm":  # DDIM and DPM-Solver take eps (diffusers' DPM-Solver would keep 3 channels)
            output = output[:, :channels]
        x = scheduler.step(output, t, x, generator=generators, **extra).prev_sample
    return x
