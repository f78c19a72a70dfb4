"""GLA kernels at DiG shapes: ours (Triton) vs flash-linear-attention `chunk_gla` vs PyTorch SDPA.

One process, one GPU. For DiG-S/B/L/XL-2 head configurations (GLA heads with dk=32, dv=64;
DiT attention with 64-dim heads over the same width) at T = 256 .. 16384 with B*T ~ 65,536
tokens, and B=1 at T=16,384, it times forward and forward+backward (median of CUDA events
after warm-up, L2 flushed between runs), compares with the memory-traffic floor (bytes that
must move / measured copy bandwidth), prints markdown tables and writes them, with the card,
versions and date, to bench/results/gla_<card>.md.

    python bench/gla.py                 # everything (fla from its wheel; skipped if missing)
    python bench/gla.py --sweep         # first pick launch settings for our kernels
    python bench/gla.py --profile       # add a per-kernel breakdown (torch.profiler)
    python bench/gla.py --cold-compile  # time compiling every DiG variant from an empty Triton cache
    ncu -k regex:_kernel python bench/gla.py --profile-step   # two fwd+bwd steps at DiG-XL/2, B=16, T=4096
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench, do_bench_cudagraph

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from kernels.gla import ScanOrder, chunk_gla, scan_gla, triton_backward, triton_forward, triton_segments  # noqa: E402

HEADS = {"DiG-S/2": 6, "DiG-B/2": 12, "DiG-L/2": 16, "DiG-XL/2": 18}
WIDTH = {"DiG-S/2": 384, "DiG-B/2": 768, "DiG-L/2": 1024, "DiG-XL/2": 1152}
LENGTHS = (256, 1024, 4096, 12544, 16384)
TOKENS = 65536
DK, DV, DIT_HEAD = 32, 64, 64


@dataclass
class Case:
    model: str
    B: int
    T: int
    ms: dict = field(default_factory=dict)  # "<contender> <fwd|fwd+bwd>" -> median ms (None: failed)

    @property
    def H(self) -> int:
        return HEADS[self.model]

    def floor_bytes(self, backward: bool) -> int:
        """Bytes that must move: read q, k, v (bf16), g (fp32), write o; backward adds reading
        do and the inputs again and writing dq, dk, dv, dg."""
        per_head = 2 * DK * 2 + DK * 4 + DV * 2 + DV * 2
        if backward:
            per_head += (2 * DK * 2 + DK * 4 + 2 * DV * 2) + (2 * DK * 2 + DK * 4 + DV * 2)
        return self.B * self.T * self.H * per_head


def cases() -> list[Case]:
    out = [Case(m, TOKENS // T, T) for m in HEADS for T in LENGTHS]
    return out + [Case(m, 1, 16384) for m in HEADS]


def gla_inputs(case: Case, grad: bool):
    gen = torch.Generator(device="cuda").manual_seed(case.T)
    shape = (case.B, case.T, case.H)
    q, k = (torch.randn(*shape, DK, device="cuda", generator=gen).bfloat16() for _ in range(2))
    v = torch.randn(*shape, DV, device="cuda", generator=gen).bfloat16()
    # DiG's gates at init: logsigmoid(x) / 16 of small logits, kept in fp32.
    g = F.logsigmoid(torch.randn(*shape, DK, device="cuda", generator=gen) * 2) / 16
    return [x.requires_grad_(grad) for x in (q, k, v, g)]


def timed(fn, graph: bool = False) -> float | None:
    try:
        return (do_bench_cudagraph(fn, rep=60, return_mode="median") if graph
                else do_bench(fn, warmup=10, rep=60, return_mode="median"))
    except Exception as e:  # a contender that can't run a shape is reported, not fatal
        print(f"    failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}", flush=True)
        return None


def fwd_bwd(fn, inputs, d_out):
    return lambda: torch.autograd.grad(fn(*inputs), inputs, d_out)


def run_ours(case: Case, graph: bool = True) -> None:
    inputs = gla_inputs(case, grad=False)
    fn = lambda q, k, v, g: chunk_gla(q, k, v, g, backend="triton")  # noqa: E731
    case.ms["ours fwd"] = timed(lambda: fn(*inputs))
    inputs = gla_inputs(case, grad=True)
    d_out = torch.randn_like(inputs[2])
    case.ms["ours fwd+bwd"] = timed(fwd_bwd(fn, inputs, d_out))
    if graph:
        case.ms["ours graphed fwd+bwd"] = timed(fwd_bwd(fn, inputs, d_out), graph=True)
        side = int(case.T**0.5)
        if side * side == case.T:  # the column-major reverse scan of DiG's 4th layer, same tokens
            col = lambda q, k, v, g: scan_gla(q, k, v, g, ScanOrder.COL_REVERSE, (side, side))  # noqa: E731
            case.ms["ours col-reverse fwd+bwd"] = timed(fwd_bwd(col, inputs, d_out))


def run_fla(case: Case, fla_chunk_gla) -> None:
    inputs = gla_inputs(case, grad=False)
    fn = lambda q, k, v, g: fla_chunk_gla(q, k, v, g)[0]  # noqa: E731
    case.ms["fla fwd"] = timed(lambda: fn(*inputs))
    inputs = gla_inputs(case, grad=True)
    case.ms["fla fwd+bwd"] = timed(fwd_bwd(fn, inputs, torch.randn_like(inputs[2])))


def run_sdpa(case: Case) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    heads = WIDTH[case.model] // DIT_HEAD
    q, k, v = (torch.randn(case.B, heads, case.T, DIT_HEAD, device="cuda", dtype=torch.bfloat16)
               for _ in range(3))
    for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
        def fn(q, k, v, backend=backend):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v)
        case.ms[f"sdpa-{name} fwd"] = timed(lambda fn=fn: fn(q, k, v))
        inputs = [x.detach().requires_grad_() for x in (q, k, v)]
        case.ms[f"sdpa-{name} fwd+bwd"] = timed(fwd_bwd(fn, inputs, torch.randn_like(q)))


def copy_bandwidth() -> float:
    """Device-to-device copy, bytes read + written per second."""
    x = torch.randn(2**28, device="cuda")
    y = torch.empty_like(x)
    return 2 * x.nbytes / (do_bench(lambda: y.copy_(x), warmup=25, rep=200, return_mode="median") * 1e-3)


def check_against_fla(fla_chunk_gla) -> float:
    """Same function as fla on a DiG-S shape (guards the [B, T, H, D] layout pitfall)."""
    case = Case("DiG-S/2", 2, 1024)
    q, k, v, g = gla_inputs(case, grad=False)
    ours = chunk_gla(q, k, v, g, backend="triton").float()
    theirs = fla_chunk_gla(q, k, v, g)[0].float()
    return ((ours - theirs).norm() / theirs.norm()).item()


def sweep(shapes: list[Case]) -> dict:
    """Coordinate search over our launch settings (forward, then backward, then programs/SM);
    applies and returns the best. Summed fwd+bwd ms over `shapes` decides."""
    def total() -> float:
        for c in shapes:
            run_ours(c, graph=False)
        return sum(c.ms["ours fwd+bwd"] or float("inf") for c in shapes)

    choices = [{"num_warps": w, "num_stages": s} for w, s in ((4, 1), (4, 2), (8, 1), (8, 2))]
    for target in (triton_forward.FORWARD_LAUNCH, triton_backward.BACKWARD_LAUNCH):
        results = []
        for choice in choices:
            target.clear()
            target.update(choice)
            results.append((total(), choice))
            print(f"  sweep {choice}: {results[-1][0]:.3f} ms", flush=True)
        target.clear()
        target.update(min(results, key=lambda r: r[0])[1])
    results = []
    for pps in (1, 2, 3, 4):
        triton_segments.PROGRAMS_PER_SM = pps
        results.append((total(), pps))
        print(f"  sweep programs/SM {pps}: {results[-1][0]:.3f} ms", flush=True)
    triton_segments.PROGRAMS_PER_SM = min(results)[1]
    return {"forward": dict(triton_forward.FORWARD_LAUNCH), "backward": dict(triton_backward.BACKWARD_LAUNCH),
            "programs_per_sm": triton_segments.PROGRAMS_PER_SM}


def apply_launch(settings: dict) -> None:
    for target, key in ((triton_forward.FORWARD_LAUNCH, "forward"), (triton_backward.BACKWARD_LAUNCH, "backward")):
        target.clear()
        target.update(settings[key])
    triton_segments.PROGRAMS_PER_SM = settings["programs_per_sm"]


COLD_COMPILE = """
import time, torch
from dig_scale.models.gla import GatedLinearAttention
from kernels.gla import ScanOrder
start = time.time()
for width, heads in ((384, 6), (768, 12), (1024, 16), (1152, 18)):
    layer = GatedLinearAttention(width, heads).cuda()
    for batch, side in ((2, 16), (1, 128)):  # one segment per sequence / many
        x = torch.randn(batch, side * side, width, device="cuda", requires_grad=True)
        with torch.autocast("cuda", torch.bfloat16):
            layer(x, ScanOrder.COL_REVERSE, (side, side)).float().sum().backward()
