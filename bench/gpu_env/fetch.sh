#!/usr/bin/env bash
# Fetch the wheels the GPU machine lacks (wheels.txt) into .whl/ at the repository root, for the
# device's Python (3.12, x86-64 manylinux). Run here, on a machine with PyPI access:
#     bash bench/gpu_env/fetch.sh            # PYTHON_VERSION=3.11 for a local look-alike test
# deepspeed ships only an sdist: its wheel is built here without compiling any op (DS_BUILD_OPS=0;
# the trainer uses torch's fused AdamW, so no DeepSpeed CUDA op is needed).
set -euo pipefail
root=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
out=${WHEEL_DIR:-$root/.whl}
py=${PYTHON_VERSION:-3.12}
mkdir -p "$out"
grep -q '^/.whl/$' "$root/.gitignore" || echo "/.whl/ must be git-ignored" >&2
mapfile -t wanted < <(grep -v '^#' "$(dirname "$0")/wheels.txt" | grep -v '^deepspeed==' | grep .)
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64 \
    -d "$out" "${wanted[@]}"
deepspeed=$(grep '^deepspeed==' "$(dirname "$0")/wheels.txt")
if ! ls "$out"/deepspeed-*.whl >/dev/null 2>&1; then
    # setup.py imports torch: build without isolation, with the torch of the active environment.
    DS_BUILD_OPS=0 python3 -m pip wheel --quiet --no-deps --no-build-isolation -w "$out" "$deepspeed"
fi
ls -1 "$out"
du -sh "$out"
