#!/usr/bin/env bash
# The project's GPU benchmarks, from the repository root, with .whl/ carried (bench/gpu_env/fetch.sh
# makes it):
#     bash bench/gpu_env/run_all.sh OUT_DIR [PART ...]        # default: every part, in this order
# Parts, each sized for one 10-minute call on an H200, run one after the other (never two at once:
# a second benchmark on the same host shifts the first one's numbers):
#   scaling      the graphed trainer on 1 and on 2 GPUs (ZeRO-2 scaling; skipped with one GPU), then on 2
#                with overlap_comm off and with contiguous gradients on (the other sides of their defaults)
#   trainer      the real trainer on GPU 0: the graphed DiG trainer's phase profile, DiG graphed (with and
#                without overlap_comm), DiT graphed, and DiG compiled without graphs
#   step         the bare model step at DiG-XL/2 256 px with a kernel breakdown: DiG and DiT graphed
#                and compiled, and the reference DiG on flash-linear-attention
#   resolutions  the bare step graphed, DiG vs DiT: S/2 at 256 and 1792 px, XL/2 at 2048 px
#   gla          the Triton GLA GPU tests, bench/gla.py (ours vs fla vs SDPA) and bench/gla_ncu.py
#   memory       the largest DiG-XL/2 and DiT-XL/2 micro-batch at 256 px and resolution at batch 1,
#                with and without activation checkpointing
# Results land in OUT_DIR (results.jsonl, logs, the GLA tables); nothing else is written outside a
# temp dir.
set -u
out=${1:?usage: run_all.sh OUT_DIR [scaling|trainer|step|resolutions|gla|memory ...]}
shift
parts=${*:-scaling trainer step resolutions gla memory}
. bench/gpu_env/install.sh || exit 1
export PYTHONUNBUFFERED=1
mkdir -p "$out/step"
scratch=$(mktemp -d)
# Fail in seconds, not after the first benchmark, when the image lacks something the code imports.
python3 -c "import dig_scale.train.trainer, dig_scale.sample, dig_scale.export, fla, deepspeed, streaming" || exit 1
gpus=$(python3 -c "import torch; print(torch.cuda.device_count())")
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
step() { python3 bench/train_step.py --out "$out/step" "$@" 2>&1; }

for part in $parts; do
    echo "== $part $(date -u +%T)"
    case $part in
    scaling)
        [ "$gpus" -ge 2 ] || { echo "one GPU: no scaling run"; continue; }
        CUDA_VISIBLE_DEVICES=0 step --scratch "$scratch/one" --sections trainer --trainer-runs dig_xl2_graphed
        step --scratch "$scratch/two" --sections trainer \
            --trainer-runs dig_xl2_graphed_2gpu,dig_xl2_graphed_nooverlap_2gpu,dig_xl2_graphed_contig_2gpu ;;
    trainer)
        CUDA_VISIBLE_DEVICES=0 step --scratch "$scratch/one" --sections ceilings,trainer \
            --trainer-runs loader,profile_graphed,dig_xl2_graphed,dit_xl2_graphed,dig_xl2_graphed_overlap,dig_xl2_compiled ;;
    step)
        CUDA_VISIBLE_DEVICES=0 step --scratch "$scratch/bare" --sections bare --breakdown --res 256 \
            --contenders dig-graphed,dit-graphed,dig-compiled,dit-compiled,ref-eager ;;
    resolutions)
        export CUDA_VISIBLE_DEVICES=0
        step --scratch "$scratch/bare" --sections bare --models S --res 256,1792 --contenders dig-graphed,dit-graphed
        step --scratch "$scratch/bare" --sections bare --res 2048 --contenders dig-graphed,dit-graphed
        unset CUDA_VISIBLE_DEVICES ;;
    gla)
        export CUDA_VISIBLE_DEVICES=0
        python3 -m pytest -q -p no:cacheprovider tests/test_gla_triton.py 2>&1 | tail -n 15
        python3 bench/gla.py --out "$out/gla" 2>&1 | tail -n 40
        python3 bench/gla_ncu.py --out "$out/gla" 2>&1
        unset CUDA_VISIBLE_DEVICES ;;
    memory)
        CUDA_VISIBLE_DEVICES=0 step --sections memory --models XL ;;
    *) echo "unknown part $part (scaling, trainer, step, resolutions, gla, memory)" >&2; exit 2 ;;
    esac
done
[ -f "$out/step/results.jsonl" ] && grep -h '^{' "$out/step/results.jsonl" | cut -c1-600
exit 0
