"""The training-step benchmark runs its CPU smoke mode without a failed entry: its sections call
the trainer, the models and the checkpointing policy directly, and a GPU call is too scarce to
find out there that one of them changed under it. The eager contenders, the memory fit and the
trainer (a run and a profile) stand for the rest; compiled contenders take minutes on a CPU."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_train_step_benchmark_smoke(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "train_step.py"), "--smoke", "--out", str(out), "--scratch",
         str(tmp_path / "scratch"), "--sections", "bare,memory,trainer", "--contenders", "dig-eager,dit-eager",
         "--trainer-runs", "dig_xl2_eager,profile"],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    entries = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert not [e for e in entries if "error" in e]
    sections = [e["section"] for e in entries]
    assert sections.count("bare") == 2 and sections.count("memory") == 4
    assert "trainer" in sections and "trainer_profile" in sections
    assert (out / "trainer_trace.json.gz").is_file()
    report = subprocess.run([sys.executable, str(ROOT / "bench" / "train_step.py"), "--report",
                             str(out / "results.jsonl"), "--out", str(tmp_path / "report")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]


def test_gla_report_rerenders_the_committed_run(tmp_path):
    """bench/gla.py --report rebuilds the committed GLA report from its .json without a GPU (the
    targets are computed, not copied), and refuses a file that is not a run."""
    committed = ROOT / "bench" / "results" / "gla_nvidia_h200.json"
    gla = [sys.executable, str(ROOT / "bench" / "gla.py"), "--out", str(tmp_path)]
    result = subprocess.run(gla + ["--report", str(committed)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "gla_nvidia_h200.md").read_text() == committed.with_suffix(".md").read_text()
    written = sorted(tmp_path.iterdir())
    bad = subprocess.run(gla + ["--report", str(ROOT / "README.md")], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode != 0 and "cannot read" in bad.stderr and sorted(tmp_path.iterdir()) == written
