"""One experiment's configuration: typed dataclasses, loaded from YAML plus `a.b.c=value` overrides.

    cfg = load_config("configs/dig_s2_in1k256.yaml", ["optim.lr=2e-4", "model.name=DiG-B/2"])
    python -m dig_scale.config configs/dig_s2_in1k256.yaml optim.lr=2e-4   # print the resolved YAML

Unknown keys, wrong types and bad values raise ConfigError naming the dotted key, the value
and what was expected.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A user-fixable problem in an experiment config."""


@dataclass
class ModelConfig:
    name: str = "DiG-S/2"                      # registry name: DiG-{S,B,L,XL}/{2,4,8}, DiT-...
    input_size: int | tuple[int, int] = 32     # latent grid (image px / 8 for SD VAEs); [h, w] if not square
    in_channels: int = 4
    num_classes: int = 1000                    # 0: unconditional
    learn_sigma: bool = True
    class_dropout_prob: float = 0.1            # label dropout for classifier-free guidance
    skip: bool = False                         # DiG U-shape variant (long skips)
    gla_backend: Literal["auto", "torch", "triton"] = "auto"  # auto: triton on CUDA, torch elsewhere
    activation_checkpointing: str = "none"     # none | all | every:K | first:N (blocks recomputed in backward)
    arch: dict[str, Any] = field(default_factory=dict)  # any other constructor argument (depth, hidden_size, ...)

    def check(self) -> None:
        from dig_scale.models import constructor_arguments
        from dig_scale.train.activation_checkpointing import POLICIES, blocks_to_checkpoint

        try:
            accepted = constructor_arguments(self.name)
        except ValueError as e:
            raise ConfigError(f"model.name: {e}") from None
        own_fields = [f.name for f in dataclasses.fields(self)]
        for key in self.arch:
            if key in own_fields:
                raise ConfigError(f"model.arch.{key}: set model.{key} instead")
            if key not in accepted:
                raise ConfigError(f"model.arch.{key}: {self.name} has no such argument"
                                  f"{_did_you_mean(key, accepted, 'model.arch.')}")
        if self.name.startswith("DiT") and (self.skip or self.gla_backend != "auto"):
            raise ConfigError("model.skip / model.gla_backend: only DiG models have long skips and GLA backends")
        self._check_shape()
        _require(0 <= self.class_dropout_prob < 1, "model.class_dropout_prob", self.class_dropout_prob,
                 "a value in [0, 1)")
        _require(self.num_classes >= 0, "model.num_classes", self.num_classes, "a count >= 0")
        try:
            blocks_to_checkpoint(self.activation_checkpointing, 1)
        except ValueError:
            raise ConfigError(f"model.activation_checkpointing: {self.activation_checkpointing!r} is not one of "
                              f"{POLICIES} (K, N positive integers)") from None
        self._check_builds()

    def _check_shape(self) -> None:
        """The sizes that make a model, named by the key that sets them (model.arch.* or the
        model's name), so that a model with no blocks or a width its heads cannot split never starts."""
        from dig_scale.models.layers import as_grid
        from dig_scale.models.registry import model_defaults

        sizes = {**model_defaults(self.name), **self.arch}

        def key(name: str) -> str:
            return f"model.arch.{name}" if name in self.arch else f"model.name ({self.name}'s {name})"

        def setting(name: str) -> str:
            return f"model.arch.{name}={sizes[name]}" if name in self.arch else \
                f"{name}={sizes[name]} ({self.name}'s default)"

        for name in ("depth", "hidden_size", "num_heads", "patch_size"):
            value = sizes[name]
            _require(isinstance(value, int) and not isinstance(value, bool) and value > 0, key(name), value,
                     "a positive integer")
        _require(self.in_channels > 0, "model.in_channels", self.in_channels, "a positive integer")
        if sizes["hidden_size"] % sizes["num_heads"]:
            raise ConfigError(f"{setting('hidden_size')} is not divisible by {setting('num_heads')}")
        grid, patch = as_grid(self.input_size), sizes["patch_size"]
        if min(grid) < 1 or grid[0] % patch or grid[1] % patch:
            raise ConfigError(f"model.input_size: got {self.input_size}, expected positive sides divisible by "
                              f"{setting('patch_size')}")

    def _check_builds(self) -> None:
        """Build the model without memory (meta device): whatever else its constructor refuses
        is refused now, not at step 1."""
        import torch

        from dig_scale.models import model_from_config

        try:
            with torch.device("meta"):
                model_from_config(self)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"model ({self.name} with model.arch={self.arch}): {e}") from None


@dataclass
class DiffusionConfig:
    num_timesteps: int = 1000      # the linear beta schedule of DDPM/DiT over this many steps

    def check(self) -> None:
        _require(self.num_timesteps > 0, "diffusion.num_timesteps", self.num_timesteps, "a positive integer")


