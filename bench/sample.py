"""Sampling throughput on one GPU: DiG-XL/2 at ImageNet-256 shapes (4x32x32 latents), random
weights, bf16 and fp32, classifier-free guidance (the batch is doubled), for several batch sizes.

    python bench/sample.py [--steps 20] [--batches 32,64,128] [--sampler ddpm]

The scheduler loop is the one `dig_scale.sample` runs (diffusers + per-sample noise streams);
the VAE decode is timed separately (SD-VAE architecture, random weights). Prints img/s for the
given number of steps and the projection to the papers' protocol: 50,000 samples, DDPM 250 steps,
on 8 GPUs. Also checks that bf16 and fp32 sample the same images within bf16's rounding.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dig_scale.models import create_model  # noqa: E402
from dig_scale.sampling import SamplerSettings, generate, sample_generators  # noqa: E402


def sample_batch(model: torch.nn.Module, labels: torch.Tensor, settings: SamplerSettings) -> torch.Tensor:
    return generate(model, labels, sample_generators(0, range(len(labels))), settings, 1000)


def timed(fn) -> tuple[float, torch.Tensor]:
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start, out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batches", default="32,64,128")
    parser.add_argument("--sampler", default="ddpm")
    args = parser.parse_args()
    device = torch.device("cuda")
    torch.manual_seed(0)
    fp32 = create_model("DiG-XL/2").to(device).eval().requires_grad_(False)
    with torch.no_grad():  # DiT's init zeroes the output layer: perturb it so samples are not trivial
        for p in fp32.parameters():
            p.add_(0.01 * torch.randn_like(p))
    bf16 = create_model("DiG-XL/2").to(device).eval().requires_grad_(False)
    bf16.load_state_dict(fp32.state_dict())
    bf16.to(torch.bfloat16)
    settings = SamplerSettings(args.sampler, args.steps, 1.5)
    print(f"{torch.cuda.get_device_name()}: DiG-XL/2, {args.sampler} {args.steps} steps, cfg 1.5")
    for batch in map(int, args.batches.split(",")):
        labels = torch.randint(1000, (batch,), device=device)
        sample_batch(bf16, labels, settings)  # warm-up: Triton compilation and autotuning
        for name, model in (("bf16", bf16), ("fp32", fp32)):
            seconds, out = timed(lambda m=model, y=labels: sample_batch(m, y, settings))
            per_image_250 = seconds / batch * 250 / args.steps
            hours = 50_000 * per_image_250 / 8 / 3600
            print(f"batch {batch:4d} {name}: {batch * args.steps / seconds:8.1f} img-steps/s, "
                  f"{per_image_250:.3f} s/img at 250 steps -> 50k samples on 8 GPUs: {hours:.2f} h, "
                  f"peak {torch.cuda.max_memory_allocated() / 1e9:.1f} GB")
            if name == "bf16":
                reference = out
        print(f"  bf16 vs fp32 samples: max |diff| {(reference - out).abs().max().item():.3g}, "
              f"sample std {out.std().item():.3g}")
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2).to(device)
    latents = torch.randn(32, 4, 32, 32, device=device)
    with torch.no_grad():
        vae.decode(latents)
        seconds, _ = timed(lambda: vae.decode(latents).sample)
    print(f"SD-VAE decode (fp32), 32 latents -> 256 px: {32 / seconds:.1f} img/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
