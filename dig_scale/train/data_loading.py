"""The training data stream: the MDS dataset from data_prep/encode.py through mosaicml-streaming."""
from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.distributed as dist
from streaming import StreamingDataLoader

from dig_scale.config import ConfigError, ExperimentConfig
from dig_scale.data import DatasetMetadata, LatentDataset, default_demo_path, ensure_demo_dataset
from dig_scale.data.integrity import DataError
from dig_scale.data.storage import DatasetFiles, read_dataset
from dig_scale.data.streaming_internals import release_dead_jobs_shared_memory
from dig_scale.launch_env import ProcessPlace
from dig_scale.models.layers import as_grid

from .preemption import ignore_job_signals

DEMO_PREFIX = "demo:"


def resolve_data_path(cfg: ExperimentConfig, place: ProcessPlace) -> str:
    """`demo:digits` -> the built-in digits set at the model's resolution, written on first use by
    the first rank of each node (under $DIG_SCALE_DATA or ~/.cache/dig_scale)."""
    path = cfg.data.path
    if not path.startswith(DEMO_PREFIX):
        return path
    if path != "demo:digits":
        raise ConfigError(f"data.path: unknown built-in dataset {path!r}; available: 'demo:digits'")
    height, width = as_grid(cfg.model.input_size)
    if height != width:
        raise ConfigError(f"model.input_size: the digits demo is square, got {cfg.model.input_size}")
    local = default_demo_path(height)
    if place.local_rank == 0:
        ensure_demo_dataset(local, resolution=height)
    dist.barrier()
    return local


def check_matches_model(metadata: DatasetMetadata, cfg: ExperimentConfig, path: str) -> None:
    """The dataset's samples must be what the model was configured to eat."""
    channels, height, width = metadata.sample_shape
    if channels != cfg.model.in_channels:
        raise ConfigError(f"model.in_channels={cfg.model.in_channels} but {path} holds {channels}-channel samples")
    if (height, width) != as_grid(cfg.model.input_size):
        raise ConfigError(f"model.input_size={cfg.model.input_size} but {path} holds {height}x{width} samples")
    if cfg.model.num_classes and metadata.num_classes > cfg.model.num_classes:
        raise ConfigError(f"model.num_classes={cfg.model.num_classes} but {path} has {metadata.num_classes} classes")


def open_dataset(cfg: ExperimentConfig, place: ProcessPlace) -> DatasetFiles:
    """The dataset data.path names, checked before anything else starts: a finished MDS dataset
    (metadata and a safe index) whose samples fit the model, with at least one micro-batch per
    rank per epoch (with none, the loader would yield nothing, forever)."""
    path = resolve_data_path(cfg, place)
    try:
        files = read_dataset(path)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"data.path: {e}") from None  # e names the path
    check_matches_model(files.metadata, cfg, path)
    per_rank = math.ceil(files.metadata.num_samples / place.world_size)
    if cfg.train.micro_batch_size > per_rank:
        raise ConfigError(f"train.micro_batch_size={cfg.train.micro_batch_size} is larger than the "
                          f"{files.metadata.num_samples} samples of {path} give each of {place.world_size} rank(s) "
                          f"per epoch ({per_rank}); use a micro-batch of at most {per_rank} or more data")
    return files


def build_loader(cfg: ExperimentConfig, place: ProcessPlace, device: torch.device,
                 path: str) -> StreamingDataLoader:
    """This rank's loader of micro-batches {"x", "y", "index"} from the dataset at `path`
    (`open_dataset(...).path`)."""
    if place.local_rank == 0:
        released = release_dead_jobs_shared_memory()
        if released:
            print(f"released the streaming shared memory of {len(released)} job(s) that are gone "
                  f"(prefixes {', '.join(released)})", flush=True)
    dist.barrier()
    dataset = LatentDataset(path, cfg.data.cache_dir, batch_size=cfg.train.micro_batch_size,
                            shuffle=cfg.data.shuffle, seed=cfg.seed, random_flip=cfg.data.random_flip,
                            num_canonical_nodes=cfg.data.num_canonical_nodes)
    workers = cfg.data.num_workers
    loader = StreamingDataLoader(dataset, batch_size=cfg.train.micro_batch_size, num_workers=workers,
                                 drop_last=True, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                                 timeout=cfg.data.wait_timeout_minutes * 60 if workers else 0,
                                 worker_init_fn=ignore_job_signals)
    return loader


def forever(loader: StreamingDataLoader) -> Iterator[dict[str, torch.Tensor]]:
    """Micro-batches across epoch boundaries (each pass over the loader is one epoch). A loader
    whose workers send nothing for its timeout (data.wait_timeout_minutes) is a DataError naming
    what they wait for, not a hang; torch reports it as a bare RuntimeError."""
    while True:
        batches = 0
        try:
            for batch in loader:
                batches += 1
                yield batch
        except DataError as e:
            raise DataError(_own_message(e)) from None
        except RuntimeError as e:
            if not str(e).startswith("DataLoader timed out"):
                raise
            raise DataError(f"no micro-batch from the data loader for {loader.timeout / 60:g} minutes "
                            f"(data.wait_timeout_minutes); waiting for {loader.dataset.describe_wait()}") from None
        if not batches:  # open_dataset refuses the configs that lead here; this keeps it from spinning
            raise DataError(f"an epoch of {loader.dataset.source} gave this rank no micro-batch")


def _own_message(error: DataError) -> str:
    """A worker's DataError as it was raised: torch re-raises it in the trainer with the worker's
    traceback as its message ("Caught DataError in DataLoader worker ...\nOriginal Traceback ...")."""
    text = str(error)
    marker = f"{DataError.__name__}: "
    return text[text.rindex(marker) + len(marker):].strip() if "Original Traceback" in text else text