@dataclass
class DataConfig:
    path: str = ""                 # MDS dataset from data_prep/encode.py: local dir or object-store URI;
                                   # "demo:digits" = the built-in digits set, written on first use
    cache_dir: str | None = None   # local cache for remote datasets (default: one per dataset under the
                                   # temp dir); set it for read-only or shared local datasets too:
                                   # streaming decompresses shards next to where it reads them
    num_workers: int = 4
    wait_timeout_minutes: float = 10.0  # loader workers send nothing this long: stop, naming what they wait for
                                        # (with num_workers=0, train.hang_dump_minutes dumps where it waits)
    shuffle: bool = True
    random_flip: bool = True       # train on the stored horizontal flip half of the time
    num_canonical_nodes: int = 8   # fixes the global sample order; keep it across resumes and world sizes

    def check(self) -> None:
        _require(bool(self.path), "data.path", self.path, "the dataset written by data_prep/encode.py")
        _require(self.num_canonical_nodes > 0, "data.num_canonical_nodes", self.num_canonical_nodes, "> 0")
        _require(self.num_workers >= 0, "data.num_workers", self.num_workers, "a count >= 0 (0: load in the trainer)")
        _require(self.wait_timeout_minutes > 0, "data.wait_timeout_minutes", self.wait_timeout_minutes, "> 0")


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0          # linear warm-up to lr, then constant
    grad_clip: float = 0.0         # max global grad norm; 0 disables (the paper uses none)

    def check(self) -> None:
        _require(self.lr > 0, "optim.lr", self.lr, "a positive learning rate")
        for i, beta in enumerate(self.betas):
            _require(0 <= beta < 1, f"optim.betas[{i}]", beta, "a value in [0, 1)")
        _require(self.eps > 0, "optim.eps", self.eps, "a positive number")
        _require(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay, "a value >= 0")
        _require(self.warmup_steps >= 0, "optim.warmup_steps", self.warmup_steps, "a step count >= 0")
        _require(self.grad_clip >= 0, "optim.grad_clip", self.grad_clip, "a norm >= 0 (0 disables)")


@dataclass
class TrainConfig:
    global_batch_size: int = 256   # = micro_batch_size x gradient accumulation x world size
    micro_batch_size: int = 32
    max_steps: int = 400_000
    ema_decay: float = 0.9999
    precision: Literal["bf16", "fp32"] = "bf16"
    compile: bool = False          # torch.compile the model
    cuda_graphs: bool = False      # with compile, on CUDA: replay each compiled block's kernels from a CUDA graph
    max_consecutive_skips: int = 20  # steps skipped for non-finite loss/gradients in a row before aborting
    distributed_timeout_minutes: float = 30.0
    hang_dump_minutes: float = 20.0  # a step taking longer dumps every thread's stack to stderr

    def check(self) -> None:
        for key in ("global_batch_size", "micro_batch_size", "max_steps"):
            _require(getattr(self, key) > 0, f"train.{key}", getattr(self, key), "a positive integer")
        _require(0 <= self.ema_decay < 1, "train.ema_decay", self.ema_decay, "a value in [0, 1)")
        _require(self.max_consecutive_skips > 0, "train.max_consecutive_skips", self.max_consecutive_skips,
                 "a positive integer")
        for key in ("distributed_timeout_minutes", "hang_dump_minutes"):
            _require(getattr(self, key) > 0, f"train.{key}", getattr(self, key), "a positive number of minutes")


@dataclass
class CheckpointConfig:
    every_steps: int = 5000        # 0: no periodic checkpoints
    keep_last: int = 2             # most recent checkpoints kept
    keep_every: int = 50_000       # also keep every checkpoint at a multiple of this step (0: none)
    final: bool = True             # checkpoint when max_steps is reached
    resume: str = "auto"           # auto (the newest complete checkpoint of this run, if any) | never |
                                   # one of this run's checkpoints, by tag (step-0005000) or path |
                                   # another run's checkpoint by path (needs allow_other_run)
    allow_other_run: bool = False  # continue from another run's checkpoint despite config differences

    def check(self) -> None:
        _require(self.every_steps >= 0, "checkpoint.every_steps", self.every_steps, ">= 0 (0: never)")
        _require(self.keep_last >= 1, "checkpoint.keep_last", self.keep_last, ">= 1")
        _require(bool(self.resume.strip()), "checkpoint.resume", self.resume,
                 "auto, never, or a checkpoint (tag or path)")


@dataclass
class LoggingConfig:
    every_steps: int = 100
    wandb: Literal["disabled", "offline", "online"] = "disabled"
    wandb_project: str = "dig-scale"
    wandb_entity: str | None = None

    def check(self) -> None:
        _require(self.every_steps > 0, "logging.every_steps", self.every_steps, "a positive integer")