torch.cuda.synchronize()
print(time.time() - start)
"""


def cold_compile_seconds() -> float:
    """Wall time of a fresh process's first bf16 fwd+bwd through the model's fused GLA layer for
    every DiG head count, with and without segments, from an empty Triton cache."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TRITON_CACHE_DIR=cache)
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run([sys.executable, "-c", COLD_COMPILE], env=env, cwd=root, check=True,
                             capture_output=True, text=True).stdout
    return float(out.split()[-1])


def kernel_resources() -> list[str]:
    """Registers / spills of each compiled variant of our main kernels (from Triton's cache)."""
    lines = []
    for kernel in (triton_forward._forward_kernel, triton_backward._backward_kernel):
        try:
            compiled_variants = [c for cache in kernel.device_caches.values() for c in cache[0].values()]
        except (AttributeError, IndexError, TypeError):  # Triton's cache layout differs by version
            continue
        for compiled in compiled_variants:
            lines.append(f"{kernel.fn.__name__}: {compiled.n_regs} registers, {compiled.n_spills} spills, "
                         f"{compiled.metadata.shared} B shared, {compiled.metadata.num_warps} warps")
    return lines


def profile(case: Case) -> str:
    """Per-kernel CUDA time of 10 fwd+bwd calls."""
    inputs = gla_inputs(case, grad=True)
    step = fwd_bwd(lambda *x: chunk_gla(*x, backend="triton"), inputs, torch.randn_like(inputs[2]))
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            step()
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=12)


