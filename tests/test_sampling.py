"""diffusers' schedulers against our posterior and closed forms on fixed models; guidance; seeds;
decoding (VAE subfolder included); the trainer's grids on the same path."""
import numpy as np
import pytest
import torch
from PIL import Image
from sampling_fixtures import one_thread, tiny_model  # noqa: F401 (autouse fixture)

from dig_scale.data import DatasetMetadata
from dig_scale.diffusion import create_diffusion, linear_betas
from dig_scale.sampling import Decoder, SamplerSettings, generate, sample_generators, to_uint8
from dig_scale.sampling.denoise import guided_model, make_scheduler


def per_sample_noise(generators, shape=(3, 8, 8)):
    return torch.cat([torch.randn((1, *shape), generator=g) for g in generators])


@pytest.mark.parametrize("steps, cfg_scale", [(250, 1.0), (50, 4.0)])
def test_ddpm_follows_our_learned_variance_posterior(steps, cfg_scale):
    """Ancestral sampling through DDPMScheduler(learned_range) and through GaussianDiffusion's
    p(x_{t-1} | x_t) on the respaced process, fed the same noise, end at the same samples."""
    model, labels = tiny_model(), torch.tensor([1, 7, 3])
    ours = generate(model, labels, sample_generators(5, range(3)), SamplerSettings("ddpm", steps, cfg_scale), 1000)

    diffusion = create_diffusion(1000, learn_sigma=True, respacing=steps)
    predict = guided_model(model, labels, cfg_scale, None)
    generators = sample_generators(5, range(3))
    x = per_sample_noise(generators)
    with torch.no_grad():
        for i in reversed(range(steps)):
            t = torch.full((3,), i)
            p = diffusion.p_distribution(predict(x, diffusion.model_timesteps(t)[0]), x, t)
            x = p.mean + (torch.exp(0.5 * p.log_variance) * per_sample_noise(generators) if i > 0 else 0)
    assert x.abs().max() > 0.5  # a real trajectory, not a collapse to zero
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)


