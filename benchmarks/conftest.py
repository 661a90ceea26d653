"""Shared set-up of the benchmark suite: thread count, real Sentinel-2 patches, a recorder and the ratio summary.

Every benchmark goes through :func:`measure`, which runs ``benchmark.pedantic`` with an explicit number of rounds
(the machine is shared; pytest-benchmark's automatic calibration would run heavy cases for far too long) and keeps
the statistics. At the end of the session the ratio tables registered by the modules with :func:`summary` are
printed and written, with the machine description, to ``build/benchmarks/summary.md`` and ``results.json``.
Ratios use the *minimum* time of each side: interference from other processes only ever adds time, so the
minimum is the estimate least disturbed by a shared machine.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OUT = REPO / "build" / "benchmarks"
S2_STACK = REPO.parent / "shared" / "data" / "s2" / "s2_l1c_virginia_13band_10m.tif"
#: 1-based band numbers of B04, B03, B02, B08 (R, G, B, NIR) in the 13-band stack (B01..B12 with B8A).
RGBN_IN_STACK = (4, 3, 2, 8)

#: Intra-op threads for torch (env BENCH_THREADS). One by default: on a 2-core machine shared with other jobs two
#: OpenMP threads were 2-4x *slower* (oversubscription), and a single thread leaves a core to the others.
THREADS = int(os.environ.get("BENCH_THREADS", "1"))
torch.set_num_threads(THREADS)

RESULTS: dict[tuple[str, str], dict[str, Any]] = {}
_SUMMARIES: list[Callable[[dict[tuple[str, str], dict[str, Any]]], list[str]]] = []
_START: dict[str, Any] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--bench-full", action="store_true", help="every comparator in every cell and more rounds (about 3x longer)")


def pytest_sessionstart(session: pytest.Session) -> None:
    _START.update(time=time.time(), load=os.getloadavg())


@pytest.fixture(scope="session")
def full(request: pytest.FixtureRequest) -> bool:
    """Whether ``--bench-full`` was given."""
    return bool(request.config.getoption("--bench-full"))


def measure(benchmark: Any, fn: Callable[[], Any], *, group: str, label: str, rounds: int, warmup: int = 0,
            setup: Callable[[], Any] | None = None, **info: Any) -> dict[str, Any]:
    """Time ``fn`` ``rounds`` times (after ``warmup`` untimed calls) under pytest-benchmark and record the stats.

    ``setup`` (untimed) runs before every round; ``info`` goes into the JSON (``extra_info``) and the summary.
    Returns the record: ``min``, ``median``, ``max`` (seconds), ``rounds`` and ``info``.
    """
    benchmark.group = group
    benchmark.extra_info.update(label=label, threads=THREADS, **info)
    if setup is None:
        benchmark.pedantic(fn, rounds=rounds, warmup_rounds=warmup, iterations=1)
    else:
        def with_setup() -> tuple[tuple, dict]:
            setup()
            return (), {}
        for _ in range(warmup):
            setup()
            fn()
        benchmark.pedantic(fn, setup=with_setup, rounds=rounds, iterations=1)
    st = benchmark.stats.stats
    rec = {"min": st.min, "median": st.median, "max": st.max, "rounds": st.rounds, **info}
    RESULTS[(group, label)] = rec
    return rec


def summary(fn: Callable[[dict[tuple[str, str], dict[str, Any]]], list[str]]) -> Callable:
    """Register ``fn(results) -> markdown lines`` for the end-of-session summary (decorator)."""
    _SUMMARIES.append(fn)
    return fn


def rounds_for(pixels: int, heavy: bool = False) -> tuple[int, int]:
    """``(rounds, warmup)`` for a call processing ``pixels`` (batch x H x W, both images): fewer for heavy calls."""
    if heavy:
        pixels *= 8
    if pixels <= 2 * 8 * 64 * 64:
        return 7, 1
    if pixels <= 2 * 256 * 256:
        return 5, 1
    if pixels <= 2 * 8 * 256 * 256:
        return 3, 0
    return 2, 0


@lru_cache(maxsize=1)
def s2_rgbn() -> np.ndarray:
    """The real Sentinel-2 L1C stack's B04, B03, B02, B08 as float32 reflectance (4, 1947, 1933).

    Falls back to a smooth synthetic field (same size, reflectance-like) when the shared data is absent; the
    timings do not depend on the image content, only the realism of the score examples does.
    """
    if S2_STACK.exists():
        import rasterio

        with rasterio.open(S2_STACK) as ds:
            return ds.read(list(RGBN_IN_STACK)).astype(np.float32) / 10000.0
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:1947, 0:1933] / 200.0
    base = 0.1 + 0.05 * np.sin(xx + 0.3 * yy)[None] + 0.02 * rng.standard_normal((4, 1947, 1933))
    return np.clip(base, 0.0, 1.0).astype(np.float32)


def patches(size: int, n: int, seed: int) -> torch.Tensor:
    """``n`` random ``size`` x ``size`` crops of :func:`s2_rgbn` (reflectance), tiled by reflection if larger."""
    img = s2_rgbn()
    if size > min(img.shape[1:]):
        img = np.pad(img, ((0, 0), (0, size), (0, size)), mode="reflect")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        r, c = (int(rng.integers(0, img.shape[k] - size + 1)) for k in (1, 2))
        out.append(img[:, r:r + size, c:c + size])
    return torch.from_numpy(np.stack(out).copy())


def degrade(x: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """A plausible SR output for ``x``: 3x3 box blur mixed in, plus noise of 0.005 reflectance."""
    g = torch.Generator().manual_seed(seed)
    blur = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return (0.5 * x + 0.5 * blur + 0.005 * torch.randn(x.shape, generator=g)).clamp_min(0.0)


def machine() -> dict[str, Any]:
    """CPU model, cores, memory, library versions and thread count."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        mem = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "torch_threads": THREADS, "mkldnn": torch.backends.mkldnn.is_available()}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS:
        return
    info = machine()
    load_end = os.getloadavg()
    head = [
        "# Benchmark summary",
        "",
        (f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB; torch {info['torch']} with {info['torch_threads']} "
        f"thread(s); load average {_START.get('load', (0,))[0]:.1f} at start, {load_end[0]:.1f} at end; "
        f"run took {time.time() - _START.get('time', time.time()):.0f} s."),
        "",
    ]
    lines = list(head)
    for fn in _SUMMARIES:
        try:
            lines += fn(RESULTS) + [""]
        except Exception as exc:  # noqa: BLE001 - a summary must not hide the others (e.g. a module was deselected)
            lines += [f"({fn.__name__} unavailable: {type(exc).__name__}: {exc})", ""]
    text = "\n".join(lines)
    terminalreporter.write_sep("=", "lpips-sat benchmark ratios")
    terminalreporter.write_line(text)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "summary.md").write_text(text + "\n")
    blob = {"machine": info, "load_start": _START.get("load"), "load_end": load_end,
            "results": [{"group": g, "label": lab, **rec} for (g, lab), rec in RESULTS.items()]}
    (OUT / "results.json").write_text(json.dumps(blob, indent=2, default=str) + "\n")
    terminalreporter.write_line(f"written: {OUT / 'summary.md'} and {OUT / 'results.json'}")


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{x:.2f}x"


def fmt_ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.1f}"
