# Sourced by every launchers/slurm_*.sh batch script: what a Slurm launch of dig-scale needs besides
# its #SBATCH lines. The batch script ends with
#
#     source "$SLURM_SUBMIT_DIR/launchers/slurm_common.sh"
#     dig_slurm_train CONFIG [key.path=value ...]
#
# which starts one srun task per GPU, each running `python -m dig_scale.train CONFIG [overrides]`
# (the trainer reads its rank from SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID), then decides:
#   exit 0  -> the run reached train.max_steps: the job ends;
#   exit 75 -> preempted or near the time limit (SIGUSR1/SIGTERM, checkpoint written):
#              `scontrol requeue` this job, which starts again from checkpoints/latest, at most
#              DIG_MAX_RESTARTS times (SLURM_RESTART_COUNT counts them);
#   other   -> a real failure (config error, crash): the job fails, no requeue loop.
#
# Environment: python (with dig_scale installed) on PATH, as when sbatch is run from an activated
# virtualenv (sbatch exports the environment); the job runs in the submit directory, the repository
# root; DIG_MAX_RESTARTS (default 50); NCCL_*, OMP_NUM_THREADS and WANDB_* set there pass through.

dig_fail() { echo "slurm_common: $*" >&2; exit 2; }

# Rank 0's host and port from the allocation. A node name that does not resolve (virtual or renamed
# nodes) falls back to the NodeAddr Slurm knows for it. The port comes from the job id, which a
# requeued job keeps.
dig_rendezvous() {
  MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
  if ! getent hosts "$MASTER_ADDR" >/dev/null; then
    MASTER_ADDR=$(scontrol show node "$MASTER_ADDR" | sed -n 's/.*NodeAddr=\([^ ]*\).*/\1/p')
    [ -n "$MASTER_ADDR" ] || dig_fail "cannot resolve the first node of $SLURM_JOB_NODELIST, and Slurm has no NodeAddr for it"
  fi
  MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))
  export MASTER_ADDR MASTER_PORT
}

# One task per GPU, the same number on every node: each task sees all GPUs of its node and takes
# cuda:SLURM_LOCALID. LOCAL_WORLD_SIZE tells mosaicml-streaming which ranks share a node (without it
# every rank registers the node's shared memory as if it were alone there).
dig_check_layout() {
  local gpus=${SLURM_GPUS_PER_NODE:-}
  gpus=${gpus##*:}                      # "h100:8" -> 8
  [ -n "${SLURM_NTASKS_PER_NODE:-}" ] || dig_fail "set --ntasks-per-node (one task per GPU on every node)"
  if [ -n "$gpus" ] && [ "$gpus" != "$SLURM_NTASKS_PER_NODE" ]; then
    dig_fail "one task per GPU: --ntasks-per-node=$SLURM_NTASKS_PER_NODE must equal --gpus-per-node=$gpus"
  fi
  export LOCAL_WORLD_SIZE=$SLURM_NTASKS_PER_NODE
}

dig_environment() {
  # srun starts the trainers itself: torchrun variables left in the submitting shell would make every
  # task read itself as that (stale) rank instead of its Slurm task (dig_scale/launch_env.py).
  unset RANK WORLD_SIZE LOCAL_RANK
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}  # else every rank uses every core
  export NCCL_DEBUG=${NCCL_DEBUG:-WARN}                                  # say why a collective failed
  export PYTHONUNBUFFERED=1                                              # tracebacks in order in the log
}

# The run directory as the trainer will resolve it (this also reports a config error once, before any
# task starts), with a link to this job's log in it so that runs/<run>/ holds everything about the run.
dig_run_directory() {
  local run_dir log
  run_dir=$(python -m dig_scale.config "$@" | python -c \
    'import os, sys, yaml; c = yaml.safe_load(sys.stdin); print(os.path.join(c["output_dir"], c["run_name"]))') \
    || dig_fail "the config $* does not load (error above)"
  mkdir -p "$run_dir"
  log=$(scontrol show job "$SLURM_JOB_ID" | sed -n 's/^ *StdOut=//p')
  [ -z "$log" ] || ln -sfn "$log" "$run_dir/slurm-$SLURM_JOB_ID.log"
  echo "$run_dir"
}

dig_slurm_train() {
  [ $# -ge 1 ] || dig_fail "usage: dig_slurm_train CONFIG [key.path=value ...]"
  [ -n "${SLURM_JOB_ID:-}" ] || dig_fail "not inside a Slurm job: submit the script with sbatch"
  local restarts=${SLURM_RESTART_COUNT:-0} max_restarts=${DIG_MAX_RESTARTS:-50} run_dir rc=0
  dig_check_layout
  dig_environment
  dig_rendezvous
  run_dir=$(dig_run_directory "$@") || exit 2
  echo "slurm_common: job $SLURM_JOB_ID (start $((restarts + 1))), $SLURM_NTASKS tasks on $SLURM_JOB_NODELIST," \
       "rendezvous $MASTER_ADDR:$MASTER_PORT, run directory $run_dir"
  # Not --kill-on-bad-exit: the first rank to exit 75 would get the others killed mid-exit. Instead the
  # others get 120 s after the first exit (a crashed rank leaves them waiting in a collective), and srun
  # returns the highest exit code of the tasks.
  srun --kill-on-bad-exit=0 --wait=120 --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" \
       python -m dig_scale.train "$@" || rc=$?
  case $rc in
    0) echo "slurm_common: training finished" ;;
    75)
      if [ "$restarts" -ge "$max_restarts" ]; then
        echo "slurm_common: preempted, but the job has already been restarted $restarts times" \
             "(DIG_MAX_RESTARTS=$max_restarts): not requeueing; resubmit to continue from the latest checkpoint"
      else
        echo "slurm_common: preempted (exit 75): requeueing job $SLURM_JOB_ID; it resumes from the latest checkpoint"
        scontrol requeue "$SLURM_JOB_ID" || echo "slurm_common: scontrol requeue failed (requeued by Slurm already?)"
        rc=0
      fi ;;
    *) echo "slurm_common: the trainer failed with exit code $rc: not requeueing" ;;
  esac
  exit "$rc"
}