def ratio(a, b) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def fmt(x) -> str:
    return f"{x:.3f}" if x else "-"


def tables(all_cases: list[Case], bandwidth: float) -> str:
    out = []
    for kind in ("fwd", "fwd+bwd"):
        backward = kind == "fwd+bwd"
        head = ["model", "B", "T", "ours ms"] + (["ours graphed ms", "ours col-rev ms"] if backward else []) + [
            "fla ms", "SDPA cuDNN ms", "SDPA flash ms", "floor ms", "ours GB/s", "ours/floor", "fla/ours",
            "best SDPA/ours"]
        out += [f"\n### {kind}\n", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for c in all_cases:
            ms = {k.rsplit(" ", 1)[0]: v for k, v in c.ms.items() if k.endswith(" " + kind)}
            floor = c.floor_bytes(backward) / bandwidth * 1e3
            ours = ms.get("ours")
            sdpa = [x for x in (ms.get("sdpa-cudnn"), ms.get("sdpa-flash")) if x]
            row = [c.model, str(c.B), str(c.T), fmt(ours)]
            if backward:
                row += [fmt(ms.get("ours graphed")), fmt(ms.get("ours col-reverse"))]
            row += [fmt(ms.get("fla")), fmt(ms.get("sdpa-cudnn")), fmt(ms.get("sdpa-flash")), fmt(floor),
                    f"{c.floor_bytes(backward) / ours / 1e6:.0f}" if ours else "-", ratio(ours, floor),
                    ratio(ms.get("fla"), ours), ratio(min(sdpa) if sdpa else None, ours)]
            out.append("| " + " | ".join(row) + " |")
    return "\n".join(out)


def versions() -> str:
    import importlib.metadata as md
    fla = next((v for v in (_version(md, "flash-linear-attention"), _version(md, "fla-core")) if v), "not installed")
    return f"torch {torch.__version__}, triton {triton.__version__}, flash-linear-attention {fla}"


def _version(md, name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", action="store_true", help="pick our launch settings first")
    parser.add_argument("--profile", action="store_true", help="add a per-kernel breakdown")
    parser.add_argument("--skip", nargs="*", default=[], choices=["fla", "sdpa"], help="contenders to leave out")
    parser.add_argument("--cold-compile", action="store_true", help="time a cold compile of the DiG variants")
    parser.add_argument("--launch-file", type=Path, help="where --sweep saves its choice, and runs load it from")
    parser.add_argument("--profile-step", action="store_true", help="only run two fwd+bwd steps (for ncu)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if args.launch_file and args.launch_file.exists() and not args.sweep:
        apply_launch(json.loads(args.launch_file.read_text()))
    if args.profile_step:
        inputs = gla_inputs(Case("DiG-XL/2", 16, 4096), grad=True)
        step = fwd_bwd(lambda *x: chunk_gla(*x, backend="triton"), inputs, torch.randn_like(inputs[2]))
        step(), step()
        torch.cuda.synchronize()
        return
    card = torch.cuda.get_device_name()
    print(f"{card}; {versions()}", flush=True)
    bandwidth = copy_bandwidth()
    print(f"copy bandwidth {bandwidth / 1e12:.2f} TB/s", flush=True)
    notes = []
    if args.cold_compile:
        notes.append(f"cold compile (empty Triton cache) of the fused bf16 fwd+bwd for DiG-S/B/L/XL head counts, "
                     f"with and without segments: {cold_compile_seconds():.1f} s")
        print(notes[-1], flush=True)
    if args.sweep:
        chosen = sweep([Case("DiG-XL/2", 16, 4096), Case("DiG-S/2", 1, 16384), Case("DiG-S/2", 64, 1024)])
        if args.launch_file:
            args.launch_file.write_text(json.dumps(chosen))
    notes.append("our launch settings: " + json.dumps({
        "forward": triton_forward.FORWARD_LAUNCH, "backward": triton_backward.BACKWARD_LAUNCH,
        "programs_per_sm": triton_segments.PROGRAMS_PER_SM}) + (" (from the sweep)" if args.sweep else ""))
    print(notes[-1], flush=True)
    fla_chunk_gla = None
    if "fla" not in args.skip:
        try:
            from fla.ops.gla import chunk_gla as fla_chunk_gla
        except ImportError as e:
            notes.append(f"fla not importable ({e}); its columns are empty")
    if fla_chunk_gla is not None:
        start = time.time()
        notes.append(f"ours vs fla output, DiG-S/2 B=2 T=1024 bf16: relative difference "
                     f"{check_against_fla(fla_chunk_gla):.2e} (first fla call incl. autotuning: "
                     f"{time.time() - start:.0f} s)")
        print(notes[-1], flush=True)
    card_name = re.sub(r"[^0-9A-Za-z]+", "_", card).strip("_").lower()
    args.out.mkdir(parents=True, exist_ok=True)
    all_cases = cases()
    for i, c in enumerate(all_cases):
        print(f"{c.model} B={c.B} T={c.T}", flush=True)
        run_ours(c)
        if "sdpa" not in args.skip:
            run_sdpa(c)
        if fla_chunk_gla is not None:
            run_fla(c, fla_chunk_gla)
        print("  " + ", ".join(f"{k} {fmt(v)}" for k, v in c.ms.items()), flush=True)
        torch.cuda.empty_cache()
        if i + 1 < len(all_cases):  # a partial report survives a run cut short
            write_report(args.out, card, card_name, bandwidth, notes, all_cases[: i + 1], "")
    notes += kernel_resources()
    extra = ""
    if args.profile:
        extra = "".join(f"\n### CUDA time by kernel, 10 x fwd+bwd, {c.model} B={c.B} T={c.T}\n```\n{profile(c)}\n```\n"
                        for c in (Case("DiG-XL/2", 16, 4096), Case("DiG-S/2", 1, 16384)))
    print(write_report(args.out, card, card_name, bandwidth, notes, all_cases, extra))


def write_report(out: Path, card: str, card_name: str, bandwidth: float, notes: list[str], done: list[Case],
                 extra: str) -> str:
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    report = (f"# GLA kernels at DiG shapes on {card}\n\n{date}; {versions()}; copy bandwidth "
              f"{bandwidth / 1e12:.2f} TB/s (read + write). Medians of CUDA-event timings (triton do_bench, "
              f"L2 flushed); bf16 q/k/v, fp32 log-space gates; GLA dk={DK}, dv={DV}; SDPA non-causal with "
              f"{DIT_HEAD}-dim heads over the same width. floor = bytes that must move / copy bandwidth.\n\n"
              + "".join(f"- {n}\n" for n in notes) + tables(done, bandwidth) + "\n" + extra)
    (out / f"gla_{card_name}.md").write_text(report)
    (out / f"gla_{card_name}.json").write_text(json.dumps([vars(c) for c in done], indent=1))
    return report

if __name__ == "__main__":
    main()
