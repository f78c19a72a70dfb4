"""Registers, spills and shared memory of every Triton GLA kernel, compiled for a GPU that need
not be present (Hopper by default: the compiler runs on any machine with Triton installed).

    python bench/gla_resources.py              # sm_90, the launch settings the kernels use
    python bench/gla_resources.py --arch 80    # another architecture

For each kernel at DiG's head dims (key 32, value 64, bfloat16 inputs), in each variant the model
or the benchmarks run: registers per thread and bytes spilled to local memory (ptxas), shared
memory, how many programs fit on one multiprocessor (registers, shared memory, warps), and
whether the matrix products became Hopper warpgroup MMAs (wgmma) or mma.sync.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from kernels.gla import triton_backward, triton_exact, triton_forward, triton_scan  # noqa: E402
from kernels.gla.triton_tiles import CHUNK  # noqa: E402

K, V = 32, 64
PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
# Per multiprocessor on sm_80/sm_90: 64K registers (allocated per warp in units of 256), shared
# memory usable by blocks (1 KB of each block's is reserved), warps, resident blocks.
REGISTERS, SHARED, WARPS, BLOCKS = 65536, 233472, 64, 32
FLOAT32 = {"w", "states", "d_states", "contributions", "log_decays", "dw_parts"}
SCALARS = {"scale": "fp32", "gate_norm": "fp32", "eps": "fp32", "exact_flags": "*i8"}


def _types(kernel, gate_type: str) -> dict:
    """Argument types as a launch from the model (bf16 activations) or the benchmark passes them."""
    def kind(name):
        if name in SCALARS:
            return SCALARS[name]
        if name in FLOAT32:
            return "*fp32"
        if name in ("g", "dg"):
            return gate_type
        if name in ("T", "H", "rev", "col_h", "col_w", "n_chunks", "total") or name.endswith("_stride"):
            return "i32"
        return "*bf16"
    return {name: kind(name) for name in kernel.arg_names}


def _variants() -> list[tuple[str, triton.JITFunction, dict, dict, dict]]:
    """(label, kernel, runtime argument types, constexprs, launch settings)."""
    out = []
    for raw, label in ((True, "model (raw bf16 gate logits, norm)"), (False, "plain (fp32 log-gates, no norm)")):
        gate_type = "*bf16" if raw else "*fp32"
        common = {"K": K, "V": V, "C": CHUNK, "EXACT": False, "RAW_GATE": raw}
        absent = {} if raw else {"z": None, "w": None, "o_pre": None, "dz": None, "dw_parts": None}
        with_norm = {"NORM": raw, "SAVE": raw}
        for name, kernel, extra, launch in (
                ("forward summary", triton_forward._summary_kernel, {}, triton_forward.SUMMARY_LAUNCH),
                ("forward output", triton_forward._output_kernel, with_norm, triton_forward.OUTPUT_LAUNCH),
                ("short forward (at most 4 chunks)", triton_forward._short_forward_kernel, with_norm,
                 triton_forward.SHORT_FORWARD_LAUNCH),
                ("backward summary", triton_backward._grad_summary_kernel, {"NORM": raw},
                 triton_backward.GRAD_SUMMARY_LAUNCH),
                ("backward dq dk dg", triton_backward._grad_qkg_kernel, {}, triton_backward.GRAD_QKG_LAUNCH),
                ("backward dv", triton_backward._grad_v_kernel, {}, triton_backward.GRAD_V_LAUNCH),
                ("exact forward", triton_exact._exact_output_kernel, with_norm, triton_exact.EXACT_LAUNCH),
                ("exact backward", triton_exact._exact_grad_kernel, {}, triton_exact.EXACT_LAUNCH)):
            constexprs = {**common, **extra, **{a: None for a in absent if a in kernel.arg_names}}
            out.append((f"{name}, {label}", kernel, _types(kernel, gate_type), constexprs, launch))
    for reverse in (False, True):
        out.append((f"state scan, {'reverse' if reverse else 'forward'}", triton_scan._scan_kernel,
                    _types(triton_scan._scan_kernel, "*fp32"),
                    {"K": K, "V": V, "P": triton_scan.SCAN_BLOCK, "REVERSE": reverse},
                    triton_scan.SCAN_LAUNCH))
        out.append((f"short state scan, {'reverse' if reverse else 'forward'}", triton_scan._short_scan_kernel,
                    _types(triton_scan._short_scan_kernel, "*fp32"),
                    {"K": K, "V": V, "ROWS": triton_scan.SHORT_SCAN_ROWS, "REVERSE": reverse},
                    triton_scan.SHORT_SCAN_LAUNCH))
    return out


def compile_kernel(kernel, types: dict, constexprs: dict, launch: dict, arch: int):
    signature = {name: ("constexpr" if name in constexprs else types[name]) for name in kernel.arg_names}
    # As a launch with freshly allocated tensors specialises: pointers 16-byte aligned; and the
    # inputs' row strides multiples of 16 (contiguous: H*D; the model's fused projection: its width, 3472 at XL).
    aligned = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(kernel.arg_names)
               if signature[name].startswith("*") or name.endswith("_stride")}
    source = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=aligned)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=dict(launch))


def resource_usage(compiled, arch: int) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".ptx", mode="w") as f:
        f.write(compiled.asm["ptx"])
        f.flush()
        report = subprocess.run([str(PTXAS), f"-arch=sm_{arch}{'a' if arch == 90 else ''}", "-v", f.name,
                                 "-o", "/dev/null"], capture_output=True, text=True, check=True).stderr
    registers = int(re.search(r"Used (\d+) registers", report).group(1))
    stores, loads = map(int, re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report).groups())
    shared = compiled.metadata.shared
    warps = compiled.metadata.num_warps
    per_warp = -(-registers * 32 // 256) * 256
    programs = min(REGISTERS // (per_warp * warps), SHARED // (shared + 1024), WARPS // warps, BLOCKS)
    ptx = compiled.asm["ptx"]
    mma = "wgmma" if "wgmma" in ptx else ("mma.sync" if "mma.sync" in ptx else "none")
    return {"registers": registers, "spill stores": stores, "spill loads": loads, "shared": shared,
            "programs": programs, "mma": mma}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90, help="compute capability x10 (90: Hopper)")
    args = parser.parse_args()
    print(f"triton {triton.__version__}, sm_{args.arch}, key dim {K}, value dim {V}, chunk {CHUNK}\n")
    print("| kernel | warps | registers | spill stores B | spill loads B | shared B | programs/SM | matmul |")
    print("|---|---|---|---|---|---|---|---|")
    for label, kernel, types, constexprs, launch in _variants():
        use = resource_usage(compile_kernel(kernel, types, constexprs, launch, args.arch), args.arch)
        print(f"| {label} | {launch['num_warps']} | {use['registers']} | {use['spill stores']} | "
              f"{use['spill loads']} | {use['shared']} | {use['programs']} | {use['mma']} |", flush=True)


if __name__ == "__main__":
    main()
