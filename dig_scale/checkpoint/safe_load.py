"""Loading DeepSpeed's checkpoint files without letting them run code (see ARCHITECTURE.md,
"Trusted and untrusted input").

DeepSpeed's files are torch pickles and DeepSpeed loads them with `weights_only=False`, which
would let a planted file run anything. So: first each file's pickled types are read without
loading it, and anything beyond tensors, containers and the few DeepSpeed types below is refused,
naming the file; then, while DeepSpeed loads, torch is told to load weights only whatever its
callers ask (TORCH_FORCE_WEIGHTS_ONLY_LOAD, read by every torch.load), with those types allowed.
"""
from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Iterator
from pathlib import Path

import torch

from .layout import CheckpointError
from .manifest import read_manifest

FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"


def deepspeed_checkpoint_types() -> list[type]:
    """The types DeepSpeed 0.19's ZeRO-2 files (bf16 and fp32) and their universal conversion
    pickle besides tensors and plain containers (found with get_unsafe_globals_in_checkpoint)."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def _name(kind: type) -> str:
    return f"{kind.__module__}.{kind.__name__}"


def refuse_unsafe_types(checkpoint: Path) -> None:
    """CheckpointError naming the first torch file of `checkpoint` (as its manifest lists them)
    that pickles a type outside the allow-list."""
    allowed = {_name(kind) for kind in deepspeed_checkpoint_types()}
    for path in (checkpoint / name for name in read_manifest(checkpoint) if name.endswith(".pt")):
        try:
            unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) - allowed
        except Exception as e:  # anything but a torch zip file: the loader must not see it either
            raise CheckpointError(f"{path}: not a torch checkpoint file ({type(e).__name__}: {e})") from None
        if unsafe:
            raise CheckpointError(f"{path} pickles {sorted(unsafe)}: refusing to load it (unpickling arbitrary types "
                                  f"can run code); a DeepSpeed file holds tensors, containers and {sorted(allowed)}")


@contextlib.contextmanager
def only_safe_torch_loads() -> Iterator[None]:
    """Every torch.load in this process loads weights only, with DeepSpeed's types allowed."""
    previous = os.environ.get(FORCE_WEIGHTS_ONLY)
    os.environ[FORCE_WEIGHTS_ONLY] = "1"
    try:
        with torch.serialization.safe_globals(deepspeed_checkpoint_types()):
            yield
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"refused to load a checkpoint file that needs more than weights-only loading: "
                              f"{str(e).splitlines()[0]}") from None
    finally:
        if previous is None:
            del os.environ[FORCE_WEIGHTS_ONLY]
        else:
            os.environ[FORCE_WEIGHTS_ONLY] = previous
