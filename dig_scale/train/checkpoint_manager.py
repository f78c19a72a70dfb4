"""Saving and restoring everything an exact resume needs (see ARCHITECTURE.md, "Checkpoints" and
"Resume"). The manager is handed the stateful parts and owns the rest: the DeepSpeed engine's
files, the EMA weights, the trainer state (the trainer's counters and the data loader's position,
with the run's config, its dataset's identity and the code version), the manifest and `latest`,
retention, free space and the conversion to another world size.

    manager = CheckpointManager(run_dir.checkpoints, place, cfg.checkpoint, config_to_dict(cfg), data.identity)
    resume = manager.find_resume(cfg.checkpoint.resume)       # before the engine: it may change its config
    engine = deepspeed.initialize(..., config=manager.engine_config(ds_config, resume))
    manager.track(engine, ema, train=trainer, loader=loader)
    manager.load(resume); ...; manager.save(step)

Methods are collective (every rank calls them); decisions and shared files are rank 0's.
"""
from __future__ import annotations

import errno
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from safetensors.torch import save_file

from dig_scale import __version__
from dig_scale.atomic_file import write_atomically, write_text_atomically
from dig_scale.checkpoint.layout import (
    EMA_WEIGHTS,
    TRAINER_STATE,
    CheckpointError,
    checkpoint_dirs,
    checkpoint_tag,
    describe,
    is_complete,
    tag_step,
    write_latest,
)
from dig_scale.checkpoint.manifest import digests, files_in, read_manifest, verify_checkpoint, write_manifest
from dig_scale.checkpoint.reading import (
    TRAINER_STATE_FORMAT,
    newest_complete_checkpoint,
    read_ema_state_dict,
    read_trainer_state,
)
from dig_scale.checkpoint.retention import delete, doomed
from dig_scale.checkpoint.safe_load import only_safe_torch_loads, refuse_unsafe_types
from dig_scale.checkpoint.universal import convert_to_universal
from dig_scale.config import CheckpointConfig
from dig_scale.data.integrity import describe_identity
from dig_scale.launch_env import ProcessPlace

from .distributed import any_rank, on_main_rank
from .ema import EMA
from .run_dir import config_differences

FREE_SPACE_MARGIN = 1.05  # a save needs the size of the previous one; JSON and metadata vary a little


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class ResumePoint:
    checkpoint: Path
    state: dict[str, Any]  # its trainer_state.json
    other_run: bool = False  # the checkpoint of another run (checkpoint.allow_other_run)


