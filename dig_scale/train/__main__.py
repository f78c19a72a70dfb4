"""python -m dig_scale.train CONFIG.yaml [key.path=value ...]

The same command on every rank under any launcher (torchrun, deepspeed, srun, Kubernetes);
exits 0 when max_steps is reached and 75 when preempted (launchers requeue on 75).
"""
from __future__ import annotations

import os
import sys

import torch


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if args else 2
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed is imported
    from dig_scale.config import ConfigError, load_config

    try:
        cfg = load_config(args[0], args[1:])
        from .trainer import Trainer

        trainer = Trainer(cfg)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    return trainer.run()


if __name__ == "__main__":
    sys.exit(main())
