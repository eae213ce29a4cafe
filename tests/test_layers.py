"""The package's architecture holds: one direction of imports (import-linter's contract in pyproject.toml),
no import circle between any two modules, a docstring on every package, and small signatures in ``runs/``."""

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "restore_cli"
LINT = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")


def _lint(cwd: Path, src: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run([LINT, "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_layers_contract_is_kept():
    """pyproject.toml's layers: cli | api > bench > runs > models > solvers > priors > ops | metrics > ..."""
    r = _lint(ROOT, ROOT / "src")
    assert r.returncode == 0 and "0 broken" in r.stdout, r.stdout + r.stderr


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The contract is not vacuous: an operator importing the command line is reported."""
    shutil.copytree(PKG, tmp_path / "src" / "restore_cli", ignore=shutil.ignore_patterns("__pycache__", "weights"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    ops_base = tmp_path / "src" / "restore_cli" / "ops" / "base.py"
    ops_base.write_text(ops_base.read_text() + "\n\ndef _upward():\n    from ..cli import app  # noqa\n")
    r = _lint(tmp_path, tmp_path / "src")
    assert r.returncode != 0 and "restore_cli.ops.base -> restore_cli.cli.app" in r.stdout, r.stdout + r.stderr


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), function-level imports included."""
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for m in sorted(graph.modules):
        if m not in index:
            visit(m)
    return out


def test_no_import_circles():
    assert _cycles(grimp.build_graph("restore_cli")) == []


def test_every_package_says_what_lives_there():
    for init in PKG.rglob("__init__.py"):
        if "weights" in init.parts:
            continue
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 40, f"{init.relative_to(ROOT)} has no docstring saying what lives there"


@pytest.mark.parametrize("path", sorted((PKG / "runs").glob("*.py")), ids=lambda p: p.name)
def test_runs_functions_take_few_parameters(path):
    """A run passes one context object, not long parameter lists (self and keyword-only options aside)."""
    long = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            positional = [a.arg for a in node.args.posonlyargs + node.args.args if a.arg not in ("self", "cls")]
            if len(positional) > 5:
                long.append(f"{node.name}({', '.join(positional)})")
    assert not long, f"{path.name}: {long}"
