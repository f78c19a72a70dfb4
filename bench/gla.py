"""GLA at DiG shapes: ours (Triton) vs flash-linear-attention `chunk_gla` vs PyTorch SDPA, and the
compiled DiG-S/2 vs DiT-S/2 training step: everything issue 13's targets need, in one run.

    python bench/gla.py              # ~8 min on one H100/H200 with cold caches; writes bench/results/gla_<card>.md
    python bench/gla.py --skip fla model-step
    python bench/gla.py --report bench/results/gla_nvidia_h200.json   # rewrite the .md from a run's .json (no GPU)

Nsight Compute numbers per kernel: bench/gla_ncu.py.

Cases: the GLA heads of DiG-S/B/L/XL-2 (key dim 32, value dim 64) at T = 256 .. 16384 with
B*T ~ 65,536 tokens, and B = 1 at T = 16,384; bf16 q, k, v and fp32 log-space gates, as fla takes
them. Timings are medians of CUDA events with the L2 cache flushed (triton.testing.do_bench);
ours also CUDA-graphed, which leaves out the host: the kernels' GPU time. A shape where ours takes
over HOST_BOUND times longer eagerly than graphed is launch-bound (the host, not the kernels, sets
its eager time) and is marked so; the targets about the kernels (fla, the floor, SDPA) use our GPU
time, the others' eager time. SDPA runs DiT's attention over the same width
(64-dim heads, non-causal), cuDNN and flash backends. The memory-traffic floor of a call is
    floor = bytes that must move / the card's measured copy bandwidth (read + write), with
    fwd bytes     = B T H (2K*2 [q, k] + 4K [g] + 2V [v] + 2V [o])
    fwd+bwd bytes = fwd bytes + B T H (2K*2 + 4K + 2V*2 [q, k, g, v, do] + 2K*2 + 4K + 2V [dq, dk, dg, dv]),
and GB/s = floor bytes / time. Extra memory = peak allocated during fwd+bwd beyond its inputs,
d_out, output and gradients, over the inputs' bytes.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench, do_bench_cudagraph

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dig_scale.models.registry import create_model  # noqa: E402
from kernels.gla import ScanOrder, chunk_gla, scan_gla  # noqa: E402

HEADS = {"DiG-S/2": 6, "DiG-B/2": 12, "DiG-L/2": 16, "DiG-XL/2": 18}
WIDTH = {"DiG-S/2": 384, "DiG-B/2": 768, "DiG-L/2": 1024, "DiG-XL/2": 1152}
LENGTHS = (256, 1024, 4096, 12544, 16384)
TOKENS = 65536
DK, DV, DIT_HEAD = 32, 64, 64
REP_MS = 40
HOST_BOUND = 1.25  # eager / graphed fwd+bwd above this: launch-bound


@dataclass
class Case:
    model: str
    B: int
    T: int
    ms: dict = field(default_factory=dict)  # "<contender> <fwd|fwd+bwd>" -> median ms (None: failed)
    extra_memory: dict = field(default_factory=dict)  # contender -> extra bytes / input bytes

    @property
    def H(self) -> int:
        return HEADS[self.model]

    @property
    def gpu_ms(self) -> float | None:
        """Our fwd+bwd's GPU time: CUDA-graphed where measured, else eager."""
        return self.ms.get("ours graphed fwd+bwd") or self.ms.get("ours fwd+bwd")

    @property
    def host_bound(self) -> bool:
        eager, graphed = self.ms.get("ours fwd+bwd"), self.ms.get("ours graphed fwd+bwd")
        return bool(eager and graphed and eager > HOST_BOUND * graphed)

    def floor_bytes(self, backward: bool) -> int:
        per_head = 2 * DK * 2 + DK * 4 + DV * 2 + DV * 2
        if backward:
            per_head += (2 * DK * 2 + DK * 4 + 2 * DV * 2) + (2 * DK * 2 + DK * 4 + DV * 2)
        return self.B * self.T * self.H * per_head


