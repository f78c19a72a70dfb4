"""python -m dig_scale.train CONFIG.yaml [key.path=value ...]

The same command on every rank under any launcher (torchrun, deepspeed, srun, Kubernetes);
exits 0 when max_steps is reached, 75 when preempted (launchers requeue on 75), 2 when the
config, the run directory, its checkpoints or the dataset cannot be used (the message says why), 1 otherwise.
"""
from __future__ import annotations

import os
import sys
import traceback

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

    from .preemption import PreemptionHandler
    from .run_lock import RunDirectoryInUse

    with PreemptionHandler() as preemption:  # from here on a preemption signal is recorded, never fatal
        try:
            cfg = load_config(args[0], args[1:])
            from .trainer import Trainer

            trainer = Trainer(cfg, preemption)
        except (ConfigError, CheckpointError, DataError, LaunchEnvError, RunDirectoryInUse) as e:
            print(f"{'config error' if isinstance(e, ConfigError) else 'error'}: {e}", file=sys.stderr)
            return _preempted_start_up() if preemption.received else 2
        except Exception:
            if not preemption.received:
                raise
            traceback.print_exc()
            return _preempted_start_up()
        try:
            return trainer.run()
        except (CheckpointError, DataError) as e:  # a save that cannot be written (a full disk), a damaged shard
            print(f"error: {e}", file=sys.stderr)
            return 1


def _preempted_start_up() -> int:
    """Start-up failed after a preemption signal, which also reaches the helper processes start-up
    runs (DeepSpeed's op build, the universal checkpoint conversion). Retried, not failed: the next
    start either succeeds or, signal-free, fails with the same error and exit code 2 or 1."""
    from .preemption import REQUEUE_EXIT_CODE

    print(f"start-up failed after a preemption signal, which may have caused it: exiting with {REQUEUE_EXIT_CODE} "
          "to be started again", file=sys.stderr, flush=True)
    return REQUEUE_EXIT_CODE


if __name__ == "__main__":
    sys.exit(main())
