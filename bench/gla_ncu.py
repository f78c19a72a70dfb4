"""Nsight Compute numbers for every Triton GLA kernel, one fwd+bwd as DiG's layer calls the op (raw
gate logits, gated RMSNorm), at three shapes: the 256 px training step of DiG-XL/2 (B=32, T=256),
DiG-XL/2 at T=4096 and DiG-S/2 at B=1, T=16384.

    python bench/gla_ncu.py [--out bench/results]

Runs `ncu` itself, once per shape, with `--clock-control none` (the clocks as a training job sees
them) and writes gla_ncu_<card>.md: per kernel launch its grid, registers per thread, duration,
DRAM bytes and achieved bandwidth, achieved vs theoretical occupancy, and local-memory sectors read
and written (register spills; 0 means none). Needs ncu on PATH and a GPU whose counters it may read.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import io
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from gla import copy_bandwidth  # noqa: E402

from kernels.gla import ScanOrder, scan_gla  # noqa: E402

# name -> (model, heads, B, T, grid side)
CASES = {"XL B=32 T=256 (256 px step)": ("DiG-XL/2", 18, 32, 256, 16),
         "XL B=16 T=4096": ("DiG-XL/2", 18, 16, 4096, 64),
         "S B=1 T=16384": ("DiG-S/2", 6, 1, 16384, 128)}
DK, DV = 32, 64
KERNELS = "_summary_kernel|_scan_kernel|_output_kernel|_grad_summary_kernel|_grad_qkg_kernel|_grad_v_kernel|" \
          "_exact_output_kernel|_exact_grad_kernel"
METRICS = ["gpu__time_duration.sum", "dram__bytes_read.sum", "dram__bytes_write.sum", "launch__grid_size",
           "launch__registers_per_thread", "sm__warps_active.avg.pct_of_peak_sustained_active",
           "sm__maximum_warps_per_active_cycle_pct", "l1tex__t_sectors_pipe_lsu_mem_local_op_ld.sum",
           "l1tex__t_sectors_pipe_lsu_mem_local_op_st.sum"]


def layer_call(case: str):
    """One fwd+bwd of the op with the inputs DiG's layer gives it under bf16."""
    _, H, B, T, side = CASES[case]
    gen = torch.Generator(device="cuda").manual_seed(0)
    rand = lambda d: torch.randn(B, T, H, d, device="cuda", generator=gen).bfloat16().requires_grad_()  # noqa: E731
    q, k, gate_logits, v, output_gate = rand(DK), rand(DK), rand(DK), rand(DV), rand(DV)
    weight = torch.ones(DV, device="cuda", requires_grad=True)
    inputs = [q, k, v, gate_logits, output_gate, weight]
    d_out = torch.randn_like(v)

    def call():
        out = scan_gla(q, k, v, gate_logits, ScanOrder.ROW_FORWARD, (T // side, side), gate_logit_normalizer=16.0,
                       output_gate=output_gate, norm_weight=weight)
        torch.autograd.grad(out, inputs, d_out)
    return call


def profiled_target(case: str) -> None:
    """Under ncu --profile-from-start off: warm up (compiles the kernels), then one profiled call."""
    call = layer_call(case)
    call()
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    call()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()


def run_ncu(case: str) -> list[dict]:
    """ncu's raw metrics of every GLA kernel launch of one profiled call, in launch order."""
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "ncu.csv"
        command = ["ncu", "--clock-control", "none", "--profile-from-start", "off", "-k", f"regex:{KERNELS}",
                   "--metrics", ",".join(METRICS), "--csv", "--page", "raw", "--log-file", str(log),
                   sys.executable, __file__, "--target", case]
        result = subprocess.run(command, capture_output=True, text=True)
        text = log.read_text() if log.is_file() else ""
    if result.returncode or '"ID"' not in text:
        raise RuntimeError(f"ncu failed for {case} (exit {result.returncode}):\n"
                           f"{result.stderr[-2000:]}\n{text[-2000:]}")
    rows = list(csv.DictReader(io.StringIO(text[text.index('"ID"'):])))
    return [r for r in rows if r["ID"].strip().isdigit()]  # the first row after the header holds units


def number(row: dict, metric: str) -> float:
    """A metric's value; NaN where this ncu/GPU did not report it (the table shows "-")."""
    try:
        return float(row[metric].replace(",", ""))
    except (KeyError, ValueError):
        return float("nan")


def integer(x: float) -> str:
    return "-" if x != x else str(int(x))


def table(case: str, rows: list[dict], bandwidth: float) -> list[str]:
    lines = [f"\n### {case}\n", "| # | kernel | grid | regs/thread | µs | DRAM MB | GB/s | % of copy bw | "
             "achieved occ. % | theoretical occ. % | local-memory sectors |", "|" + "---|" * 11]
    total_ns = total_bytes = 0.0
    for i, r in enumerate(rows):
        ns = number(r, "gpu__time_duration.sum")
        moved = number(r, "dram__bytes_read.sum") + number(r, "dram__bytes_write.sum")
        total_ns, total_bytes = total_ns + ns, total_bytes + moved
        spills = number(r, "l1tex__t_sectors_pipe_lsu_mem_local_op_ld.sum") + number(
            r, "l1tex__t_sectors_pipe_lsu_mem_local_op_st.sum")
        lines.append(f"| {i} | {r['Kernel Name'][:40]} | {integer(number(r, 'launch__grid_size'))} | "
                     f"{integer(number(r, 'launch__registers_per_thread'))} | {ns / 1e3:.1f} | {moved / 1e6:.1f} | "
                     f"{moved / ns:.0f} | {100 * moved / ns * 1e9 / bandwidth:.0f} | "
                     f"{number(r, 'sm__warps_active.avg.pct_of_peak_sustained_active'):.0f} | "
                     f"{number(r, 'sm__maximum_warps_per_active_cycle_pct'):.0f} | "
                     f"{integer(spills)} |")
    lines.append(f"| | **all** | | | **{total_ns / 1e3:.1f}** | {total_bytes / 1e6:.1f} | {total_bytes / total_ns:.0f} "
                 f"| {100 * total_bytes / total_ns * 1e9 / bandwidth:.0f} | | | |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--target", choices=list(CASES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.target:
        return profiled_target(args.target)
    if shutil.which("ncu") is None:
        sys.exit("ncu (Nsight Compute) is not on PATH")
    card = torch.cuda.get_device_name()
    bandwidth = copy_bandwidth()
    lines = [f"# Nsight Compute: the Triton GLA kernels on {card}", "",
             f"{datetime.date.today()}; torch {torch.__version__}; `ncu --clock-control none`, one fwd+bwd of the op "
             "as DiG's layer calls it (bf16, raw gate logits, gated RMSNorm), row-forward order. Copy bandwidth "
             f"{bandwidth / 1e12:.2f} TB/s (read + write, measured in the same run). Written by bench/gla_ncu.py."]
    for case in CASES:
        print(case, flush=True)
        lines += table(case, run_ncu(case), bandwidth)
    stem = "gla_ncu_" + re.sub(r"[^0-9A-Za-z]+", "_", card).strip("_").lower()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