class CheckpointManager:
    def __init__(self, directory: Path, place: ProcessPlace, cfg: CheckpointConfig, config: dict[str, Any],
                 dataset: dict[str, Any]):
        """`config`: the run's config as a dict; `dataset`: the identity of its training data
        (integrity.dataset_identity), recorded in every checkpoint and checked on resume."""
        self.directory, self.place, self.cfg, self.config, self.dataset = directory, place, cfg, config, dataset
        self._parts: tuple | None = None

    # --- before the engine exists -------------------------------------------------------------
    def find_resume(self, mode: str) -> ResumePoint | None:
        """The checkpoint `checkpoint.resume` asks for, verified, with its trainer state."""
        return on_main_rank(lambda: self._find_resume(mode))

    def _find_resume(self, mode: str) -> ResumePoint | None:
        complete = [p for p in checkpoint_dirs(self.directory) if is_complete(p)]
        if mode == "never":
            if complete:
                raise CheckpointError(f"checkpoint.resume=never, but {describe(self.directory)}; starting over would "
                                      "overwrite them: use a new run_name, or move the checkpoints away")
            return None
        if mode == "auto":
            choice = newest_complete_checkpoint(self.directory)
            for note in choice.notes:
                _say(note)
            if choice.checkpoint is None:
                return None
            checkpoint = choice.checkpoint
        else:
            checkpoint = self._explicit(mode)
            verify_checkpoint(checkpoint)
        resume = ResumePoint(checkpoint, read_trainer_state(checkpoint),
                             other_run=checkpoint.resolve().parent != self.directory.resolve())
        if resume.other_run:
            self._check_other_run(resume, complete)
        if resume.state["dataset"] != self.dataset:
            raise CheckpointError(
                f"{checkpoint} was trained on other data than data.path={self.config['data']['path']!r} holds now:\n"
                f"  checkpoint: {describe_identity(resume.state['dataset'])}\n"
                f"  data.path:  {describe_identity(self.dataset)}\n"
                "its loader position means nothing here; point data.path at the dataset it was trained on")
        return resume

    def _explicit(self, mode: str) -> Path:
        candidate = (self.directory / mode if tag_step(mode) is not None else Path(mode)).resolve()
        if tag_step(candidate.name) is None:
            raise CheckpointError(f"checkpoint.resume={mode!r}: expected auto, never, or a checkpoint by tag or path "
                                  f"(checkpoints/step-NNNNNNN); {describe(self.directory)}")
        if not candidate.is_dir():
            raise CheckpointError(f"checkpoint.resume={mode!r}: {candidate} does not exist; {describe(self.directory)}")
        return candidate

    def _check_other_run(self, resume: ResumePoint, own: list[Path]) -> None:
        """Another run's checkpoint goes on only when asked to (checkpoint.allow_other_run), with
        the config differences listed either way; never over this run's own checkpoints, and at
        the same world size (converting would write into the other run's directory)."""
        where = f"checkpoint.resume={self.cfg.resume!r} is a checkpoint of another run ({resume.checkpoint.parent})"
        if own:
            raise CheckpointError(f"{where}, but {describe(self.directory)}; resume this run (checkpoint.resume=auto) "
                                  "or use a new run_name")
        if resume.state["world_size"] != self.place.world_size:
            raise CheckpointError(f"{where}, written by {resume.state['world_size']} ranks; continue it with "
                                  f"{resume.state['world_size']} ranks (this job has {self.place.world_size})")
        differences = [d for d in config_differences(resume.state["config"], self.config)
                       if not d.startswith(("run_name:", "output_dir:", "checkpoint."))]
        listed = "\n  ".join(differences or ["(none besides run_name and output_dir)"])
        if not self.cfg.allow_other_run:
            raise CheckpointError(f"{where}; its config differs from this run's in:\n  {listed}\n"
                                  "set checkpoint.allow_other_run=true to continue from it anyway")
        _say(f"{where}, continued as asked (checkpoint.allow_other_run); config differences:\n  {listed}")

    def engine_config(self, ds_config: dict[str, Any], resume: ResumePoint | None) -> dict[str, Any]:
        """`ds_config`, told to load DeepSpeed's universal format when the checkpoint was written
        at another world size."""
        if resume and resume.state["world_size"] != self.place.world_size:
            return {**ds_config, "checkpoint": {**ds_config.get("checkpoint", {}), "load_universal": True}}
        return ds_config

    # --- with the engine -----------------------------------------------------------------------
    def track(self, engine, ema: EMA, train: Stateful, loader: Stateful) -> None:
        """The stateful parts: the DeepSpeed engine (its own files), the EMA (ema.safetensors),
        the trainer's counters (top level of trainer_state.json) and the loader (its "loader")."""
        self._parts = (engine, ema, train, loader)

    def load(self, resume: ResumePoint) -> None:
        engine, ema, train, loader = self._parts
        state = resume.state
        source = on_main_rank(lambda: self._deepspeed_source(resume))
        try:
            with only_safe_torch_loads():
                load_path, _ = engine.load_checkpoint(str(source.parent), tag=source.name)
        except (RuntimeError, ValueError, KeyError, OSError) as e:
            raise CheckpointError(f"DeepSpeed could not load {source} (written by dig-scale "
                                  f"{state['code_version']}): {e}") from e
        if load_path is None:
            raise CheckpointError(f"DeepSpeed could not load {source}")
        try:
            ema.load_state_dict(read_ema_state_dict(resume.checkpoint))
        except RuntimeError as e:
            raise CheckpointError(f"{resume.checkpoint / EMA_WEIGHTS} does not fit the model: {e}") from None
        train.load_state_dict(state)
        loader.load_state_dict(state["loader"])

    def save(self, step: int) -> Path:
        """Write the checkpoint of `step`; once every file is written, its manifest, then `latest`,
        then retention."""
        engine, ema, train, loader = self._parts
        tag = checkpoint_tag(step)
        path = self.directory / tag
        on_main_rank(lambda: self._prepare(path))
        error = None
        try:
            engine.save_checkpoint(str(self.directory), tag=tag, save_latest=False)
            if self.place.is_main:
                state = {"format": TRAINER_STATE_FORMAT, "code_version": __version__,
                         "world_size": self.place.world_size, "config": self.config, "dataset": self.dataset,
                         **train.state_dict(), "loader": loader.state_dict()}
                write_text_atomically(path / TRAINER_STATE, json.dumps(state, indent=1))
                weights = {name: t.detach().cpu().contiguous() for name, t in ema.state_dict().items()}
                write_atomically(path / EMA_WEIGHTS, lambda tmp: save_file(weights, tmp))
        except (OSError, RuntimeError) as e:
            error = e
        if any_rank(error is not None, engine.device):
            raise CheckpointError(self._save_failure(tag, error))
        on_main_rank(lambda: self._complete(path))
        return path

    # --- rank 0 --------------------------------------------------------------------------------
    def _deepspeed_source(self, resume: ResumePoint) -> Path:
        """What DeepSpeed loads: the checkpoint, or its universal form for another world size;
        its files checked for what they would create before DeepSpeed opens them."""
        source = resume.checkpoint
        if resume.state["world_size"] != self.place.world_size:
            source = convert_to_universal(source)
        refuse_unsafe_types(source)
        return source

    def _prepare(self, path: Path) -> None:
        """Clear what a failed save of this tag left, and make room for the new checkpoint."""
        if path.exists():
            _say(f"replacing {'the checkpoint' if is_complete(path) else 'an unfinished save'} {path}")
            delete([path])
        complete = [p for p in checkpoint_dirs(self.directory) if is_complete(p)]
        if not complete:
            return  # nothing to estimate the size from
        needed = FREE_SPACE_MARGIN * sum(entry["size"] for entry in read_manifest(complete[-1]).values())
        free = shutil.disk_usage(self.directory).free
        if free >= needed:
            return
        candidates = doomed(self.directory, self.cfg.keep_last, self.cfg.keep_every, incoming_step=tag_step(path.name))
        survivors = [p for p in complete if p not in candidates]
        freeable = sum(_size(p) for p in candidates)
        if survivors and free + freeable >= needed:
            _say(f"{_gb(free)} free in {self.directory}, a checkpoint needs about {_gb(needed)}: deleting "
                 f"{', '.join(p.name for p in candidates)} now (retention would after this save)")
            delete(candidates)
            return
        raise CheckpointError(
            f"not enough disk space to save {path.name}: it needs about {_gb(needed)} (the size of "
            f"{complete[-1].name}), {_gb(free)} are free in {self.directory}, and the retention policy "
            f"(keep_last={self.cfg.keep_last}, keep_every={self.cfg.keep_every}) can free only {_gb(freeable)}"
            + ("" if survivors else " without deleting the last complete checkpoint") + "; free some space")

    def _complete(self, path: Path) -> None:
        names = files_in(path)
        write_manifest(path, digests(path, names))
        write_latest(self.directory, path.name)
        delete(doomed(self.directory, self.cfg.keep_last, self.cfg.keep_every))

    def _save_failure(self, tag: str, error: BaseException | None) -> str:
        free = shutil.disk_usage(self.directory).free
        full = isinstance(error, OSError) and error.errno == errno.ENOSPC or free < (64 << 20)
        where = f"rank {self.place.rank}: {error}" if error else "another rank"
        return (f"saving checkpoint {tag} failed ({where})"
                + (f"; the disk holding {self.directory} is full ({_gb(free)} free)" if full else "")
                + "; the run stops here, its last complete checkpoint is intact")


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _gb(size: float) -> str:
    return f"{size / 1e9:.2f} GB"
