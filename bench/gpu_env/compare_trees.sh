#!/usr/bin/env bash
# Same-call A/B of this checkout against other trees of the repository (branches' kernels, say),
# from the repository root on a GPU machine, with .whl and the other trees carried:
#     mkdir -p .alt/BRANCH && git archive BRANCH | tar -x -C .alt/BRANCH   # here; .alt/ git-ignored (.git/info/exclude)
#     bash bench/gpu_env/compare_trees.sh OUT .alt/A .alt/B   # there (the device tool's carry: .whl, .alt)
# Runs each other tree's GLA GPU tests, then for every tree in turn the bare DiG-XL/2 256 px step
# graphed with its kernel breakdown, then bench/gla.py for our kernels alone (about 2 minutes per
# tree on an H200). Results: OUT/NAME/results.jsonl and OUT/gla_NAME/gla_<card>.json, NAME being
# "this" or the other tree's directory name (bench/gla.py --report JSON writes the table). One file
# per tree and benchmark, because the device tool returns at most 8 files: this tree and two others.
set -u
usage="usage: compare_trees.sh OUT_DIR OTHER_TREE [OTHER_TREE]"
out=${1:?$usage}; shift
[ $# -ge 1 ] && [ $# -le 2 ] || { echo "$usage (at most two: the device tool returns 8 files)" >&2; exit 2; }
names=(this); dirs=("$PWD")
for tree in "$@"; do
    dir=$(cd "$tree" && pwd) || exit 2
    [ -f "$dir/bench/gla.py" ] || { echo "$dir is not a tree of this repository (no bench/gla.py)" >&2; exit 2; }
    names+=("$(basename "$dir")"); dirs+=("$dir")
done
. bench/gpu_env/install.sh || exit 1
export PYTHONUNBUFFERED=1 CUDA_VISIBLE_DEVICES=0
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
scratch=$(mktemp -d)
export TORCHINDUCTOR_CACHE_DIR=$scratch/inductor TRITON_CACHE_DIR=$scratch/triton
in_tree() { (cd "$1" && shift && PYTHONPATH=/tmp/site:$PWD "$@" 2>&1); }
for i in "${!names[@]}"; do
    [ "$i" = 0 ] && continue
    echo "== ${names[$i]}: GLA GPU tests $(date -u +%T)"
    in_tree "${dirs[$i]}" timeout 300 python3 -m pytest -q -p no:cacheprovider -k gpu tests/test_gla_triton.py | tail -n 8
done
for i in "${!names[@]}"; do
    echo "== ${names[$i]}: bare step $(date -u +%T)"
    in_tree "${dirs[$i]}" python3 bench/train_step.py --out "$out/${names[$i]}" --scratch "$scratch/${names[$i]}" \
        --sections bare --breakdown --res 256 --contenders dig-graphed | grep -v '^{"time' | tail -n 5
done
for i in "${!names[@]}"; do
    echo "== ${names[$i]}: bench/gla.py, ours only $(date -u +%T)"
    in_tree "${dirs[$i]}" timeout 240 python3 bench/gla.py --skip fla sdpa model-step --out "$out/gla_${names[$i]}" | tail -n 12
    rm -f "$out/gla_${names[$i]}"/*.md
done
for name in "${names[@]}"; do echo "$name:"; grep -h '"section": "bare"' "$out/$name/results.jsonl" | cut -c1-400; done
echo "== done $(date -u +%T)"
