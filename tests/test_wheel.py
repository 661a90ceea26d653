"""Build the wheel, install it into a fresh virtual environment and run ``LPIPSSat()`` from outside the repository.

This catches package data missing from the wheel (``lpips_sat/weights/*.safetensors``, ``index.json``): inside
the checkout, ``weights_dir()`` would find ``weights/`` next to the sources and hide the gap. Reinstalling torch
& co. (several GB) into the fresh venv would be too slow, so the venv sees the *running* environment's
site-packages through a ``.pth`` file (this also works when the tests themselves run inside a venv, where
``--system-site-packages`` would expose the base interpreter instead) and gets only the wheel installed
(``--no-deps --ignore-installed``); its own site-packages come first on ``sys.path``.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from lpips_sat.registry import DEFAULT_NAME

ROOT = Path(__file__).resolve().parents[1]
INDEX = ROOT / "weights" / "index.json"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not INDEX.exists(), reason="weights/index.json is absent: no shipped weights yet, nothing to package"),
]


def _clean_env() -> dict[str, str]:
    """Environment without the checkout on the import path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(cmd: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], check=False, cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _build_wheel(out: Path) -> Path:
    """``python -m build --wheel``; offline (``--no-isolation``) when the build backend is installed."""
    try:
        import hatchling  # noqa: F401

        isolation = ["--no-isolation"]
    except ImportError:
        isolation = []  # build fetches hatchling from the package index
    _run([sys.executable, "-m", "build", "--wheel", *isolation, "--outdir", out, ROOT], cwd=out)
    wheels = sorted(out.glob("lpips_sat-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(wheel, venv python, a working folder outside the repository)."""
    pytest.importorskip("build")
    base = tmp_path_factory.mktemp("wheel")
    wheel = _build_wheel(base)
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=base)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    venv_site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=base).stdout.strip())
    parent = [p for p in dict.fromkeys(site.getsitepackages() + [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]) if Path(p).is_dir()]
    (venv_site / "_parent_environment.pth").write_text("\n".join(parent) + "\n")
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", wheel], cwd=base)
    work = base / "elsewhere"
    work.mkdir()
    return wheel, python, work


def test_wheel_contains_weights_and_index(installed) -> None:
    wheel, _, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    index = json.loads(INDEX.read_text())
    assert "lpips_sat/weights/index.json" in names
    assert index, "weights/index.json lists no weights"
    for row in index:
        assert f"lpips_sat/weights/{row['file']}" in names, f"{row['file']} missing from the wheel"
    for module in ("lpips_sat/metric.py", "lpips_sat/cli.py", "lpips_sat/running.py", "lpips_sat/raster.py", "gapeval/score.py", "gapeval/scoring/scene.py"):
        assert module in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "lpips-sat = lpips_sat.cli:main" in text


def test_default_metric_loads_from_the_installed_wheel(installed) -> None:
    _, python, work = installed
    code = (
        "import torch, lpips_sat, sys\n"
        "from lpips_sat import LPIPSSat\n"
        "assert 'site-packages' in lpips_sat.__file__ and sys.prefix in lpips_sat.__file__, lpips_sat.__file__\n"
        "m = LPIPSSat()\n"
        "g = torch.Generator().manual_seed(0)\n"
        "hr = torch.rand(2, 4, 64, 64, generator=g) * 0.3\n"
        "sr = (hr + 0.02 * torch.randn(hr.shape, generator=g)).clamp(0, 1)\n"
        "assert m(hr, hr).abs().max().item() == 0.0\n"
        "d = m(sr, hr)\n"
        "assert torch.isfinite(d).all() and (d > 0).all()\n"
        "print(lpips_sat.__file__, m.name, m.sha256, d.tolist())\n"
    )
    proc = _run([python, "-c", code], cwd=work)
    path, name, sha, *_ = proc.stdout.split()
    row = next(r for r in json.loads(INDEX.read_text()) if r["name"] == DEFAULT_NAME)
    assert str(ROOT) not in path and name == DEFAULT_NAME and sha == row["sha256"]


def test_installed_cli_info_checks_sha256(installed) -> None:
    _, python, work = installed
    script = python.parent / ("lpips-sat.exe" if os.name == "nt" else "lpips-sat")
    proc = _run([script, "info"], cwd=work)
    assert ": OK" in proc.stdout and "MISMATCH" not in proc.stdout
