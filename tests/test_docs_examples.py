"""The integration examples in docs/examples run (tiny mode) and check what they claim."""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"
SCENES = ROOT / ".." / "shared" / "data" / "s2" / "s2_l1c_reference_scenes.npy"


@pytest.fixture()
def tiny_examples(monkeypatch: pytest.MonkeyPatch):
    """Run examples in-process in tiny mode; their helper module ``common`` is imported fresh and removed after."""
    monkeypatch.setenv("LPIPS_SAT_EXAMPLE_TINY", "1")
    monkeypatch.delenv("LPIPS_SAT_EXAMPLE_DATA", raising=False)
    monkeypatch.syspath_prepend(str(EXAMPLES))
    sys.modules.pop("common", None)

    def run(name: str) -> dict:
        return runpy.run_path(str(EXAMPLES / name), run_name="example")

    yield run
    sys.modules.pop("common", None)


def test_plain_loop(tiny_examples, capsys) -> None:
    result = tiny_examples("plain_loop.py")["main"]()
    out = capsys.readouterr().out
    assert "validation LPIPS-Sat" in out and len(re.findall(r"^step ", out, flags=re.M)) >= 3
    assert all(0.0 <= v < 10 for v in result.values())


def test_lightning_style(tiny_examples, capsys) -> None:
    scores = tiny_examples("lightning_style.py")["main"]()
    out = capsys.readouterr().out
    assert len(scores) == 3 and out.count("val_lpips_sat") == 3
    assert all(s > 0 for s in scores)


def test_basicsr_registry(tiny_examples, capsys) -> None:
    ns = tiny_examples("basicsr_registry.py")
    loss = ns["main"]()
    assert loss > 0 and "built LPIPSSatLoss" in capsys.readouterr().out
    with pytest.raises(KeyError, match="known"):
        ns["build_loss"]({"type": "NoSuchLoss"})
    with pytest.raises(KeyError, match="already registered"):
        ns["LOSS_REGISTRY"].register()(ns["LPIPSSatLoss"])


def test_pyiqa_registry(tiny_examples, capsys) -> None:
    ns = tiny_examples("pyiqa_registry.py")
    result = ns["main"]()
    assert result["lower_better"] is True and "pyiqa-style 'lpips_sat'" in capsys.readouterr().out
    low, high = (float(v) for v in result["score_range"].split(","))
    assert low == 0.0 and all(low <= d <= high for d in result["distances"]) and max(result["distances"]) > 0
    with pytest.raises(KeyError, match="already registered"):
        ns["ARCH_REGISTRY"].register()(ns["LPIPSSatArch"])


def test_running_mean(tiny_examples, capsys) -> None:
    mean = tiny_examples("running_mean.py")["main"]()
    out = capsys.readouterr().out
    assert "over 10 samples" in out and mean > 0


def test_example_runs_as_a_script_on_real_scenes(tmp_path: Path) -> None:
    """As a user runs it: a subprocess from another folder, on real Sentinel-2 crops if the shared data exist."""
    env = {**os.environ, "LPIPS_SAT_EXAMPLE_TINY": "1", "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if SCENES.exists():
        env["LPIPS_SAT_EXAMPLE_DATA"] = str(SCENES.resolve())
    proc = subprocess.run([sys.executable, str(EXAMPLES / "running_mean.py")], check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "bilinear x2: LPIPS-Sat" in proc.stdout


def test_integration_doc_names_existing_examples() -> None:
    text = (ROOT / "docs" / "integration.md").read_text()
    for name in ("plain_loop.py", "lightning_style.py", "basicsr_registry.py", "pyiqa_registry.py", "running_mean.py"):
        assert f"docs/examples/{name}" in text and (EXAMPLES / name).exists()


def test_documented_gap_example_command_writes_only_under_out(capsys) -> None:
    """The worked gap example's documented command must not rewrite tracked docs: ``--write-docs`` is for maintainers,
    absent from the docs' commands and from ``--help``."""
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    for doc in ("README.md", "docs/domain_gap_example.md", "docs/gap.md"):
        commands = [line for line in (root / doc).read_text().splitlines() if "gap_example.py" in line and "--out" in line]
        assert all("--write-docs" not in c for c in commands), (doc, commands)
    assert re.search(r"^python3 scripts/gap_example\.py --out \S+$", (root / "docs/domain_gap_example.md").read_text(), re.M)
    spec = importlib.util.spec_from_file_location("gap_example", root / "scripts/gap_example.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as done:
        module.main(["--help"])
    help_text = capsys.readouterr().out
    assert done.value.code == 0 and "--out" in help_text and "--write-docs" not in help_text
