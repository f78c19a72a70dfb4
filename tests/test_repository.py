"""Repository contracts: CI runs the README's test command; kernels import nothing of ours."""
import ast
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_ci_runs_exactly_the_readme_test_command():
    ci_command = (ROOT / ".ci/run").read_text().strip().splitlines()[-1]
    readme_commands = [line.strip() for line in (ROOT / "README.md").read_text().splitlines()]
    assert ci_command in readme_commands


def test_kernels_depend_only_on_torch_and_triton():
    for path in (ROOT / "kernels").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                assert not name.startswith(("dig_scale", "data_prep", "tests", "bench")), f"{path}: imports {name}"