def test_ddim_is_the_deterministic_closed_form_update():
    """x_{t'} = sqrt(abar_t') x0_hat + sqrt(1 - abar_t') eps, on the strided timesteps, in float64."""
    model, labels, steps = tiny_model(seed=1), torch.tensor([0, 9]), 25
    ours = generate(model, labels, sample_generators(0, range(2)), SamplerSettings("ddim", steps, 2.0), 1000)

    abar = np.cumprod(1 - linear_betas(1000))
    timesteps = list(range(0, 1000, 1000 // steps))[::-1]
    predict = guided_model(model, labels, 2.0, None)
    x = per_sample_noise(sample_generators(0, range(2))).double()
    with torch.no_grad():
        for i, t in enumerate(timesteps):
            eps = predict(x.float(), torch.tensor(t))[:, :3].double()
            x0 = (x - np.sqrt(1 - abar[t]) * eps) / np.sqrt(abar[t])
            prev = abar[timesteps[i + 1]] if i + 1 < len(timesteps) else 1.0
            x = np.sqrt(prev) * x0 + np.sqrt(1 - prev) * eps
    torch.testing.assert_close(ours, x.float(), rtol=1e-4, atol=1e-4)


class GaussianDataOracle(torch.nn.Module):
    """The exact eps-prediction for data ~ N(mu, s^2 I), in float64:
    eps(x_t) = sqrt(1 - abar) (x_t - sqrt(abar) mu) / (abar s^2 + 1 - abar)."""

    def __init__(self, mu: torch.Tensor, s: float):
        super().__init__()
        self.mu, self.s = torch.nn.Parameter(mu, requires_grad=False), s
        self.in_channels = self.out_channels = mu.shape[1]
        self.input_size = tuple(mu.shape[-2:])
        self.abar = torch.as_tensor(np.cumprod(1 - linear_betas(1000)))

    def forward(self, x, t, y=None):
        abar = self.abar[t].view(-1, 1, 1, 1)
        return ((1 - abar).sqrt() * (x.double() - abar.sqrt() * self.mu) / (abar * self.s**2 + 1 - abar)).float()


MU = torch.tensor([0.5, -0.25, 0.8]).view(1, 3, 1, 1).expand(1, 3, 2, 2).contiguous()


@pytest.mark.parametrize("sampler, steps, tolerance", [("ddpm", 100, 2e-2), ("ddim", 20, 1e-3), ("dpm++", 10, 1e-3)])
def test_every_sampler_recovers_a_point_mass(sampler, steps, tolerance):
    out = generate(GaussianDataOracle(MU, 0.0), None, sample_generators(0, range(4)),
                   SamplerSettings(sampler, steps, 1.0), 1000)
    torch.testing.assert_close(out, MU.expand(4, -1, -1, -1), rtol=0, atol=tolerance)


@pytest.mark.parametrize("sampler, steps", [("ddim", 200), ("dpm++", 50)])
def test_ode_samplers_follow_the_closed_form_flow_of_gaussian_data(sampler, steps):
    """For Gaussian data the probability-flow ODE keeps each coordinate's standard score:
    x_0 = mu + s (x_T - sqrt(abar_T) mu) / sqrt(abar_T s^2 + 1 - abar_T), x_T the noise at
    the first timestep. DPM-Solver++ gets there in a quarter of DDIM's steps."""
    s, settings = 0.3, SamplerSettings(sampler, steps, 1.0)
    out = generate(GaussianDataOracle(MU, s), None, sample_generators(0, range(4)), settings, 1000)
    abar = np.cumprod(1 - linear_betas(1000))[int(make_scheduler(settings, 1000, False).timesteps[0])]
    noise = per_sample_noise(sample_generators(0, range(4)), (3, 2, 2)).double()
    expected = MU + s * (noise - np.sqrt(abar) * MU) / np.sqrt(abar * s**2 + 1 - abar)
    torch.testing.assert_close(out, expected.float(), rtol=0, atol=0.03)


def test_guidance_on_all_or_the_first_channels():
    model = tiny_model(seed=3, in_channels=4)
    x, t, labels = torch.randn(2, 4, 8, 8), torch.tensor(500), torch.tensor([2, 6])
    with torch.no_grad():
        cond = model(x, t.expand(2), labels)
        uncond = model(x, t.expand(2), torch.full_like(labels, 10))
        everywhere = guided_model(model, labels, 3.0, None)(x, t)
        first3 = guided_model(model, labels, 3.0, 3)(x, t)
    guided = uncond + 3.0 * (cond - uncond)
    torch.testing.assert_close(everywhere[:, :4], guided[:, :4])
    torch.testing.assert_close(everywhere[:, 4:], cond[:, 4:])  # the variance comes from the conditional half
    torch.testing.assert_close(first3[:, :3], guided[:, :3])
    torch.testing.assert_close(first3[:, 3:], cond[:, 3:])


def test_guidance_needs_a_null_class():
    with pytest.raises(ValueError, match="class-conditional"):
        guided_model(tiny_model(num_classes=0), None, 2.0, None)
    with pytest.raises(ValueError, match="no null class"):
        guided_model(tiny_model(class_dropout_prob=0.0), torch.tensor([1]), 2.0, None)


def test_samples_depend_on_their_seed_and_index_only():
    model, settings = tiny_model(), SamplerSettings("ddpm", 20, 2.0)
    labels = torch.tensor([1, 2, 3, 4])
    together = generate(model, labels, sample_generators(0, range(4)), settings, 1000)
    again = generate(model, labels, sample_generators(0, range(4)), settings, 1000)
    assert torch.equal(together, again)
    split = torch.cat([generate(model, labels[:1], sample_generators(0, [0]), settings, 1000),
                       generate(model, labels[1:], sample_generators(0, [1, 2, 3]), settings, 1000)])
    torch.testing.assert_close(split, together, rtol=1e-5, atol=1e-5)
    other_seed = generate(model, labels, sample_generators(1, range(4)), settings, 1000)
    assert (other_seed - together).abs().mean() > 0.1


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="sampler 'euler'"):
        SamplerSettings("euler").check(1000)
    with pytest.raises(ValueError, match="steps 2000"):
        SamplerSettings("ddpm", 2000).check(1000)
    with pytest.raises(ValueError, match="eta"):
        SamplerSettings("ddpm", ddim_eta=0.5).check(1000)


def test_uint8_quantisation_is_dits():
    pixels = torch.tensor([-1.0, -0.999, 0.0, 0.5, 1.0, 1.5]).view(1, 1, 1, 6)
    out = to_uint8(pixels)
    assert out.shape == (1, 1, 6, 3) and out.dtype == np.uint8
    assert out[0, 0, :, 0].tolist() == [0, 0, 128, 191, 255, 255]
    assert (out[..., 0] == out[..., 2]).all()


@pytest.fixture(scope="module")
def vae_in_a_subfolder(tmp_path_factory):
    """A small random AutoencoderKL saved as a pipeline repo would hold it: <dir>/vae."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=32).eval()
    root = tmp_path_factory.mktemp("pipeline")
    vae.save_pretrained(root / "vae")
    return root, vae


def test_decoder_unscales_latents_and_honours_the_vae_subfolder(vae_in_a_subfolder):
    root, vae = vae_in_a_subfolder
    decoder = Decoder("latent", torch.device("cpu"), str(root), "vae", scaling_factor=0.5, shift_factor=0.1)
    latents = torch.randn(2, 4, 4, 4)
    with torch.no_grad():
        expected = vae.decode(latents / 0.5 + 0.1).sample
    torch.testing.assert_close(decoder(latents), expected)
    with pytest.raises(RuntimeError, match=r"(?s)cannot load the VAE .*--vae DIR"):
        Decoder("latent", torch.device("cpu"), str(root), "no-such-subfolder")(latents)


def test_training_grids_use_the_same_path_and_the_vae_subfolder(vae_in_a_subfolder, tmp_path):
    from dig_scale.config import config_from_dict
    from dig_scale.train.samples import SampleGridWriter

    root, _ = vae_in_a_subfolder
    cfg = config_from_dict({"model": {"name": "DiG-S/2", "input_size": 4, "in_channels": 4, "num_classes": 10,
                                      "arch": {"depth": 2, "hidden_size": 32, "num_heads": 2}},
                            "data": {"path": "unused"}, "sampling": {"num_steps": 10, "classes": [1, 2, 3]}})
    metadata = DatasetMetadata(kind="latent", sample_shape=(4, 4, 4), resolution=16, num_samples=1, num_classes=10,
                               class_counts=[1] * 10, class_names=None, vae=str(root), vae_subfolder="vae",
                               scaling_factor=0.5, shift_factor=0.0, latent_mean=[0.0] * 4, latent_std=[1.0] * 4,
                               preprocessing={}, source={})
    model = tiny_model(input_size=4, in_channels=4)
    path = SampleGridWriter(cfg, metadata, torch.device("cpu")).write(model, tmp_path / "grid.png")
    # Three decoded 16 px images, enlarged 4x to 64 px cells with 2 px borders.
    assert Image.open(path).size == (3 * 66 + 2, 66 + 2)
