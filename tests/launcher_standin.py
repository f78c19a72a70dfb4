"""Stands in for `python -m dig_scale.train` in the node_launch tests, without training: writes what
it was given to $STANDIN_DIR/rank<R>.attempt<A>.json, then behaves as the trainer does on a signal
(SIGUSR1/SIGTERM: exit 75, "checkpointed, requeue me"), or exits with $STANDIN_RANK0_EXIT on rank 0.
A second attempt (after a restart) exits 0 at once, as a resumed run that finishes."""
import json
import os
import signal
import sys
import time
from pathlib import Path

out, rank = Path(os.environ["STANDIN_DIR"]), os.environ["RANK"]
attempt = 1 + len(list(out.glob(f"rank{rank}.attempt*.json")))


def preempted(signum, frame):
    (out / f"rank{rank}.attempt{attempt}.signal").write_text(signal.Signals(signum).name)
    sys.exit(75)


signal.signal(signal.SIGUSR1, preempted)
signal.signal(signal.SIGTERM, preempted)
seen = {k: os.environ[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                                   "MASTER_PORT", "OMP_NUM_THREADS")}
(out / f"rank{rank}.attempt{attempt}.json").write_text(json.dumps({"env": seen, "argv": sys.argv[1:]}))
if attempt > 1:
    sys.exit(0)
if rank == "0" and "STANDIN_RANK0_EXIT" in os.environ:
    sys.exit(int(os.environ["STANDIN_RANK0_EXIT"]))
time.sleep(120)  # until a signal; the tests never get here
sys.exit(99)
