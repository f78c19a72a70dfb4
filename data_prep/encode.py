"""Encode images into a streaming MDS dataset of VAE posteriors (or pixels) for training.

    python data_prep/encode.py --input /data/imagenet/train --output s3://bucket/in1k-256 \\
        --resolution 256 --vae stabilityai/sd-vae-ft-ema
    python data_prep/encode.py --input 'shards/in1k-{000000..001023}.tar' --output /data/in1k-512-mds --resolution 512
    torchrun --nproc_per_node 8 data_prep/encode.py ...   # each rank encodes every 8th part (srun works too)
    python -m data_prep.encode ...                         # the same, as an installed module
    python data_prep/encode.py --demo                      # the built-in digits dataset, pixel space

The input is cut into parts (ImageFolder: --part-size images; tars: one shard each). Each part
becomes its own MDS sub-dataset with a manifest; when every part is finished, the last rank to
finish writes one index over all of them and the metadata file. Rerunning the same command after
a crash redoes only the unfinished parts. An --output holding anything else (another dataset, an
encode with other settings, unrelated files) is refused before anything is written; --overwrite
deletes its dataset files instead.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

from data_prep.errors import EncodeError
from data_prep.merge import merge_dataset
from data_prep.output_claim import claim_output, foreign_contents
from data_prep.output_store import OutputStore
from data_prep.pipeline import LoopReport, encode_parts
from data_prep.plan import finished_parts, make_plan
from data_prep.preprocess import MAX_ASPECT
from data_prep.sources import DEFAULT_IMAGE_KEYS, ImageFolderSource, open_source
from data_prep.vae_encoder import PixelEncoder, PosteriorEncoder, vae_layout
from dig_scale.data.demo import DEMO_DEFAULT_RESOLUTION, default_demo_path, ensure_demo_dataset
from dig_scale.data.schema import DatasetMetadata, mds_columns
from dig_scale.launch_env import LaunchEnvError, detect_place

DEFAULT_VAE = "stabilityai/sd-vae-ft-ema"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="encode.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", help="ImageFolder directory (<dir>/<class>/<image>) or WebDataset tar shards: "
                                   "path, brace pattern, URL, several joined by '::'")
    p.add_argument("--output", help="dataset directory or object-store URI (s3://, gs://, ...); "
                                    "--demo default: $DIG_SCALE_DATA or ~/.cache/dig_scale")
    p.add_argument("--demo", action="store_true", help="write the built-in digits demo dataset (pixel space)")
    p.add_argument("--resolution", type=int,
                   help=f"output image side in px (default 256; demo {DEMO_DEFAULT_RESOLUTION})")
    p.add_argument("--vae", help=f"diffusers AutoencoderKL hub id or directory, or 'none' for pixels "
                                 f"(default {DEFAULT_VAE}; demo: none)")
    p.add_argument("--vae-subfolder", help="subfolder of --vae holding the VAE (e.g. 'vae' for a pipeline repo)")
    p.add_argument("--scaling-factor", type=float, help="override the VAE config's scaling factor in the metadata")
    p.add_argument("--image-key", default=DEFAULT_IMAGE_KEYS,
                   help="tar entries holding the image, first found wins (default: %(default)s)")
    p.add_argument("--label-key", default="cls",
                   help="tar entry holding the integer class label (default: %(default)s)")
    p.add_argument("--num-classes", type=int, help="number of classes of a tar dataset (default: largest label + 1)")
    p.add_argument("--batch-size", type=int, default=32, help="images per encoder call, each encoded twice: as is "
                                                              "and flipped (default: %(default)s)")
    p.add_argument("--num-workers", type=int, help="decoding workers per rank (default: this rank's share of "
                                                   "the CPU cores, minus one)")
    p.add_argument("--part-size", type=int, default=4096, help="ImageFolder images per part, the unit of resumption "
                                                                  "(default: %(default)s)")
    p.add_argument("--limit", type=int, help="encode only this many inputs (ImageFolder: spread over all classes)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace another dataset or encode in --output: its dataset files are deleted first "
                        "(an unfinished or finished run of this same encode is resumed either way)")
    p.add_argument("--dry-run", action="store_true", help="check the inputs and show the plan, write nothing")
    p.add_argument("--device", help="default: cuda:$LOCAL_RANK when CUDA is available, else cpu")
    p.add_argument("--precision", choices=["auto", *DTYPES], default="auto",
                   help="VAE precision; auto: bf16 on GPU, fp32 on CPU")
    p.add_argument("--staging-dir", help="local directory for files on their way to a remote --output")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.demo:
        if args.input or args.overwrite or (args.vae and args.vae.lower() != "none"):
            p.error("--demo is the built-in pixel-space digits dataset: it takes no --input or --overwrite "
                    "and only --vae none")
        args.resolution = args.resolution or DEMO_DEFAULT_RESOLUTION
    else:
        if not args.input or not args.output:
            p.error("--input and --output are required (or --demo)")
        args.resolution = args.resolution or 256
        args.vae = args.vae or DEFAULT_VAE
    for name in ("resolution", "batch_size", "part_size", "limit", "num_classes"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if args.num_workers is not None and args.num_workers < 0:
        p.error(f"--num-workers must be >= 0, got {args.num_workers}")
    return args


def preprocessing(resolution: int) -> dict:
    return {"method": "adm_center_crop", "resolution": resolution,
            "steps": [f"reject aspect ratios above {MAX_ASPECT}:1",
                      "convert to 8-bit RGB (alpha dropped; 16-bit grey: v >> 8; float: [0, 1] x 255)",
                      "BOX-halve while the short side >= 2 x resolution",
                      "BICUBIC-resize the short side to resolution", "center crop"],
            "flip": "latents of the image and of its horizontal flip are both stored"}


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_num_workers(local_world: int) -> int:
    """Decoding workers per rank: its share of the CPU cores, minus one for the main process."""
    return max(1, min(32, _cpus() // local_world - 1))


def run(args: argparse.Namespace) -> tuple[DatasetMetadata | None, LoopReport | None]:
    """Encode per `args`; returns the metadata if this rank finished the dataset, and this rank's loop report."""
    place = detect_place()
    rank, world, local_rank, local_world = place.rank, place.world_size, place.local_rank, place.local_world_size
    if args.demo:
        path = args.output or default_demo_path(args.resolution)
        if args.dry_run:
            print(f"dry run: would write the digits demo at {args.resolution} px to {path} unless finished there")
            return None, None
        try:
            print(f"demo dataset ready: {ensure_demo_dataset(path, args.resolution)}")
        except ValueError as e:  # the path holds something else: refused, left as it is
            raise EncodeError(str(e)) from None
        return None, None
    source = open_source(args.input, args.image_key, args.label_key, args.num_classes)
    layout = vae_layout(args.vae, args.vae_subfolder, args.resolution, args.scaling_factor)
    parts = source.plan_parts(args.part_size, args.limit)
    is_folder = isinstance(source, ImageFolderSource)
    settings = {"kind": layout.kind, "sample_shape": layout.sample_shape, "resolution": args.resolution,
                "vae": layout.vae, "vae_subfolder": args.vae_subfolder, "scaling_factor": layout.scaling_factor,
                "shift_factor": layout.shift_factor, "source": source.describe(),
                "num_classes": source.num_classes if is_folder else args.num_classes,
                "part_size": args.part_size if is_folder else None, "limit": args.limit,
                "preprocessing": preprocessing(args.resolution)}
    store = OutputStore(args.output, args.staging_dir)
    plan = make_plan(settings, parts)
    if args.dry_run:
        _print_plan(source, layout, parts, plan, store, rank, world, args.overwrite)
        return None, None
    claim_output(store, plan, overwrite=args.overwrite, rank=rank)
    done = finished_parts(store, parts)
    mine = [p for p in parts if p.index % world == rank and p.index not in done]
    report = None
    if mine:
        report = _encode(args, source, layout, mine, store, rank, world, local_rank, local_world)
    done = finished_parts(store, parts)
    if len(done) < len(parts):
        print(f"rank {rank}: its parts are finished; {len(parts) - len(done)} parts of other ranks are not yet, "
              "the last rank to finish merges the dataset")
        return None, report
    metadata = merge_dataset(store, plan, parts, done)
    print(f"wrote {metadata.num_samples} samples ({metadata.kind} {tuple(metadata.sample_shape)}, "
          f"{metadata.num_classes} classes) to {store}; {len(metadata.rejects)} inputs rejected")
    for reject in metadata.rejects[:10]:
        print(f"  rejected {reject['path']}: {reject['reason']}", file=sys.stderr)
    return metadata, report


