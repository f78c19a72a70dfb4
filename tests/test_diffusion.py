"""Gaussian diffusion against closed forms: Gaussian KL, discretized likelihood, Bayes posterior."""
import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from dig_scale.diffusion import create_diffusion, linear_betas, space_timesteps
from dig_scale.diffusion.likelihood import discretized_gaussian_log_likelihood, normal_kl


def test_linear_schedule():
    betas = linear_betas(1000)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02) and betas.dtype == np.float64
    assert linear_betas(250)[-1] == pytest.approx(0.08)


def test_gaussian_kl_matches_torch_distributions():
    gen = torch.Generator().manual_seed(0)
    m1, m2, lv1, lv2 = (torch.randn(100, generator=gen, dtype=torch.float64) for _ in range(4))
    expected = kl_divergence(Normal(m1, (0.5 * lv1).exp()), Normal(m2, (0.5 * lv2).exp()))
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), expected)


def test_discretized_likelihood_integrates_the_normal_density():
    x = torch.tensor([-1.0, -0.5, 0.0, 0.3, 1.0], dtype=torch.float64)
    means = torch.tensor([-0.9, -0.4, 0.1, 0.3, 0.8], dtype=torch.float64)
    log_scales = torch.tensor([-1.0, -3.0, -2.0, -6.0, -1.5], dtype=torch.float64)
    dist = Normal(means, log_scales.exp())
    half = 1 / 255
    expected = torch.stack([
        dist.cdf(x + half)[0].log(),                                   # left edge bin: whole lower tail
        (dist.cdf(x + half) - dist.cdf(x - half))[1].log(),
        (dist.cdf(x + half) - dist.cdf(x - half))[2].log(),
        (dist.cdf(x + half) - dist.cdf(x - half))[3].log(),
        (1 - dist.cdf(x - half))[4].log(),                             # right edge bin: upper tail
    ])
    torch.testing.assert_close(discretized_gaussian_log_likelihood(x, means, log_scales), expected)
    # The 256 bins partition the real line: probabilities sum to one.
    bins = torch.linspace(-1, 1, 256, dtype=torch.float64)
    log_p = discretized_gaussian_log_likelihood(bins, torch.full_like(bins, 0.2), torch.full_like(bins, -1.0))
    total = log_p.exp().sum()
    assert total.item() == pytest.approx(1.0, abs=1e-9)


def test_posterior_is_bayes_rule():
    d = create_diffusion()
    betas = linear_betas(1000)
    abar = np.cumprod(1 - betas)
    x0, xt = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3)
    t = torch.tensor([1, 10, 500, 999])
    mean, log_var = d.q_posterior(x0, xt, t)
    for i, step in enumerate(t.tolist()):
        # q(x_{t-1}|x_t,x_0) ∝ N(x_t; sqrt(a_t) x_{t-1}, b_t) N(x_{t-1}; sqrt(abar_{t-1}) x_0, 1-abar_{t-1})
        a_t, abar_prev = 1 - betas[step], abar[step - 1]
        precision = a_t / betas[step] + 1 / (1 - abar_prev)
        want_mean = (math.sqrt(a_t) / betas[step] * xt[i] + math.sqrt(abar_prev) / (1 - abar_prev) * x0[i]) / precision
        torch.testing.assert_close(mean[i], want_mean.float(), rtol=1e-4, atol=1e-5)
        assert log_var[i].flatten()[0].item() == pytest.approx(-math.log(precision), rel=1e-5)


def test_q_sample_moments():
    d = create_diffusion()
    x0 = torch.full((200_000,), 0.7)
    t = torch.full((200_000,), 300)
    xt = d.q_sample(x0, t, torch.randn_like(x0))
    abar = np.cumprod(1 - linear_betas(1000))[300]
    assert xt.mean().item() == pytest.approx(math.sqrt(abar) * 0.7, abs=5e-3)
    assert xt.var().item() == pytest.approx(1 - abar, abs=5e-3)


def test_training_loss_is_mse_plus_frozen_mean_vlb():
    d = create_diffusion()
    x0, noise = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t = torch.tensor([0, 40, 900])
    eps_pred = torch.randn(3, 2, 4, 4, requires_grad=True)
    var_pred = torch.rand(3, 2, 4, 4, requires_grad=True)
    model_calls = []

    def model(x, timesteps):
        model_calls.append(timesteps)
        return torch.cat([eps_pred, var_pred], 1)

    terms = d.training_losses(model, x0, t, noise=noise)
    torch.testing.assert_close(terms["mse"], (noise - eps_pred).pow(2).mean((1, 2, 3)))
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["vb"])
    # VLB at t>0: KL(true posterior || model) in bits; at t=0 the decoder NLL.
    xt = d.q_sample(x0, t, noise)
    true_mean, true_lv = d.q_posterior(x0, xt, t)
    p = d.p_distribution(torch.cat([eps_pred, var_pred], 1), xt, t)
    kl = normal_kl(true_mean, true_lv, p.mean, p.log_variance).mean((1, 2, 3)) / math.log(2)
    torch.testing.assert_close(terms["vb"][1:], kl[1:])
    # The mean is frozen in the VLB: it sends no gradient to eps.
    eps_grad, = torch.autograd.grad(terms["vb"].sum(), eps_pred, retain_graph=True)
    assert torch.all(eps_grad == 0)
    assert torch.autograd.grad(terms["vb"].sum(), var_pred)[0].abs().sum() > 0
    assert torch.equal(model_calls[0], t)


def test_learned_range_variance_interpolates_log_beta_and_posterior():
    d = create_diffusion()
    xt, t = torch.zeros(1, 1, 1, 1), torch.tensor([100])
    lo = d.p_distribution(torch.tensor([[[[0.0]], [[-1.0]]]]), xt, t).log_variance.item()
    hi = d.p_distribution(torch.tensor([[[[0.0]], [[1.0]]]]), xt, t).log_variance.item()
    betas, abar = linear_betas(1000), np.cumprod(1 - linear_betas(1000))
    assert hi == pytest.approx(math.log(betas[100]), rel=1e-5)
    assert lo == pytest.approx(math.log(betas[100] * (1 - abar[99]) / (1 - abar[100])), rel=1e-5)


def test_respacing_keeps_noise_levels_and_maps_timesteps():
    base = create_diffusion()
    spaced = base.respaced(250)
    assert spaced.num_timesteps == 250
    np.testing.assert_allclose(spaced.alphas_cumprod, base.alphas_cumprod[spaced.timestep_map])
    assert spaced.model_timesteps(torch.tensor([0, 249])).tolist() == [0, 999]
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert len(space_timesteps(1000, "10,20,30")) == 60
    with pytest.raises(ValueError, match="cannot take"):
        space_timesteps(10, "11")
