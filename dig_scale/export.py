"""Export a training checkpoint's EMA weights as a self-describing folder (dig_scale.models.pretrained).

    python -m dig_scale.export runs/dig_xl2_in1k256 --tag latest --out exports/dig-xl2-400k

Works on a CPU-only machine, for checkpoints written by any number of ranks, holding about one
copy of the weights: the fp32 EMA is read from the checkpoint's `ema.safetensors` (and, with
--live, the live module weights memory-mapped from DeepSpeed's rank-0 model file), never
unpickled. The dataset metadata the training config points to supplies what sampling needs to
decode (sample kind, VAE and its subfolder, scaling/shift factors, latent statistics); if that
dataset is no longer reachable, pass --dataset with its location or a copy of its
dig_scale_dataset.json. The output folder must not exist; it is written completely or not at all.
"""
from __future__ import annotations

import argparse
import dataclasses
import pickle
import sys
from pathlib import Path
from typing import Any

import torch

from dig_scale.checkpoint import CheckpointError, read_ema_state_dict, read_trainer_state, resolve_checkpoint
from dig_scale.checkpoint.layout import MANIFEST
from dig_scale.config import ConfigError, ExperimentConfig, config_from_dict
from dig_scale.data import DatasetMetadata, read_metadata
from dig_scale.data.schema import METADATA_FILENAME, tool_info, utc_timestamp
from dig_scale.models import create_model
from dig_scale.models.pretrained import DATA_FIELDS, file_sha256, inference_arguments, write_pretrained
from dig_scale.models.registry import config_arguments, resolved_arguments

LIVE_WEIGHTS = "mp_rank_00_model_states.pt"  # DeepSpeed (ZeRO stage <= 2): the full module on rank 0


class ExportError(ValueError):
    """A checkpoint or dataset that cannot be exported as asked; nothing was written."""


def dataset_metadata(cfg: ExperimentConfig, dataset: str | None) -> DatasetMetadata:
    """The training dataset's metadata: from `dataset` (a dataset location or a copy of its
    metadata file) if given, else from the config's data.path."""
    if dataset and Path(dataset).is_file():
        return DatasetMetadata.from_json(Path(dataset).read_text(), where=dataset)
    path = dataset or cfg.data.path
    try:
        if path == "demo:digits":  # the built-in set: rewritten on demand (1 s), like the trainer does
            from dig_scale.data import default_demo_path, ensure_demo_dataset
            from dig_scale.models.layers import as_grid

            resolution = as_grid(cfg.model.input_size)[0]
            path = ensure_demo_dataset(default_demo_path(resolution), resolution)
        return read_metadata(path)
    except (FileNotFoundError, OSError, ValueError) as e:
        raise ExportError(f"cannot read the metadata of the training dataset {path!r}, which the export needs to "
                          f"decode samples (kind, VAE, scaling): {e}\npass --dataset with the dataset's location or "
                          f"a copy of its {METADATA_FILENAME}") from None


def check_fits(name: str, arguments: dict[str, Any], state: dict[str, torch.Tensor], what: str) -> None:
    """The weights must be exactly the model's tensors (names and shapes), before anything is written."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in create_model(name, **arguments).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != expected:
        missing, unexpected = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        wrong = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
        raise ExportError(f"the {what} weights do not fit {name}: missing {missing[:5]}, unexpected "
                          f"{unexpected[:5]}, wrong shapes {wrong[:5]}")


def live_state_dict(checkpoint: Path) -> dict[str, torch.Tensor]:
    """DeepSpeed's module weights (in the training dtype), memory-mapped, tensors only."""
    path = checkpoint / LIVE_WEIGHTS
    if not path.is_file():
        raise ExportError(f"{checkpoint}: no {LIVE_WEIGHTS} (live weights); export without --live")
    try:
        module = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["module"]
    except (RuntimeError, pickle.UnpicklingError, KeyError) as e:  # an unpickling refusal names the type
        raise ExportError(f"{path}: cannot read the module weights as plain tensors ({e})") from None
    return dict(module)


def export(source: str | Path, out: str | Path, tag: str = "latest", live: bool = False, dataset: str | None = None,
           vae: str | None = None, vae_subfolder: str | None = None) -> Path:
    out = Path(out)
    if out.exists():
        raise ExportError(f"{out} already exists; choose a new output folder (nothing was written)")
    checkpoint = resolve_checkpoint(source, tag)
    state = read_trainer_state(checkpoint)
    try:
        cfg = config_from_dict(state["config"])
    except ConfigError as e:
        raise ExportError(f"{checkpoint}: its training config no longer loads ({e})") from None
    name = cfg.model.name
    arguments = inference_arguments(resolved_arguments(name, **config_arguments(cfg.model)))
    weights = {"ema": read_ema_state_dict(checkpoint)}
    if live:
        weights["live"] = live_state_dict(checkpoint)
    for kind, tensors in weights.items():
        check_fits(name, arguments, tensors, kind)
    metadata = dataclasses.asdict(dataset_metadata(cfg, dataset))
    if vae:
        metadata.update(vae=vae, vae_subfolder=vae_subfolder)
    manifest = checkpoint / MANIFEST
    config = {
        "model": {"name": name, "arguments": arguments},
        "diffusion": {"num_timesteps": cfg.diffusion.num_timesteps, "beta_schedule": "linear"},
        "data": {k: metadata[k] for k in DATA_FIELDS},
        "training": {"step": state["step"], "world_size": state["world_size"], "config": state["config"]},
        "source": {"checkpoint": str(checkpoint.resolve()), "manifest_sha256": file_sha256(manifest),
                   "note": f"{MANIFEST} lists every file of the checkpoint with its sha256"},
        "created": utc_timestamp(),
        "tool": tool_info("dig_scale.export"),
    }
    return write_pretrained(out, config, weights)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dig_scale.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="run directory, its checkpoints/ directory, or one checkpoint directory")
    parser.add_argument("--tag", default="latest", help="checkpoint tag (e.g. step-0400000); default: latest")
    parser.add_argument("--out", required=True, help="new folder to write")
    parser.add_argument("--live", action="store_true", help="also export the live (non-EMA) weights")
    parser.add_argument("--dataset", help="the training dataset (location or its metadata file), if data.path "
                        "is no longer reachable")
    parser.add_argument("--vae", help="record this VAE (hub id or directory) instead of the dataset's")
    parser.add_argument("--vae-subfolder", help="subfolder of --vae holding the VAE")
    args = parser.parse_args(argv)
    try:
        folder = export(args.source, args.out, args.tag, args.live, args.dataset, args.vae, args.vae_subfolder)
    except (CheckpointError, ExportError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
