"""The digits demo, closed: the trained run -> exported EMA weights -> samples of every class ->
labelled by a classifier trained on the real digits.

    python -m dig_scale.demo_loop runs/demo_digits

writes runs/demo_digits/eval/: export/ (the exported model), samples.npz (ADM layout), grid.png
(one column per digit) and samples.metrics.json (class-conditional accuracy, Fréchet distance in
the classifier's feature space). The same three commands a user runs for ImageNet, in order.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dig_scale import evaluate, export, sample

DIGITS = ",".join(str(d) for d in range(10))


def close_the_loop(run: Path, per_class: int = 100, sampler: str = "ddpm", steps: int = 250, cfg_scale: float = 1.5,
                   seed: int = 0, batch_size: int = 100) -> dict:
    """Export, sample and judge `run` into run/eval/ (which must not exist). Returns the metrics."""
    out = run / "eval"
    if out.exists():
        raise FileExistsError(f"{out} already exists; delete it to close the loop again")
    exported = export.export(run, out / "export")
    common = [str(exported), "--classes", DIGITS, "--sampler", sampler, "--steps", str(steps),
              "--cfg-scale", str(cfg_scale), "--seed", str(seed), "--batch-size", str(batch_size)]
    for extra in (["--grid", "--num-samples", "40", "--out", str(out / "grid.png")],
                  ["--num-samples", str(10 * per_class), "--out", str(out / "samples.npz")]):
        if sample.main(common + extra) != 0:
            raise RuntimeError(f"sampling {exported} failed (see above)")
    if evaluate.main([str(out / "samples.npz"), "--digits"]) != 0:
        raise RuntimeError("evaluation failed (see above)")
    return json.loads((out / "samples.metrics.json").read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dig_scale.demo_loop", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, nargs="?", default=Path("runs/demo_digits"))
    parser.add_argument("--per-class", type=int, default=100, help="samples of each digit")
    parser.add_argument("--sampler", choices=sample.SAMPLERS, default="ddpm")
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--cfg-scale", type=float, default=1.5)
    args = parser.parse_args(argv)
    try:
        metrics = close_the_loop(args.run, args.per_class, args.sampler, args.steps, args.cfg_scale)
    except (FileExistsError, export.ExportError, export.CheckpointError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"class-conditional accuracy {metrics['accuracy']:.1%} (chance 10%), Fréchet distance "
          f"{metrics['frechet_distance']:.3f} (real vs real: {metrics['real_frechet_distance']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
