"""Model names -> constructors: "DiG-{S,B,L,XL}/{2,4,8}" and "DiT-{S,B,L,XL}/{2,4,8}"."""
from __future__ import annotations

import difflib
import inspect

import torch.nn as nn

from .dig import DiG
from .dit import DiT

# size: (depth, hidden_size, DiG heads, DiT heads). DiG-XL uses 18 heads (head dim 64 for v).
SIZES = {"S": (12, 384, 6, 6), "B": (12, 768, 12, 12), "L": (24, 1024, 16, 16), "XL": (28, 1152, 18, 16)}
PATCH_SIZES = (2, 4, 8)
FAMILIES = {"DiG": DiG, "DiT": DiT}


def model_names() -> list[str]:
    return [f"{family}-{size}/{patch}" for family in FAMILIES for size in SIZES for patch in PATCH_SIZES]


def model_defaults(name: str) -> dict:
    """Constructor arguments that `name` stands for."""
    if name not in model_names():
        close = difflib.get_close_matches(name, model_names(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown model {name!r}{hint}; known: {', '.join(model_names())}")
    family, rest = name.split("-", 1)
    size, patch = rest.split("/")
    depth, hidden, dig_heads, dit_heads = SIZES[size]
    heads = dig_heads if family == "DiG" else dit_heads
    return dict(depth=depth, hidden_size=hidden, num_heads=heads, patch_size=int(patch))


def _family(name: str) -> type[nn.Module]:
    model_defaults(name)  # validates the name
    return FAMILIES[name.split("-", 1)[0]]


def constructor_arguments(name: str) -> list[str]:
    """Every argument `create_model(name, **overrides)` accepts."""
    return list(inspect.signature(_family(name)).parameters)


def resolved_arguments(name: str, **overrides) -> dict:
    """Every constructor argument of `name` with the value `create_model(name, **overrides)`
    builds it with: the override, else the size's default, else the constructor's default."""
    accepted = constructor_arguments(name)
    unknown = sorted(set(overrides) - set(accepted))
    if unknown:
        raise TypeError(f"{name} has no argument(s) {unknown}; accepted: {accepted}")
    defaults = {k: p.default for k, p in inspect.signature(_family(name)).parameters.items()
                if p.default is not p.empty}
    return {**defaults, **model_defaults(name), **overrides}


def create_model(name: str, **overrides) -> nn.Module:
    """Build a registered model; any constructor argument can be overridden, e.g.
    create_model("DiG-S/2", input_size=64, depth=4, gla_backend="torch")."""
    return _family(name)(**resolved_arguments(name, **overrides))


def config_arguments(cfg) -> dict:
    """The constructor arguments a `dig_scale.config.ModelConfig` sets."""
    kwargs = dict(input_size=cfg.input_size, in_channels=cfg.in_channels, num_classes=cfg.num_classes,
                  learn_sigma=cfg.learn_sigma, class_dropout_prob=cfg.class_dropout_prob, **cfg.arch)
    if cfg.name.startswith("DiG"):
        kwargs.update(skip=cfg.skip, gla_backend=None if cfg.gla_backend == "auto" else cfg.gla_backend)
    return kwargs


def model_from_config(cfg) -> nn.Module:
    """Build the model described by a `dig_scale.config.ModelConfig`."""
    return create_model(cfg.name, **config_arguments(cfg))
