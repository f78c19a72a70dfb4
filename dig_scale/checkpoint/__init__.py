"""dig-scale checkpoints: their layout, integrity and reading (see ARCHITECTURE.md, "Checkpoints").

The read-only API for tools such as export; it imports neither DeepSpeed nor torch.distributed:

    checkpoint = resolve_checkpoint("runs/dig_xl2")           # verified; or a tag: tag="step-0400000"
    weights = read_ema_state_dict(checkpoint)                 # fp32 EMA, the model's state-dict names
    state = read_trainer_state(checkpoint)                    # step, config, ...

Saving and restoring during training is `dig_scale.train.checkpoint_manager.CheckpointManager`.
"""
from .layout import CheckpointError, checkpoint_tag
from .manifest import verify_checkpoint
from .reading import read_ema_state_dict, read_trainer_state, resolve_checkpoint

__all__ = ["CheckpointError", "checkpoint_tag", "read_ema_state_dict", "read_trainer_state", "resolve_checkpoint",
           "verify_checkpoint"]
