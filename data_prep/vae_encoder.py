"""Batches of preprocessed images -> what a dataset stores: VAE posteriors of the image and its
flip (mean and std, unscaled), or the pixels themselves for `--vae none`.

`launch()` only queues work on the GPU and returns a handle; the caller collects the previous
batch while this one runs, so decoding, writing and encoding overlap.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from dig_scale.data.channel_stats import ChannelMoments, pixel_moments

from .errors import EncodeError

LOGVAR_RANGE = (-30.0, 20.0)  # diffusers' DiagonalGaussianDistribution clamps log-variance to this


@dataclass(frozen=True)
class SampleLayout:
    """What one stored sample is: derived from the VAE config and the resolution."""

    kind: str                        # "latent" | "pixel"
    sample_shape: tuple[int, int, int]
    vae: str | None
    scaling_factor: float
    shift_factor: float


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or os.path.exists(spec)


def vae_layout(spec: str, subfolder: str | None, resolution: int, scaling_factor: float | None) -> SampleLayout:
    """Check `--vae` (without loading weights) and work out the latent shape at `resolution`."""
    if spec.lower() == "none":
        return SampleLayout("pixel", (3, resolution, resolution), None, 1.0, 0.0)
    from diffusers import AutoencoderKL

    expected = ("expected a diffusers AutoencoderKL: a hub id such as stabilityai/sd-vae-ft-ema or a local "
                "directory holding its config.json (and weights), or 'none' for pixel data")
    if _looks_like_path(spec):
        config_path = os.path.join(os.path.expanduser(spec), subfolder or "", "config.json")
        if not os.path.isfile(config_path):
            raise EncodeError(f"--vae {spec}: no {config_path}; {expected}")
    try:
        config = AutoencoderKL.load_config(os.path.expanduser(spec), subfolder=subfolder)
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EncodeError(f"--vae {spec}: cannot load it ({reason}); {expected}") from None
    if config.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise EncodeError(f"--vae {spec}: is a {config['_class_name']}, {expected} (for a pipeline repo, add "
                          "--vae-subfolder vae)")
    factor = 2 ** (len(config["block_out_channels"]) - 1)
    if resolution % factor:
        raise EncodeError(f"--resolution {resolution}: must be a multiple of {factor}, the VAE's downsampling factor")
    size = resolution // factor
    return SampleLayout("latent", (config["latent_channels"], size, size), spec,
                        float(scaling_factor if scaling_factor is not None else config.get("scaling_factor", 0.18215)),
                        float(config.get("shift_factor") or 0.0))


@dataclass
class EncodedBatch:
    """Columns to store for B samples, plus their per-channel moments (unscaled)."""

    arrays: dict[str, np.ndarray]  # latent: "mean", "std" (B, 2, C, h, w) float16; pixel: "pixels" (B, 3, R, R) uint8
    moments: ChannelMoments


class _Pending:
    """Results of a queued GPU batch, copied into pinned host memory as the GPU gets to them."""

    def __init__(self, host: torch.Tensor, sums: torch.Tensor, count: int, event: torch.cuda.Event | None):
        self.host, self.sums, self.count, self.event = host, sums, count, event

    def result(self) -> EncodedBatch:
        if self.event is not None:
            self.event.synchronize()
        moments = ChannelMoments()
        moments.add(self.sums[0].numpy(), self.sums[1].numpy(), self.count)
        posterior = self.host.numpy()
        return EncodedBatch({"mean": posterior[:, 0], "std": posterior[:, 1]}, moments)


class _Done:
    def __init__(self, batch: EncodedBatch):
        self.batch = batch

    def result(self) -> EncodedBatch:
        return self.batch


class PosteriorEncoder:
    """A diffusers AutoencoderKL on one device; bf16 on GPU by default (fp32 on CPU)."""

    def __init__(self, layout: SampleLayout, subfolder: str | None, device: torch.device, dtype: torch.dtype):
        from diffusers import AutoencoderKL

        self.layout, self.device, self.dtype = layout, device, dtype
        # low_cpu_mem_usage needs `accelerate`; a VAE is small enough to load plainly.
        vae = AutoencoderKL.from_pretrained(os.path.expanduser(layout.vae), subfolder=subfolder, torch_dtype=dtype,
                                            low_cpu_mem_usage=False)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # batch shapes repeat: pick the fastest conv algorithms once
        # NCHW: on an H100 the SD-VAE encoder runs 36-43% faster than in channels-last (its
        # GroupNorms dominate; bench/results/encode_h100.md measures both).
        self.vae = vae.to(device).eval().requires_grad_(False)

    @torch.inference_mode()
    def posterior(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, R, R) on any device -> float32 (B, 2, 2, C, h, w): [image, flip] x [mean, std]."""
        x = images.to(self.device, non_blocking=True).to(torch.float32).div_(127.5).sub_(1.0).to(self.dtype)
        x = torch.cat([x, x.flip(-1)])
        moments = self.vae.encode(x).latent_dist.parameters.float()  # (2B, 2C, h, w): mean | logvar
        mean, logvar = moments.chunk(2, dim=1)
        std = torch.exp(0.5 * logvar.clamp(*LOGVAR_RANGE))
        b = images.shape[0]
        return torch.stack([mean, std], dim=1).unflatten(0, (2, b)).transpose(0, 1)

    @torch.inference_mode()
    def launch(self, images: torch.Tensor) -> _Pending | _Done:
        if images.shape[0] == 0:
            c, h, w = self.layout.sample_shape
            empty = np.zeros((0, 2, c, h, w), np.float16)
            return _Done(EncodedBatch({"mean": empty, "std": empty}, ChannelMoments()))
        posterior = self.posterior(images)
        mean, std = posterior[:, :, 0].double(), posterior[:, :, 1].double()
        # Moments of z = mean + std * eps: E[z] = mean, E[z^2] = mean^2 + std^2, over images, flips, positions.
        sums = torch.stack([mean.sum(dim=(0, 1, 3, 4)), (mean * mean + std * std).sum(dim=(0, 1, 3, 4))])
        count = posterior.shape[0] * 2 * posterior.shape[-1] * posterior.shape[-2]
        pin = self.device.type == "cuda"
        stored = posterior.transpose(1, 2).to(torch.float16).contiguous()  # (B, 2 [mean|std], 2 [flip], C, h, w)
        host = torch.empty(stored.shape, dtype=torch.float16, pin_memory=pin)
        host.copy_(stored, non_blocking=pin)
        host_sums = torch.empty(sums.shape, dtype=torch.float64, pin_memory=pin)
        host_sums.copy_(sums, non_blocking=pin)
        event = None
        if pin:
            event = torch.cuda.Event()
            event.record()
        return _Pending(host, host_sums, count, event)


class PixelEncoder:
    """`--vae none`: the preprocessed pixels are the sample."""

    def launch(self, images: torch.Tensor) -> _Done:
        pixels = images.numpy()
        return _Done(EncodedBatch({"pixels": pixels}, pixel_moments(pixels) if len(pixels) else ChannelMoments()))
