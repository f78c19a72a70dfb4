"""Gaussian diffusion: schedule, forward process, DiT's training loss, samplers."""
from .gaussian import GaussianDiffusion, create_diffusion
from .sampling import ddim_sample, ddpm_sample
from .schedule import linear_betas, space_timesteps

__all__ = ["GaussianDiffusion", "create_diffusion", "ddim_sample", "ddpm_sample", "linear_betas", "space_timesteps"]
