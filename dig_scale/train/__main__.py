"""python -m dig_scale.train CONFIG.yaml [key.path=value ...]

The same command on every rank under any launcher (torchrun, deepspeed, srun, Kubernetes);
exits 0 when max_steps is reached, 75 when preempted (launchers requeue on 75), 2 when the
config, the run directory, its checkpoints or the dataset cannot be used (the message says why), 1 otherwise.
"""
from __future__ import annotations

import os
import sys

import torch

from .library_notices import silence_library_notices


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if args else 2
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed is imported
    silence_library_notices()
    from dig_scale.checkpoint import CheckpointError
    from dig_scale.config import ConfigError, load_config
    from dig_scale.data.integrity import DataError
    from dig_scale.launch_env import LaunchEnvError

    from .run_lock import RunDirectoryInUse

    try:
        cfg = load_config(args[0], args[1:])
        from .trainer import Trainer

        trainer = Trainer(cfg)
    except (ConfigError, CheckpointError, DataError, LaunchEnvError, RunDirectoryInUse) as e:
        print(f"{'config error' if isinstance(e, ConfigError) else 'error'}: {e}", file=sys.stderr)
        return 2
    try:
        return trainer.run()
    except (CheckpointError, DataError) as e:  # a save that cannot be written (a full disk), a damaged shard
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
