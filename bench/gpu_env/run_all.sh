#!/usr/bin/env bash
# Every GPU benchmark of the project in one call, from the repository root, with .whl/ carried
# (bench/gpu_env/fetch.sh makes it):
#     bash bench/gpu_env/run_all.sh OUT_DIR
# On a machine with two GPUs: first the trainer on both (ZeRO-2 scaling), then two lanes at once,
# GPU 0 the GLA kernels (GPU tests, then bench/gla.py), GPU 1 the training step (bench/train_step.py);
# with one GPU the lanes run one after the other. Results land in OUT_DIR (logs, results.jsonl,
# the GLA tables); nothing else is written outside a temp dir.
set -u
out=${1:?usage: run_all.sh OUT_DIR}
. bench/gpu_env/install.sh || exit 1
export PYTHONUNBUFFERED=1
mkdir -p "$out/step"
scratch=$(mktemp -d)
# Fail in seconds, not after the first benchmark, when the image lacks something the code imports.
python3 -c "import dig_scale.train.trainer, dig_scale.sample, dig_scale.export, fla, deepspeed, streaming" || exit 1
gpus=$(python3 -c "import torch; print(torch.cuda.device_count())")
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader

gla_lane() {
    python3 -m pytest -q -p no:cacheprovider tests/test_gla_triton.py 2>&1 | tail -n 15
    python3 bench/gla.py --skip model-step --out "$out/gla" 2>&1
}
step_lane() {
    python3 bench/train_step.py --out "$out/step" --scratch "$scratch/one" --sections ceilings,trainer \
        --trainer-runs dig_xl2_compiled,dit_xl2_compiled 2>&1
    python3 bench/train_step.py --out "$out/step" --scratch "$scratch/bare" --sections bare --breakdown \
        --res 256 --contenders dig-compiled,dit-compiled 2>&1
    python3 bench/train_step.py --out "$out/step" --scratch "$scratch/bare" --sections bare \
        --res 2048 --contenders dig-compiled,dit-compiled 2>&1
}

if [ "$gpus" -ge 2 ]; then
    python3 bench/train_step.py --out "$out/step" --scratch "$scratch/two" --sections trainer --gpus 2 \
        --trainer-runs dig_xl2_compiled_2gpu > "$out/two_gpu.log" 2>&1
    CUDA_VISIBLE_DEVICES=0 gla_lane > "$out/gla.log" 2>&1 &
    CUDA_VISIBLE_DEVICES=1 step_lane > "$out/step.log" 2>&1
    wait
else
    step_lane > "$out/step.log" 2>&1
    gla_lane > "$out/gla.log" 2>&1
fi
grep -h '^{' "$out/step/results.jsonl" | cut -c1-400
tail -n 40 "$out/gla.log"
