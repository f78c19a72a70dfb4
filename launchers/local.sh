#!/usr/bin/env bash
# One node: `python -m dig_scale.train CONFIG [key.path=value ...]` on every visible GPU, or on 2 CPU
# processes without one (DIG_NPROC sets the count).
#
#   launchers/local.sh configs/dig_s2_in1k256.yaml [key.path=value ...]
#
# Preemption works as on a cluster: SIGUSR1 to this process (or to a trainer) makes the trainers
# checkpoint and exit 75, and they start again from the latest checkpoint. SIGTERM or Ctrl-C
# checkpoints and stops (exit 75); running the same command again resumes. See node_launch.py.
set -euo pipefail
if [ $# -lt 1 ]; then sed -n '2,9s/^# \{0,1\}//p' "$0" >&2; exit 2; fi
exec python "$(dirname "$0")/node_launch.py" --restart-on-preemption ${DIG_NPROC:+--nproc-per-node "$DIG_NPROC"} \
     -- "$@"
