"""Gaussian diffusion: schedule, forward process, posterior and DiT's training loss.
Sampling loops are diffusers' schedulers over this process (dig_scale.sampling)."""
from .gaussian import GaussianDiffusion, create_diffusion
from .schedule import linear_betas, space_timesteps

__all__ = ["GaussianDiffusion", "create_diffusion", "linear_betas", "space_timesteps"]
