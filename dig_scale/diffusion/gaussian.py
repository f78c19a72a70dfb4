"""Gaussian diffusion (DDPM) with DiT's objective: L_simple (MSE on eps) + L_vlb for a learned
variance interpolated between the posterior variance and beta_t ("learned range").

Coefficients are computed in float64 and used in float32; model outputs are cast to float32
before any loss arithmetic (see ARCHITECTURE.md, "bf16 where it is safe, fp32 where it matters").
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .likelihood import discretized_gaussian_log_likelihood, normal_kl
from .schedule import linear_betas, space_timesteps


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(1, x.dim())))


@dataclass
class PredictedDistribution:
    mean: torch.Tensor
    log_variance: torch.Tensor
    pred_xstart: torch.Tensor
    eps: torch.Tensor


class GaussianDiffusion:
    """A diffusion process over `len(betas)` steps.

    `timestep_map[i]` is the original-process timestep that step i of this (possibly respaced)
    process stands for; models are always called with original timesteps.
    """

    def __init__(self, betas: np.ndarray, learn_sigma: bool = True, timestep_map: np.ndarray | None = None):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("betas must be a 1-D array in (0, 1]")
        self.betas = betas
        self.learn_sigma = learn_sigma
        self.num_timesteps = len(betas)
        self.timestep_map = np.arange(len(betas)) if timestep_map is None else np.asarray(timestep_map)
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # The posterior variance is 0 at t=0; its log is clipped to the t=1 value.
        posterior_log_variance = np.log(np.append(posterior_variance[1], posterior_variance[1:]))
        self._tables64 = {
            "timestep_map": self.timestep_map,
            "alphas_cumprod": self.alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": np.sqrt(self.alphas_cumprod),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - self.alphas_cumprod),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / self.alphas_cumprod),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / self.alphas_cumprod - 1.0),
            "posterior_log_variance": posterior_log_variance,
            "posterior_mean_coef1": betas * np.sqrt(alphas_cumprod_prev) / (1.0 - self.alphas_cumprod),
            "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod),
            "log_betas": np.log(betas),
            # Fixed variance when sigma is not learned: beta_t ("fixed large"), t=0 as t=1.
            "fixed_log_variance": np.log(np.append(posterior_variance[1], betas[1:])),
        }
        self._tables: dict[torch.device, dict[str, torch.Tensor]] = {}

    def respaced(self, spec: str | int) -> GaussianDiffusion:
        """The process restricted to `space_timesteps(T, spec)`, with betas recomputed so the
        kept steps have the same cumulative noise levels."""
        if not np.array_equal(self.timestep_map, np.arange(self.num_timesteps)):
            raise ValueError("respace the original process, not an already respaced one")
        kept = space_timesteps(self.num_timesteps, spec)
        cumprod = self.alphas_cumprod[kept]
        betas = 1.0 - cumprod / np.append(1.0, cumprod[:-1])
        return GaussianDiffusion(betas, self.learn_sigma, timestep_map=np.array(kept))

    def _at(self, name: str, t: torch.Tensor, ndim: int) -> torch.Tensor:
        """Table `name` at steps t (N,), shaped (N, 1, ..., 1) for broadcasting, on t's device."""
        tables = self._tables.get(t.device)
        if tables is None:
            tables = self._tables[t.device] = {
                k: torch.as_tensor(v, device=t.device, dtype=torch.long if k == "timestep_map" else torch.float32)
                for k, v in self._tables64.items()
            }
        return tables[name][t].view(-1, *([1] * (ndim - 1)))

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        return self._at("timestep_map", t, 1)

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I), with the given noise."""
        return self._at("sqrt_alphas_cumprod", t, x_start.dim()) * x_start + \
            self._at("sqrt_one_minus_alphas_cumprod", t, x_start.dim()) * noise

    def q_posterior(self, x_start: torch.Tensor, x_t: torch.Tensor,
                    t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and (clipped) log-variance of q(x_{t-1} | x_t, x_0)."""
        n = x_t.dim()
        mean = self._at("posterior_mean_coef1", t, n) * x_start + self._at("posterior_mean_coef2", t, n) * x_t
        return mean, self._at("posterior_log_variance", t, n).expand_as(x_t)

    def predict_xstart(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        n = x_t.dim()
        return self._at("sqrt_recip_alphas_cumprod", t, n) * x_t - self._at("sqrt_recipm1_alphas_cumprod", t, n) * eps

    def p_distribution(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> PredictedDistribution:
        """p(x_{t-1} | x_t) from the model's output: eps (and, if learned, variance values v in
        [-1, 1] with log var = (v+1)/2 log beta_t + (1-v)/2 log posterior_var_t)."""
        model_output = model_output.float()
        n = x_t.dim()
        if self.learn_sigma:
            eps, var_values = model_output.split(x_t.shape[1], dim=1)
            frac = (var_values + 1) / 2
            log_variance = frac * self._at("log_betas", t, n) + (1 - frac) * self._at("posterior_log_variance", t, n)
        else:
            eps = model_output
            log_variance = self._at("fixed_log_variance", t, n).expand_as(x_t)
        pred_xstart = self.predict_xstart(x_t, t, eps)
        mean, _ = self.q_posterior(pred_xstart, x_t, t)
        return PredictedDistribution(mean, log_variance, pred_xstart, eps)

    def vlb_terms(self, model_output: torch.Tensor, x_start: torch.Tensor, x_t: torch.Tensor,
                  t: torch.Tensor) -> torch.Tensor:
        """Per-sample VLB term in bits/dim: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) for t > 0 and
        the discretized decoder NLL at t = 0."""
        true_mean, true_log_variance = self.q_posterior(x_start, x_t, t)
        p = self.p_distribution(model_output, x_t, t)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, p.mean, p.log_variance)) / math.log(2.0)
        nll = -mean_flat(discretized_gaussian_log_likelihood(x_start, p.mean, 0.5 * p.log_variance)) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def training_losses(self, model: Callable[..., torch.Tensor], x_start: torch.Tensor, t: torch.Tensor,
                        noise: torch.Tensor | None = None, model_kwargs: dict | None = None) -> dict[str, torch.Tensor]:
        """Per-sample losses: "mse" (eps prediction), "vb" (learned variance only; the mean is
        frozen so the VLB trains only sigma) and their sum "loss". Shapes (N,), float32."""
        x_start = x_start.float()
        noise = torch.randn_like(x_start) if noise is None else noise.float()
        x_t = self.q_sample(x_start, t, noise)
        output = model(x_t, self.model_timesteps(t), **(model_kwargs or {})).float()
        terms = {}
        if self.learn_sigma:
            eps, var_values = output.split(x_t.shape[1], dim=1)
            frozen = torch.cat([eps.detach(), var_values], dim=1)
            terms["vb"] = self.vlb_terms(frozen, x_start, x_t, t)
        else:
            eps = output
        terms["mse"] = mean_flat((noise - eps) ** 2)
        terms["loss"] = terms["mse"] + terms.get("vb", 0.0)
        return terms


def create_diffusion(num_timesteps: int = 1000, learn_sigma: bool = True,
                     respacing: str | int | None = None) -> GaussianDiffusion:
    """The linear-beta process of DiT; `respacing` (e.g. 250 or "ddim50") for sampling."""
    diffusion = GaussianDiffusion(linear_betas(num_timesteps), learn_sigma)
    return diffusion.respaced(respacing) if respacing else diffusion