def _encode(args, source, layout, parts, store, rank, world, local_rank, local_world) -> LoopReport:
    device = torch.device(args.device or (f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dtype = DTYPES.get(args.precision) or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    encoder = PixelEncoder() if layout.kind == "pixel" else PosteriorEncoder(layout, args.vae_subfolder, device, dtype)
    counts = [source.expected_count(p) for p in parts]
    num_workers = args.num_workers if args.num_workers is not None else default_num_workers(local_world)
    threads = torch.get_num_threads()
    if device.type == "cpu":  # leave the decoding workers their cores: oversubscribed OpenMP convs crawl
        torch.set_num_threads(max(1, _cpus() // local_world - num_workers))
    try:
        report = encode_parts(
            source, parts, encoder, store, mds_columns(layout.kind, layout.sample_shape),
            resolution=args.resolution, batch_size=args.batch_size, num_workers=num_workers,
            pin_memory=device.type == "cuda", progress=rank == 0 and not args.no_progress,
            expected_inputs=sum(counts) if None not in counts else None,
            description=f"rank {rank}/{world}" if world > 1 else "encode")
    finally:
        torch.set_num_threads(threads)
    print(f"rank {rank}: {report.encoded} images encoded, {report.rejected} rejected, {report.parts} parts, "
          f"{report.seconds:.1f} s ({report.images_per_second:.1f} img/s)")
    return report


def _print_plan(source, layout, parts, plan, store, rank, world, overwrite) -> None:
    described = source.describe()
    problem, _ = foreign_contents(store, plan)
    done = finished_parts(store, parts) if problem is None else {}
    mine = [p for p in parts if p.index % world == rank and p.index not in done]
    print(f"source: {described['type']} {described['input']} "
          f"({described.get('files', described.get('shards'))} {'files' if 'files' in described else 'shards'}"
          f"{f', {source.num_classes} classes' if isinstance(source, ImageFolderSource) else ''})")
    print(f"samples: {layout.kind} {layout.sample_shape}" + (f" from VAE {layout.vae}, scaling factor "
                                                            f"{layout.scaling_factor}" if layout.vae else ""))
    print(f"output: {store}: {len(parts)} parts, {len(done)} finished, {len(mine)} to encode by rank {rank}/{world}")
    if problem is not None:
        print(f"output: {store} {problem}; " + ("its dataset files would be deleted (--overwrite)" if overwrite
                                                  else "it would be refused (see --overwrite)"))
    print("dry run: nothing written")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except (EncodeError, LaunchEnvError) as e:
        print(f"encode.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
