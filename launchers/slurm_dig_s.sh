#!/bin/bash
# DiG-S/2 on ImageNet 256x256 on one node of 8 GPUs (global batch 256 = 8 x micro-batch 32), requeued
# when preempted. Usage, environment and log as in slurm_dig_xl.sh.
#SBATCH --job-name=dig-s2
#SBATCH --nodes=1 --ntasks-per-node=8 --gpus-per-node=8 --cpus-per-task=12 --mem=0
#SBATCH --time=24:00:00 --signal=USR1@120 --requeue --open-mode=append --output=%x-%j.log
set -euo pipefail
source "$SLURM_SUBMIT_DIR/launchers/slurm_common.sh" || { echo "sbatch this from the dig-scale checkout" >&2; exit 2; }
dig_slurm_train "${1:-configs/dig_s2_in1k256.yaml}" "${@:2}"
