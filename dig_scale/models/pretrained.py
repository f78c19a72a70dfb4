"""Exported models: a self-describing folder, and `load_pretrained` to rebuild the model from it
alone (no training config, no DeepSpeed, no pickle).

    <folder>/config.json        what the model is and how its samples are decoded (below)
             ema.safetensors    the EMA weights (fp32, the model's state-dict names)
             live.safetensors   optional: the weights the optimizer trained

config.json:
    format, format_version
    model       {name, arguments}: create_model(name, **arguments) builds it; every constructor
                argument is listed, the ones that only say how to run it set for inference
    weights     {ema: {file, sha256, dtype}, live: {...}}
    diffusion   {num_timesteps, beta_schedule}
    data        what a sample is and how to decode it: kind ("latent" | "pixel"), sample_shape,
                resolution, num_classes, class_names, vae, vae_subfolder, scaling_factor,
                shift_factor, latent_mean, latent_std
    training    {step, config}: the run's resolved experiment config
    source      where the weights came from (checkpoint, hash of its files)
    created, tool
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from .registry import constructor_arguments, create_model

FORMAT, FORMAT_VERSION = "dig-scale-pretrained", 1
CONFIG_FILE = "config.json"
WEIGHT_FILES = {"ema": "ema.safetensors", "live": "live.safetensors"}
SECTIONS = ("model", "weights", "diffusion", "data", "training", "source")
DATA_FIELDS = ("kind", "sample_shape", "resolution", "num_classes", "class_names", "vae", "vae_subfolder",
               "scaling_factor", "shift_factor", "latent_mean", "latent_std")
# Constructor arguments that say how a model runs, not what it computes: exported for inference.
INFERENCE_ARGUMENTS = {"activation_checkpointing": "none", "gla_backend": None}


class PretrainedError(ValueError):
    """An exported folder that is missing, incomplete or not what it claims to be."""


def file_sha256(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def inference_arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments as JSON values, with the run-time ones set for inference."""
    plain = {k: list(v) if isinstance(v, tuple) else v for k, v in arguments.items()}
    return {**plain, **{k: v for k, v in INFERENCE_ARGUMENTS.items() if k in plain}}


def write_pretrained(folder: str | Path, config: dict[str, Any], weights: dict[str, dict[str, torch.Tensor]]) -> Path:
    """Write an exported folder: `config` (every section but `weights`, which this fills in) and
    `weights` {"ema": state_dict, optionally "live": state_dict}. The folder must not exist; it
    appears complete or not at all."""
    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"{folder} already exists; choose a new output folder (nothing was written)")
    missing = [s for s in SECTIONS if s != "weights" and s not in config]
    if missing or "ema" not in weights or set(weights) - set(WEIGHT_FILES):
        raise ValueError(f"config sections missing: {missing}; weights given: {sorted(weights)} "
                         f"(expected 'ema', optionally 'live')")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex[:12]}")
    staging.mkdir()
    try:
        config = {"format": FORMAT, "format_version": FORMAT_VERSION, **config, "weights": {}}
        for kind, state in weights.items():
            path = staging / WEIGHT_FILES[kind]
            save_file({k: v.contiguous() for k, v in state.items()}, str(path))
            dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in state.values()})
            config["weights"][kind] = {"file": path.name, "sha256": file_sha256(path), "dtype": ",".join(dtypes)}
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=1))
        os.rename(staging, folder)  # fails, rather than merging, if the folder appeared meanwhile
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def read_pretrained_config(folder: str | Path) -> dict[str, Any]:
    """The checked config.json of an exported folder."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise PretrainedError(f"{folder}: no {CONFIG_FILE}; expected a folder written by dig_scale.export")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PretrainedError(f"{path}: not valid JSON ({e})") from None
    if config.get("format") != FORMAT or config.get("format_version") != FORMAT_VERSION:
        raise PretrainedError(f"{path}: format {config.get('format')!r} version {config.get('format_version')!r}, "
                              f"this reader understands {FORMAT!r} version {FORMAT_VERSION}")
    missing = [s for s in SECTIONS if not isinstance(config.get(s), dict)]
    missing += [f"data.{k}" for k in DATA_FIELDS if k not in config.get("data", {})]
    missing += [f"model.{k}" for k in ("name", "arguments") if k not in config.get("model", {})]
    if missing:
        raise PretrainedError(f"{path}: missing {', '.join(missing)}")
    model = config["model"]
    try:
        accepted = constructor_arguments(model["name"])
    except ValueError as e:
        raise PretrainedError(f"{path}: model.name: {e}") from None
    unknown = sorted(set(model["arguments"]) - set(accepted))
    absent = sorted(set(accepted) - set(model["arguments"]))
    if unknown or absent:
        raise PretrainedError(f"{path}: model.arguments: unknown {unknown}, missing {absent} for {model['name']}")
    return config


def load_pretrained(folder: str | Path, weights: str = "ema", device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32, **runtime: Any) -> nn.Module:
    """The exported model with its `weights` ("ema" or "live"), in eval mode, on `device` in
    `dtype`. `runtime` may set the run-time arguments (gla_backend="torch", ...). The weight
    file is checked against its recorded sha256; the model holds the only copy of the weights."""
    config = read_pretrained_config(folder)
    unknown = sorted(set(runtime) - set(INFERENCE_ARGUMENTS))
    if unknown:
        raise TypeError(f"load_pretrained: {unknown} are not run-time arguments; those are {list(INFERENCE_ARGUMENTS)}")
    record = config["weights"].get(weights)
    if record is None:
        raise PretrainedError(f"{folder}: no {weights!r} weights; it has {sorted(config['weights'])}")
    path = Path(folder) / record["file"]
    if not path.is_file() or file_sha256(path) != record["sha256"]:
        raise PretrainedError(f"{path}: missing or does not match the sha256 in {CONFIG_FILE}; re-export the model")
    name, arguments = config["model"]["name"], config["model"]["arguments"]
    if isinstance(arguments.get("input_size"), list):
        arguments["input_size"] = tuple(arguments["input_size"])
    with torch.device("meta"):  # no random init: the weights are assigned as loaded
        model = create_model(name, **{**arguments, **runtime})
    state = load_file(str(path), device=str(device))
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise PretrainedError(f"{path} does not fit {name} with the recorded arguments: {e}") from None
    return model.to(dtype).eval().requires_grad_(False)
