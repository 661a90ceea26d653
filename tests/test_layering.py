"""Layering: ``lpips_sat`` never imports ``gapeval``, and no two project modules import each other (directly or
through others), counting imports inside functions too (except the lazy ``__getattr__`` facade of a package, which
re-exports a higher-level function under the package's name and is imported by nothing below it)."""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lpips_sat", "gapeval")


def _modules() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the two packages."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules that ``name`` imports anywhere in its source (module level or inside functions)."""
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    if is_pkg:  # a package's lazy ``__getattr__`` facade (``gapeval.metrics.compute``) is not a dependency of the package
        tree.body = [n for n in tree.body if not (isinstance(n, ast.FunctionDef) and n.name == "__getattr__")]
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for target in targets:
            while target and target not in modules:  # ``from pkg import name``: the module, else its package
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


@functools.lru_cache(maxsize=1)
def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_lpips_sat_source_never_imports_gapeval() -> None:
    offenders = {m: sorted(d for d in deps if d.startswith("gapeval")) for m, deps in _graph().items() if m.startswith("lpips_sat")}
    assert {m: d for m, d in offenders.items() if d} == {}


@pytest.mark.slow
def test_importing_lpips_sat_loads_no_gapeval_module() -> None:
    """Import every lpips_sat module (and build the CLI parser, which imports the training commands) in a fresh
    interpreter; ``gapeval`` must not appear in ``sys.modules``."""
    names = sorted(m for m in _modules() if m.startswith("lpips_sat"))
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "import lpips_sat.cli\n"
        "lpips_sat.cli.build_parser()\n"
        "print(sorted(m for m in sys.modules if m == 'gapeval' or m.startswith('gapeval.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (as a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _without_package_inits(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Drop edges into a package ``__init__`` from its own sub-modules (``from gapeval import __version__``):
    the package is always imported before its sub-modules, so such an edge cannot form a cycle at import time."""
    return {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycles_between_project_modules() -> None:
    assert _cycle(_without_package_inits(_graph())) is None


def test_report_reads_results_without_the_score_command() -> None:
    graph = _graph()
    assert "gapeval.score" not in graph["gapeval.report"]
    assert "gapeval.results" in graph["gapeval.report"]


@pytest.mark.parametrize("argv", [["--help"], ["score", "--help"], ["gap", "--run", "a=b"]])
def test_gapeval_without_the_eval_extra_names_it(argv, monkeypatch, capsys) -> None:
    """A base install (no scipy, rasterio, ...): every gapeval command says which extra to install, exit 1."""
    from gapeval import cli

    monkeypatch.setitem(sys.modules, "scipy", None)  # what find_spec reports for a package that is not installed
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("gapeval: error:") and "scipy" in err and 'pip install "lpips-sat[eval]"' in err


#: Simulates a base install (``pip install lpips-sat``: torch, torchvision (with Pillow), numpy, safetensors only).
_BASE_INSTALL = r'''
import sys
for name in ("rasterio", "scipy", "matplotlib", "tqdm", "yaml", "huggingface_hub", "torchmetrics", "affine", "diffusers"):
    sys.modules[name] = None  # what `import` and importlib.util.find_spec see for a package that is not installed
from lpips_sat.cli import main
sys.exit(main(sys.argv[1:]))
'''


@pytest.mark.slow
def test_lpips_sat_in_a_base_install():
    """``lpips-sat --help``, ``info`` and ``compare`` of .npy files work without any extra; the training commands
    and GeoTIFF inputs name the extra to install (exit 1), never a traceback."""
    examples = ROOT / "examples" / "hr" / "town.tif"
    cases = [
        (["--help"], 0, "compare"),
        (["info"], 0, "lpips-sat-s2-rn18"),
        (["pretrain", "--data", str(examples.parent), "--steps", "1", "--out", "/nonexistent/w.safetensors"], 1, 'pip install "lpips-sat['),
        (["compare", str(examples), str(examples)], 1, 'pip install "lpips-sat[eval]"'),
    ]
    for argv, code, needle in cases:
        out = subprocess.run([sys.executable, "-c", _BASE_INSTALL, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert out.returncode == code and needle in out.stdout + out.stderr, (argv, out.stderr)
        assert "Traceback" not in out.stderr
