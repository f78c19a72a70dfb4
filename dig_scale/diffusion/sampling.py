"""Ancestral (DDPM) and DDIM sampling loops over a GaussianDiffusion."""
from __future__ import annotations

from collections.abc import Callable

import torch

from .gaussian import GaussianDiffusion


def _steps(diffusion: GaussianDiffusion, progress: bool):
    steps = range(diffusion.num_timesteps - 1, -1, -1)
    if progress:
        from tqdm.auto import tqdm
        return tqdm(steps, desc="sampling", leave=False)
    return steps


def _predict(diffusion, model, x, i, model_kwargs, clip_denoised):
    t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
    output = model(x, diffusion.model_timesteps(t), **(model_kwargs or {}))
    return t, diffusion.p_distribution(output, x, t, clip_denoised)


@torch.no_grad()
def ddpm_sample(diffusion: GaussianDiffusion, model: Callable[..., torch.Tensor], noise: torch.Tensor,
                model_kwargs: dict | None = None, generator: torch.Generator | None = None,
                clip_denoised: bool = False, progress: bool = False) -> torch.Tensor:
    """x_T = noise -> x_0 by ancestral sampling from p(x_{t-1} | x_t); returns float32."""
    x = noise.float()
    for i in _steps(diffusion, progress):
        _, p = _predict(diffusion, model, x, i, model_kwargs, clip_denoised)
        x = p.mean
        if i > 0:
            x = x + torch.exp(0.5 * p.log_variance) * torch.randn(x.shape, generator=generator, device=x.device)
    return x


@torch.no_grad()
def ddim_sample(diffusion: GaussianDiffusion, model: Callable[..., torch.Tensor], noise: torch.Tensor,
                model_kwargs: dict | None = None, eta: float = 0.0, generator: torch.Generator | None = None,
                clip_denoised: bool = False, progress: bool = False) -> torch.Tensor:
    """DDIM (eta=0: deterministic) from x_T = noise; returns float32."""
    x = noise.float()
    for i in _steps(diffusion, progress):
        t, p = _predict(diffusion, model, x, i, model_kwargs, clip_denoised)
        eps = diffusion.predict_eps(x, t, p.pred_xstart)
        abar = diffusion._at("alphas_cumprod", t, x.dim())
        abar_prev = diffusion._at("alphas_cumprod_prev", t, x.dim())
        sigma = eta * torch.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))
        x = p.pred_xstart * torch.sqrt(abar_prev) + torch.sqrt(1 - abar_prev - sigma**2) * eps
        if i > 0 and eta > 0:
            x = x + sigma * torch.randn(x.shape, generator=generator, device=x.device)
    return x
