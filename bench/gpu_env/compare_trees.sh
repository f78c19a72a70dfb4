#!/usr/bin/env bash
# Same-call A/B of this checkout against another tree of the repository (a branch's kernels, say),
# from the repository root on a GPU machine, with .whl and the other tree carried:
#     git archive BRANCH | tar -x -C .alt            # here; .alt/ is git-ignored (add it to .git/info/exclude)
#     bash bench/gpu_env/compare_trees.sh OUT .alt   # there (the device tool's carry: .whl, .alt)
# Runs the other tree's GLA GPU tests, then for each tree in turn the bare DiG-XL/2 256 px step
# graphed with its kernel breakdown and bench/gla.py for our kernels alone (about 4 minutes in all
# on an H200). Results: OUT/{this,other}/results.jsonl and OUT/gla_{this,other}/.
set -u
out=${1:?usage: compare_trees.sh OUT_DIR OTHER_TREE}
other=$(cd "${2:?usage: compare_trees.sh OUT_DIR OTHER_TREE}" && pwd) || exit 2
[ -f "$other/bench/gla.py" ] || { echo "$other is not a tree of this repository (no bench/gla.py)" >&2; exit 2; }
. bench/gpu_env/install.sh || exit 1
export PYTHONUNBUFFERED=1 CUDA_VISIBLE_DEVICES=0
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
scratch=$(mktemp -d)
export TORCHINDUCTOR_CACHE_DIR=$scratch/inductor TRITON_CACHE_DIR=$scratch/triton
in_tree() { (cd "$1" && shift && PYTHONPATH=/tmp/site:$PWD "$@" 2>&1); }
echo "== other tree: GLA GPU tests $(date -u +%T)"
in_tree "$other" timeout 300 python3 -m pytest -q -p no:cacheprovider -k gpu tests/test_gla_triton.py | tail -n 8
for tree in this other; do
    dir=$PWD; [ $tree = other ] && dir=$other
    echo "== $tree: bare step $(date -u +%T)"
    in_tree "$dir" python3 bench/train_step.py --out "$out/$tree" --scratch "$scratch/$tree" --sections bare \
        --breakdown --res 256 --contenders dig-graphed | grep -v '^{"time' | tail -n 5
done
for tree in this other; do
    dir=$PWD; [ $tree = other ] && dir=$other
    echo "== $tree: bench/gla.py, ours only $(date -u +%T)"
    in_tree "$dir" timeout 240 python3 bench/gla.py --skip fla sdpa model-step --out "$out/gla_$tree" | tail -n 12
done
for tree in this other; do grep -h '"section": "bare"' "$out/$tree/results.jsonl" | cut -c1-400; done
echo "== done $(date -u +%T)"