def cases() -> list[Case]:
    return [Case(m, TOKENS // T, T) for m in HEADS for T in LENGTHS] + [Case(m, 1, 16384) for m in HEADS]


def gla_inputs(case: Case, grad: bool) -> list[torch.Tensor]:
    gen = torch.Generator(device="cuda").manual_seed(case.T)
    shape = (case.B, case.T, case.H)
    q, k = (torch.randn(*shape, DK, device="cuda", generator=gen).bfloat16() for _ in range(2))
    v = torch.randn(*shape, DV, device="cuda", generator=gen).bfloat16()
    # DiG's gates at init: logsigmoid(x) / 16 of small logits, kept in fp32.
    g = F.logsigmoid(torch.randn(*shape, DK, device="cuda", generator=gen) * 2) / 16
    return [x.requires_grad_(grad) for x in (q, k, v, g)]


def timed(fn, graph: bool = False, rep: int = REP_MS, grad_to_none=None) -> float | None:
    try:
        return (do_bench_cudagraph(fn, rep=rep, return_mode="median") if graph
                else do_bench(fn, warmup=10, rep=rep, grad_to_none=grad_to_none, return_mode="median"))
    except Exception as e:  # a contender that can't run a shape is reported, not fatal
        print(f"    failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}", flush=True)
        return None


def fwd_bwd(fn, inputs, d_out):
    return lambda: torch.autograd.grad(fn(*inputs), inputs, d_out)


def extra_memory(fn, inputs, d_out) -> float:
    """Peak bytes a fwd+bwd allocates beyond inputs, d_out, output and gradients / input bytes."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = fn(*inputs)
    grads = torch.autograd.grad(out, inputs, d_out)
    torch.cuda.synchronize()
    kept = sum(x.numel() * x.element_size() for x in (out, *grads))
    return (torch.cuda.max_memory_allocated() - before - kept) / sum(x.numel() * x.element_size() for x in inputs)


def run_gla(case: Case, name: str, fn) -> tuple[list[torch.Tensor], torch.Tensor]:
    """fwd and fwd+bwd times and extra memory of `fn`; returns the inputs and d_out it used."""
    inputs = gla_inputs(case, grad=False)
    case.ms[f"{name} fwd"] = timed(lambda: fn(*inputs))
    inputs = gla_inputs(case, grad=True)
    d_out = torch.randn_like(inputs[2])
    case.ms[f"{name} fwd+bwd"] = timed(fwd_bwd(fn, inputs, d_out))
    case.extra_memory[name] = extra_memory(fn, inputs, d_out)
    return inputs, d_out


def ours(q, k, v, g):
    return chunk_gla(q, k, v, g, backend="triton")


def run_ours(case: Case) -> None:
    """`run_gla`, then fwd+bwd CUDA-graphed (GPU time alone) and in the column-major reverse
    order of DiG's 4th layer (the same tokens read through index arithmetic)."""
    inputs, d_out = run_gla(case, "ours", ours)
    case.ms["ours graphed fwd+bwd"] = timed(fwd_bwd(ours, inputs, d_out), graph=True)
    side = int(case.T**0.5)
    col = lambda q, k, v, g: scan_gla(q, k, v, g, ScanOrder.COL_REVERSE, (case.T // side, side))  # noqa: E731
    case.ms["ours col-reverse fwd+bwd"] = timed(fwd_bwd(col, inputs, d_out))


def run_sdpa(case: Case) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    shape = (case.B, WIDTH[case.model] // DIT_HEAD, case.T, DIT_HEAD)
    q, k, v = (torch.randn(*shape, device="cuda", dtype=torch.bfloat16) for _ in range(3))
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


def difference_from_fla(fla_chunk_gla) -> float:
    """Same function as fla on a DiG-S shape (guards fla's [B, T, H, D] layout pitfall)."""
    q, k, v, g = gla_inputs(Case("DiG-S/2", 2, 1024), grad=False)
    theirs = fla_chunk_gla(q, k, v, g)[0].float()
    return ((ours(q, k, v, g).float() - theirs).norm() / theirs.norm()).item()


def model_step_ms(name: str) -> float | None:
    """Compiled bf16 fwd+bwd of `name` at 1792 px (224x224 latents, 12,544 tokens), batch 2."""
    model = create_model(name, input_size=224).cuda().bfloat16()
    compiled = torch.compile(model)
    x = torch.randn(2, 4, 224, 224, device="cuda", dtype=torch.bfloat16)
    t, y = torch.tensor([10, 500], device="cuda"), torch.tensor([1, 2], device="cuda")
    step = lambda: compiled(x, t, y).float().square().mean().backward()  # noqa: E731
    step()  # compiles
    return timed(step, rep=500, grad_to_none=list(model.parameters()))


def fmt(x) -> str:
    return f"{x:.3f}" if x else "-"


def ratio(a, b) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def best_sdpa(ms: dict, kind: str) -> float | None:
    return min((x for x in (ms.get(f"sdpa-cudnn {kind}"), ms.get(f"sdpa-flash {kind}")) if x), default=None)


def detailed_tables(all_cases: list[Case], bandwidth: float) -> str:
    out = []
    for kind in ("fwd", "fwd+bwd"):
        backward = kind == "fwd+bwd"
        head = ["model", "B", "T", "ours ms"] + (["ours graphed ms", "ours col-rev ms"] if backward else []) + [
            "fla ms", "SDPA cuDNN ms", "SDPA flash ms", "floor ms", "ours GB/s", "ours/floor", "fla/ours",
            "best SDPA/ours"] + (["launch-bound", "extra mem ours", "extra mem fla"] if backward else [])
        out += [f"\n### {kind}\n", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for c in all_cases:
            ms = c.ms
            mine = ms.get(f"ours {kind}")
            floor = c.floor_bytes(backward) / bandwidth * 1e3
            row = [c.model, str(c.B), str(c.T), fmt(mine)]
            if backward:
                row += [fmt(ms.get("ours graphed fwd+bwd")), fmt(ms.get("ours col-reverse fwd+bwd"))]
            row += [fmt(ms.get(f"fla {kind}")), fmt(ms.get(f"sdpa-cudnn {kind}")), fmt(ms.get(f"sdpa-flash {kind}")),
                    fmt(floor), f"{c.floor_bytes(backward) / mine / 1e6:.0f}" if mine else "-", ratio(mine, floor),
                    ratio(ms.get(f"fla {kind}"), mine), ratio(best_sdpa(ms, kind), mine)]
            if backward:
                row += ["yes" if c.host_bound else "no"]
                row += [f"{c.extra_memory[n]:.2f}" if n in c.extra_memory else "-" for n in ("ours", "fla")]
            out.append("| " + " | ".join(row) + " |")
    return "\n".join(out)


def targets(all_cases: list[Case], bandwidth: float, model_ms: dict) -> str:
    """The issue's targets against this run, one line each, worst case named: about the kernels
    with our GPU time (CUDA-graphed), and as a caller sees it with our eager time (host included)."""
    def worst(values, pick):
        values = [(v, c) for v, c in values if v is not None]
        return pick(values, key=lambda x: x[0]) if values else (None, None)

    def named(v, c, unit="x"):
        return f"{v:.2f}{unit} ({c.model} B={c.B} T={c.T})" if c else "not measured"

    def over(other, mine, cases):  # worst other / ours
        return worst([(other(c) / mine(c) if other(c) and mine(c) else None, c) for c in cases], min)

    gpu, eager = (lambda c: c.gpu_ms), (lambda c: c.ms.get("ours fwd+bwd"))  # noqa: E731
    fla, sdpa = (lambda c: c.ms.get("fla fwd+bwd")), (lambda c: best_sdpa(c.ms, "fwd+bwd"))  # noqa: E731
    long = [c for c in all_cases if c.T >= 1024]
    floor = worst([(gpu(c) / (c.floor_bytes(True) / bandwidth * 1e3) if gpu(c) else None, c)
                   for c in all_cases if c.model == "DiG-XL/2" and c.T >= 4096], max)
    memory = worst([(c.extra_memory.get("ours"), c) for c in all_cases], max)
    step = (f"{model_ms['DiT-S/2'] / model_ms['DiG-S/2']:.2f}x (DiG-S/2 {model_ms['DiG-S/2']:.1f} ms, "
            f"DiT-S/2 {model_ms['DiT-S/2']:.1f} ms)" if model_ms.get("DiG-S/2") and model_ms.get("DiT-S/2")
            else "not measured")
    launch_bound = [f"{c.model} B={c.B} T={c.T}" for c in all_cases if c.host_bound]
    return "\n".join([
        "| target | ours: GPU time (CUDA-graphed) | ours: eager (host included) |", "|---|---|---|",
        f"| fwd+bwd >= 5x faster than fla at every shape | {named(*over(fla, gpu, all_cases))} "
        f"| {named(*over(fla, eager, all_cases))} |",
        f"| DiG-XL/2 T >= 4096: <= 2.5x the memory floor | {named(*floor)} | - |",
        f"| faster than the best SDPA at T >= 1024 | {named(*over(sdpa, gpu, long))} "
        f"| {named(*over(sdpa, eager, long))} |",
        f"| compiled DiG-S/2 step >= 2.5x DiT-S/2 at 1792 px | {step} | |",
        f"| peak extra memory of fwd+bwd <= 1x the inputs | {named(*memory)} | |",
        "",
        "fla and SDPA are timed eagerly in both columns. Launch-bound (ours eagerly more than "
        f"{HOST_BOUND}x its GPU time): {', '.join(launch_bound) or 'none'}."])


def versions() -> str:
    found = []
    for name in ("flash-linear-attention", "fla-core"):
        try:
            found.append(importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            pass
    return f"torch {torch.__version__}, triton {triton.__version__}, flash-linear-attention " + (
        found[0] if found else "not installed")


def write_report(out: Path, run: dict) -> str:
    """gla_<card>.md and .json from a run: card, date, versions, copy bandwidth, notes, the cases
    done so far and the model steps."""
    done = run["cases"]
    summary = targets(done, run["copy_bandwidth"], run["model_step_ms"])
    report = (f"# GLA kernels at DiG shapes on {run['card']}\n\n{run['date']}; {run['versions']}; copy bandwidth "
              f"{run['copy_bandwidth'] / 1e12:.2f} TB/s (read + write). How it is measured: bench/gla.py's "
              "docstring.\n\n" + "".join(f"- {n}\n" for n in run["notes"]) + "\n## Targets\n\n" + summary + "\n"
              + detailed_tables(done, run["copy_bandwidth"]) + "\n")
    stem = "gla_" + re.sub(r"[^0-9A-Za-z]+", "_", run["card"]).strip("_").lower()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(report)
    (out / f"{stem}.json").write_text(json.dumps({**run, "cases": [vars(c) for c in done]}, indent=1))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip", nargs="*", default=[], choices=["fla", "sdpa", "model-step"],
                        help="contenders / parts to leave out")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--report", type=Path, metavar="JSON",
                        help="rewrite the report (next to --out) from a run's .json instead of measuring")
    args = parser.parse_args()
    if args.report:
        try:
            run = json.loads(args.report.read_text())
        except (OSError, ValueError) as e:
            sys.exit(f"cannot read {args.report} as a bench/gla.py run: {e}")
        missing = {"card", "date", "versions", "copy_bandwidth", "notes", "cases", "model_step_ms"} - set(
            run if isinstance(run, dict) else ())
        if missing:
            sys.exit(f"{args.report} is not a bench/gla.py run: it lacks {', '.join(sorted(missing))}")
        try:  # the report is rendered whole before anything is written
            summary = write_report(args.out, {**run, "cases": [Case(**c) for c in run["cases"]]})
        except (TypeError, ValueError, KeyError, AttributeError, ZeroDivisionError) as e:
            sys.exit(f"{args.report} does not hold a bench/gla.py run that can be reported: {type(e).__name__}: {e}")
        print(summary)
        return
    card = torch.cuda.get_device_name()
    print(f"{card}; {versions()}", flush=True)
    bandwidth = copy_bandwidth()
    print(f"copy bandwidth {bandwidth / 1e12:.2f} TB/s", flush=True)
    start = time.time()
    inputs = gla_inputs(Case("DiG-S/2", 1, 1024), grad=True)
    fwd_bwd(ours, inputs, torch.randn_like(inputs[2]))()
    torch.cuda.synchronize()
    notes = [f"first fwd+bwd of ours (compiles its kernels; {time.time() - start:.0f} s with a cold Triton cache)"]
    fla_chunk_gla = None
    if "fla" not in args.skip:
        try:
            from fla.ops.gla import chunk_gla as fla_chunk_gla
        except ImportError as e:
            notes.append(f"fla not importable ({e}); its columns are empty")
    if fla_chunk_gla is not None:
        start = time.time()
        difference = difference_from_fla(fla_chunk_gla)
        notes.append(f"ours vs fla output, DiG-S/2 B=2 T=1024 bf16: relative difference {difference:.2e} "
                     f"(fla's first call, autotuning: {time.time() - start:.0f} s)")
    print("\n".join(notes), flush=True)
    all_cases = cases()
    model_ms = {}
    run = {"card": card, "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "versions": versions(), "copy_bandwidth": bandwidth, "notes": notes, "model_step_ms": model_ms}
    for i, c in enumerate(all_cases):
        print(f"{c.model} B={c.B} T={c.T}", flush=True)
        run_ours(c)
        if "sdpa" not in args.skip:
            run_sdpa(c)
        if fla_chunk_gla is not None:
            run_gla(c, "fla", lambda *x: fla_chunk_gla(*x)[0])
        print("  " + ", ".join(f"{k} {fmt(v)}" for k, v in c.ms.items()), flush=True)
        torch.cuda.empty_cache()
        write_report(args.out, {**run, "cases": all_cases[: i + 1]})  # survives a run cut short
    if "model-step" not in args.skip:
        for name in ("DiG-S/2", "DiT-S/2"):
            start = time.time()
            model_ms[name] = model_step_ms(name)
            print(f"{name} compiled step at 1792 px, batch 2: {fmt(model_ms[name])} ms "
                  f"(compile and timing {time.time() - start:.0f} s)", flush=True)
            torch.cuda.empty_cache()
    print(write_report(args.out, {**run, "cases": all_cases}))


if __name__ == "__main__":
    main()
