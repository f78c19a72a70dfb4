# Source this on the GPU machine, from the repository root, with .whl carried along:
#     . bench/gpu_env/install.sh
# Installs every wheel in .whl/ into /tmp/site (no index, no dependency resolution: the image
# provides the rest) and puts it on PYTHONPATH for this shell and its children.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing .whl/*.whl failed: run bench/gpu_env/fetch.sh here and carry .whl" >&2; return 1; }
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
# Keep NVLink multicast off on shared multi-GPU hosts (the device tool's rules).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
