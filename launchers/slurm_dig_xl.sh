#!/bin/bash
# DiG-XL/2 on ImageNet 256x256 across Slurm nodes, one task per GPU, preemptible and requeued.
#
#   sbatch launchers/slurm_dig_xl.sh                                       # this file's defaults
#   sbatch --nodes 16 launchers/slurm_dig_xl.sh configs/dig_xl2_in1k256.yaml train.micro_batch_size=2
#
# Submit from the repository root, with the environment that has dig_scale installed activated
# (sbatch passes it on). Arguments: CONFIG (default configs/dig_xl2_in1k256.yaml) and key.path=value
# overrides, given to `python -m dig_scale.train` on every rank. The log is %x-%j.log in the submit
# directory, linked from runs/<run_name>/. Shared logic: slurm_common.sh.
#
# Data on a shared filesystem (the default data.path is a directory): add data.cache_dir=<node-local
# dir>, or the nodes decompress the same shards in place at once (README, "Running on a cluster").
#
# Batch size: global 256 = micro-batch x GPUs x accumulation. Micro-batch 8 (set below) fits 1, 2 or
# 4 nodes of 8 GPUs (accumulation 4, 2, 1); for 8 nodes pass train.micro_batch_size=4, for 16 nodes 2.
#
#SBATCH --job-name=dig-xl2
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=8           # one task per GPU: the trainer takes cuda:SLURM_LOCALID
#SBATCH --gpus-per-node=8             # must equal --ntasks-per-node
#SBATCH --cpus-per-task=12            # the rank plus its data-loader workers (data.num_workers)
#SBATCH --mem=0                       # all of each node's memory
#SBATCH --exclusive
#SBATCH --time=24:00:00               # a longer run continues in the requeued job
#SBATCH --signal=USR1@180             # 3 min before the limit: the ranks checkpoint and exit 75 -> requeue
#SBATCH --requeue                     # let `scontrol requeue` (and Slurm on node failure) put it back
#SBATCH --open-mode=append            # a requeued job appends to the same log
#SBATCH --output=%x-%j.log
set -euo pipefail
source "$SLURM_SUBMIT_DIR/launchers/slurm_common.sh" || { echo "sbatch this from the dig-scale checkout" >&2; exit 2; }
dig_slurm_train "${1:-configs/dig_xl2_in1k256.yaml}" train.micro_batch_size=8 "${@:2}"
