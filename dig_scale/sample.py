"""Sample an exported model (dig_scale.export) into an ADM-style .npz or a PNG grid.

    python -m dig_scale.sample EXPORT --grid --classes 207,360,387,974 --out grid.png
    torchrun --nproc_per_node 8 -m dig_scale.sample EXPORT --num-samples 50000 \\
        --cfg-scale 1.5 --sampler ddpm --steps 250 --out samples/dig-xl2.npz

Sample i is drawn from its own random stream (seed, i) and samples are computed in fixed parts
of --batch-size, so the images do not depend on the number of ranks. The parts are kept in
<out>.parts/ until all are done: rerun the same command after an interruption to resume.
Labels: --classes cycles through the given classes; without it they are uniform at random
(ADM's protocol), from --seed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from dig_scale.models import load_pretrained
from dig_scale.models.pretrained import PretrainedError, read_pretrained_config
from dig_scale.sampling import SAMPLERS, Decoder, SamplerSettings, generate, sample_generators, save_grid, to_uint8
from dig_scale.sampling.parts import PartStore

TIMEOUT_MINUTES = 60  # the longest a rank waits for the others (e.g. for a slower rank's last part)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dig_scale.sample", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export", type=Path, help="folder written by dig_scale.export")
    parser.add_argument("--out", type=Path, required=True, help=".npz (ADM layout) or, with --grid, .png")
    parser.add_argument("--grid", action="store_true", help="write a PNG grid (one column per class)")
    parser.add_argument("--num-samples", type=int, help="default: one per class for a grid")
    parser.add_argument("--classes", type=lambda s: [int(c) for c in s.split(",")],
                        help="comma-separated class indices, cycled over the samples")
    parser.add_argument("--sampler", choices=SAMPLERS, default="ddpm")
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--cfg-scale", type=float, default=1.5, help="classifier-free guidance; 1 = none")
    parser.add_argument("--guided-channels", type=int, help="guide only the first K noise channels (DiT's "
                        "published samples: 3); default all")
    parser.add_argument("--ddim-eta", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32, help="samples per part (and per forward pass)")
    parser.add_argument("--weights", choices=("ema", "live"), default="ema")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto", help="auto: bf16 on GPU")
    parser.add_argument("--vae", help="use this VAE (hub id or local dir) instead of the one the export records")
    parser.add_argument("--vae-subfolder", help="subfolder of --vae holding the VAE")
    args = parser.parse_args(argv)
    if args.out.suffix != (".png" if args.grid else ".npz"):
        parser.error(f"--out {args.out}: expected a {'.png' if args.grid else '.npz'} file")
    if not args.grid and not args.num_samples:
        parser.error("--num-samples is required for an .npz")
    if args.num_samples is not None and args.num_samples < 1 or args.batch_size < 1:
        parser.error("--num-samples and --batch-size must be positive")
    if args.out.exists():
        parser.error(f"--out {args.out} already exists; choose another name (nothing is overwritten)")
    return args


def class_labels(num_samples: int, num_classes: int, classes: list[int] | None, seed: int) -> np.ndarray | None:
    """Every sample's class: `classes` cycled, else uniform at random from `seed`; None if the
    model is unconditional."""
    if num_classes == 0:
        if classes:
            raise ValueError("--classes given, but the model is unconditional")
        return None
    if classes:
        bad = [c for c in classes if not 0 <= c < num_classes]
        if bad:
            raise ValueError(f"--classes {bad}: the model knows classes 0..{num_classes - 1}")
        return np.array([classes[i % len(classes)] for i in range(num_samples)], dtype=np.int64)
    return torch.randint(num_classes, (num_samples,), generator=torch.Generator().manual_seed(seed)).numpy()


class Job:
    """The model, decoder and settings of one invocation; turns sample indices into images."""

    def __init__(self, args: argparse.Namespace, device: torch.device):
        self.config = read_pretrained_config(args.export)
        diffusion = self.config["diffusion"]
        if diffusion.get("beta_schedule") != "linear":
            raise PretrainedError(f"{args.export}: beta_schedule {diffusion.get('beta_schedule')!r}, "
                                  "this sampler knows 'linear'")
        self.num_timesteps = diffusion["num_timesteps"]
        self.settings = SamplerSettings(args.sampler, args.steps, args.cfg_scale, args.guided_channels, args.ddim_eta)
        self.settings.check(self.num_timesteps)
        precision = args.precision if args.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
        self.precision = precision
        self.model = load_pretrained(args.export, args.weights, device,
                                     torch.bfloat16 if precision == "bf16" else torch.float32)
        self.decoder = Decoder.from_record(self.config["data"], device, args.vae, args.vae_subfolder)
        self.seed, self.device = args.seed, device

    def images(self, indices: range, labels: np.ndarray | None) -> np.ndarray:
        y = torch.from_numpy(labels[indices]).to(self.device) if labels is not None else None
        samples = generate(self.model, y, sample_generators(self.seed, indices), self.settings, self.num_timesteps)
        return to_uint8(self.decoder(samples))


def write_grid(args: argparse.Namespace, job: Job) -> Path:
    num_classes = job.config["model"]["arguments"]["num_classes"]
    classes = args.classes or job.config["training"].get("config", {}).get("sampling", {}).get("classes")
    classes = [c % num_classes for c in classes or range(10)] if num_classes else None
    count = args.num_samples or (len(classes) if classes else 8)
    labels = class_labels(count, num_classes, classes, args.seed)
    batches = [job.images(range(i, min(i + args.batch_size, count)), labels) for i in range(0, count, args.batch_size)]
    return save_grid(np.concatenate(batches), args.out, columns=len(classes) if classes else 8)


def write_npz(args: argparse.Namespace, job: Job, rank: int, world_size: int) -> Path | None:
    """Every rank samples its share of the missing parts; rank 0 assembles the .npz."""
    from tqdm.auto import tqdm

    num_classes = job.config["model"]["arguments"]["num_classes"]
    labels = class_labels(args.num_samples, num_classes, args.classes, args.seed)
    weights = job.config["weights"][args.weights]
    plan = {"export": str(args.export.resolve()), "weights": args.weights, "weights_sha256": weights["sha256"],
            "sampler": args.sampler, "steps": args.steps, "cfg_scale": args.cfg_scale,
            "guided_channels": args.guided_channels, "ddim_eta": args.ddim_eta, "seed": args.seed,
            "num_samples": args.num_samples, "batch_size": args.batch_size, "classes": args.classes,
            "precision": job.precision, "vae": args.vae, "vae_subfolder": args.vae_subfolder}
    store = PartStore(args.out, plan)
    if rank == 0:
        store.prepare()
    dist.barrier()
    missing = store.missing()
    dist.barrier()  # every rank has listed the parts before any is written
    mine = missing[rank::world_size]
    if rank == 0:
        print(f"{args.num_samples} samples in {store.num_parts} parts of {args.batch_size}: "
              f"{store.num_parts - len(missing)} done, {len(missing)} to do on {world_size} rank(s) "
              f"({args.sampler}, {args.steps} steps, cfg {args.cfg_scale}, {job.precision}, {job.device.type})",
              flush=True)
    bar = tqdm(total=sum(len(store.indices(k)) for k in mine), unit="img", disable=rank != 0,
               desc=f"rank 0 of {world_size}", smoothing=0.1)
    for part in mine:
        indices = store.indices(part)
        store.write(part, job.images(indices, labels), None if labels is None else labels[indices])
        bar.update(len(indices))
    bar.close()
    if world_size > 1:
        print(f"rank {rank}: parts done; waiting for the other ranks' parts", flush=True)
    dist.barrier()
    return store.assemble(labels) if rank == 0 else None


def main(argv: list[str] | None = None) -> int:
    from dig_scale.launch_env import detect_place
    from dig_scale.train.distributed import init_distributed

    args = parse_args(argv)
    place = detect_place()
    if args.grid and place.world_size > 1:
        print("error: a grid is written by one process; run it without torchrun", file=sys.stderr)
        return 2
    device = init_distributed(place, TIMEOUT_MINUTES)
    try:
        job = Job(args, device)
        if args.grid:
            path = write_grid(args, job)
        else:
            path = write_npz(args, job, place.rank, place.world_size)
    except (PretrainedError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        dist.destroy_process_group()
    if path is not None:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