@dataclass
class SamplingConfig:
    every_steps: int = 10_000      # EMA sample grid during training (0: never)
    num_steps: int = 250           # respaced sampling steps
    cfg_scale: float = 4.0
    classes: list[int] = field(default_factory=lambda: [207, 360, 387, 974, 88, 979, 417, 279])
    seed: int = 0

    def check(self) -> None:
        _require(self.every_steps >= 0, "sampling.every_steps", self.every_steps, ">= 0 (0: never)")
        _require(self.num_steps > 0, "sampling.num_steps", self.num_steps, "a positive integer")


@dataclass
class ExperimentConfig:
    run_name: str = ""             # runs/<run_name>; defaults to the config file's name
    output_dir: str = "runs"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    deepspeed: dict[str, Any] = field(default_factory=dict)  # merged over the generated DeepSpeed config

    def check(self) -> None:
        """What no single section can check alone."""
        _require(self.sampling.num_steps <= self.diffusion.num_timesteps, "sampling.num_steps",
                 self.sampling.num_steps, f"at most diffusion.num_timesteps={self.diffusion.num_timesteps}")
        if self.train.cuda_graphs:
            _require(self.train.compile, "train.cuda_graphs", True, "false unless train.compile is true "
                     "(torch.compile records the graphs): add train.cuda_graphs=false")
            _require(self.model.activation_checkpointing == "none", "train.cuda_graphs", True,
                     "false with model.activation_checkpointing (a block recomputed in the backward pass "
                     "would replay the graph its forward recorded): add train.cuda_graphs=false")


def _require(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: got {value!r}, expected {expected}")


def _did_you_mean(key: str, choices: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(key, choices, n=1)
    return f" (did you mean {prefix + close[0]!r}?)" if close else ""


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + "|".join(str(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (tuple, list, dict):
        return str(tp).replace("typing.", "")
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """`value` as type `tp`, converting strings (from YAML or the command line) where unambiguous."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    wrong = ConfigError(f"{key}: got {value!r}, expected {_type_name(tp)}")
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise wrong
        return _build(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arm in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arm, key)
            except ConfigError:
                continue
        raise wrong
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{key}: {value!r} is not {_type_name(tp)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise wrong
    if tp in (int, float):
        if isinstance(value, bool):
            raise wrong
        if isinstance(value, str):
            try:
                value = float(value) if tp is float else int(value)
            except ValueError:
                raise wrong from None
        if tp is float and isinstance(value, (int, float)) and not math.isfinite(value):
            raise ConfigError(f"{key}: got {value!r}, expected a finite number")
        if tp is int and isinstance(value, int) or tp is float and isinstance(value, (int, float)):
            return tp(value)
        raise wrong
    if tp is str:
        if isinstance(value, str):
            return value
        raise wrong
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)) or origin is tuple and len(value) != len(args):
            raise wrong
        items = [_coerce(v, args[i] if origin is tuple else args[0], f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise wrong
        return dict(value)
    raise TypeError(f"config field {key} has unsupported type {tp}")


def _build(cls: type, raw: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    dotted = f"{prefix}." if prefix else ""
    for key in raw:
        if key not in names:
            raise ConfigError(f"{dotted}{key}: unknown key{_did_you_mean(str(key), names, dotted)}")
    kwargs = {k: _coerce(v, hints[k], f"{dotted}{k}") for k, v in raw.items()}
    obj = cls(**kwargs)
    if hasattr(obj, "check"):
        obj.check()
    return obj


def _set_dotted(raw: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = raw
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parents[:i + 1])}: is a value, cannot set {dotted}")
        node = child
    node[leaf] = value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` strings to a raw config dict; values are parsed as YAML scalars/lists."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected key=value, e.g. optim.lr=2e-4")
        _set_dotted(raw, key.strip(), yaml.safe_load(text) if text.strip() else "")
    return raw


def config_from_dict(raw: dict) -> ExperimentConfig:
    return _build(ExperimentConfig, raw)


def config_to_dict(cfg: ExperimentConfig) -> dict:
    def plain(x: Any) -> Any:
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        return x

    return plain(dataclasses.asdict(cfg))


def dump_config(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Read a YAML experiment file, apply overrides, validate. run_name defaults to the file stem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    raw.setdefault("run_name", path.stem)
    return config_from_dict(apply_overrides(raw, list(overrides)))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print("usage: python -m dig_scale.config CONFIG.yaml [key.path=value ...]  (prints the resolved config)")
        return 0 if args else 2
    try:
        print(dump_config(load_config(args[0], args[1:])), end="")
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
