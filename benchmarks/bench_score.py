"""``gapeval score`` on real Sentinel-2 crops: per-pair breakdown, folder throughput, target-feature caching.

Data: four 1024 x 1024 px crops of the real Sentinel-2 L1C stack (B04, B03, B02, B08) written as uint16 DN
GeoTIFFs (COG, DEFLATE) with a 1e-4 scale in their metadata, and three prediction sets made from them
(``blur``: 3x3 box blur mixed in + noise, ``noise``: noise only, ``shift``: shifted by one pixel). The metric is
``LPIPSSat.random(width_div=1)`` (full-size random ResNet-18: the speed of the shipped metric), tile 512, batch 8.

The breakdown instruments one real ``score_scene`` call: the time spent inside ``RasterSource.read``/``read_on``
(reading), ``ClassicalAccumulator.update`` (classical metrics) and ``TiledLPIPS.add``/``flush`` (LPIPS-Sat) is
summed per round, so the three parts come from the same run and their ratio is immune to load drift.
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import degrade, fmt_ms, fmt_ratio, measure, s2_rgbn, summary

import gapeval.score as score_mod
from gapeval.metrics.classical import ClassicalAccumulator
from gapeval.metrics.perceptual import TiledLPIPS
from gapeval.sources import RasterSource
from lpips_sat import LPIPSSat
from lpips_sat.raster import write_raster

SIZE = 1024
OFFSETS = ((0, 0), (0, 900), (900, 0), (900, 900))
SETS = ("blur", "noise", "shift")
BANDS = ("B04", "B03", "B02", "B08")
CATEGORIES = {  # (class, method) -> category
    (RasterSource, "read"): "reading",
    (RasterSource, "read_on"): "reading",
    (ClassicalAccumulator, "update"): "classical",
    (TiledLPIPS, "add"): "lpips-sat",
    (TiledLPIPS, "flush"): "lpips-sat",
}


@functools.lru_cache(maxsize=1)
def metric() -> LPIPSSat:
    return LPIPSSat.random(width_div=1)


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``target/scene{i}.tif`` and ``{set}/scene{i}.tif`` for the prediction sets (uint16 DN, scale 1e-4)."""
    import rasterio
    from affine import Affine
    from conftest import S2_STACK

    root = tmp_path_factory.mktemp("score")
    img = s2_rgbn()
    if S2_STACK.exists():
        with rasterio.open(S2_STACK) as ds:
            transform, crs = ds.transform, ds.crs
    else:
        transform, crs = Affine(10, 0, 435730, 0, -10, 4179460), "EPSG:32618"
    for i, (r, c) in enumerate(OFFSETS):
        hr = img[:, r:r + SIZE, c:c + SIZE]
        preds = {
            "blur": degrade(torch.from_numpy(hr)[None], seed=i)[0].numpy(),
            "noise": np.clip(hr + 0.005 * np.random.default_rng(i).standard_normal(hr.shape), 0, None),
            "shift": np.roll(hr, (1, 1), axis=(1, 2)),
        }
        tr = transform * Affine.translation(c, r)
        for name, data in {"target": hr, **preds}.items():
            dn = np.round(np.asarray(data) * 10000).astype(np.uint16)
            write_raster(root / name / f"scene{i}.tif", dn, transform=tr, crs=crs, descriptions=BANDS, dtype="uint16", scales=[1e-4] * 4)
    return root


class Timers:
    """Wraps the methods of :data:`CATEGORIES` and sums the time spent in each category (outermost calls only)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._active: set[str] = set()

    @contextlib.contextmanager
    def installed(self) -> Iterator[Timers]:
        originals = {}
        for (cls, name), cat in CATEGORIES.items():
            originals[(cls, name)] = getattr(cls, name)
            setattr(cls, name, self._wrap(getattr(cls, name), cat))
        try:
            yield self
        finally:
            for (cls, name), fn in originals.items():
                setattr(cls, name, fn)

    def _wrap(self, fn: Any, cat: str) -> Any:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if cat in self._active:
                return fn(*args, **kwargs)
            self._active.add(cat)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[cat] += time.perf_counter() - t0
                self._active.discard(cat)
        return timed


def _run_score(root: Path, sets: tuple[str, ...], pattern: str | None = None, workers: int = 1) -> score_mod.ScoreResult:
    return score_mod.score({s: root / s for s in sets}, root / "target", metric=metric(), pattern=pattern, workers=workers,
                           batch_size=8, tile=512, sr_factor=4)


def bench_pair_breakdown(benchmark: Any, dataset: Path) -> None:
    """One 1024 x 1024 pair (one prediction set), instrumented; per-round category times."""
    rounds: list[dict[str, float]] = []

    def run() -> None:
        timers = Timers()
        with timers.installed():
            t0 = time.perf_counter()
            _run_score(dataset, ("blur",), pattern="scene0.tif")
            total = time.perf_counter() - t0
        rounds.append({**timers.seconds, "total": total})

    measure(benchmark, run, group="score-pair-1024px", label="score 1 pair (instrumented)", rounds=3, warmup=1)
    rounds = rounds[1:] if len(rounds) > 3 else rounds  # drop the warm-up round
    per = {k: statistics.median(r.get(k, 0.0) for r in rounds) for k in ("reading", "classical", "lpips-sat", "total")}
    ratio = statistics.median(r["lpips-sat"] / (r.get("reading", 0) + r.get("classical", 0)) for r in rounds)
    benchmark.extra_info.update(per_round=rounds, median=per, lpips_over_read_classical=ratio)
    from conftest import RESULTS

    RESULTS[("score-pair-1024px", "score 1 pair (instrumented)")].update(median_parts=per, ratio=ratio)


@pytest.mark.parametrize("workers", (1, 2))
def bench_folder(benchmark: Any, dataset: Path, workers: int) -> None:
    """Four 1024 x 1024 pairs, one prediction set, ``workers`` scene threads."""
    rec = measure(benchmark, lambda: _run_score(dataset, ("blur",), workers=workers), group="score-folder-4x1024px",
                  label=f"workers={workers}", rounds=2, warmup=0, pairs=len(OFFSETS), pixels=len(OFFSETS) * SIZE * SIZE)
    benchmark.extra_info.update(pairs_per_s=len(OFFSETS) / rec["min"], mpix_per_s=len(OFFSETS) * SIZE * SIZE / rec["min"] / 1e6)


@pytest.mark.parametrize("how", ("shared", "separate"))
def bench_cache(benchmark: Any, dataset: Path, how: str) -> None:
    """Three prediction sets against one target: one run (target read once, its features cached) vs three runs."""
    lp: list[float] = []

    def run() -> None:
        timers = Timers()
        with timers.installed():
            if how == "shared":
                _run_score(dataset, SETS, pattern="scene0.tif")
            else:
                for s in SETS:
                    _run_score(dataset, (s,), pattern="scene0.tif")
        lp.append(timers.seconds["lpips-sat"])

    measure(benchmark, run, group="score-cache-3sets-1024px", label=how, rounds=2, warmup=0)
    from conftest import RESULTS

    RESULTS[("score-cache-3sets-1024px", how)]["lpips_min"] = min(lp)


@summary
def score_summary(results: dict) -> list[str]:
    lines = ["## gapeval score (1024 x 1024 px real S2 pairs, tile 512, batch 8)", ""]
    rec = results.get(("score-pair-1024px", "score 1 pair (instrumented)"))
    if rec:
        p = rec["median_parts"]
        lines += ["| per pair | reading | classical | LPIPS-Sat | whole score() | LPIPS-Sat ÷ (reading + classical) |", "|---|---|---|---|---|---|",
                  (f"| ms (median of rounds) | {fmt_ms(p['reading'])} | {fmt_ms(p['classical'])} | {fmt_ms(p['lpips-sat'])} | {fmt_ms(p['total'])} | "
                  f"{fmt_ratio(rec['ratio'])} |"), "",
                  f"Target reading + classical ≥ 5x faster than LPIPS-Sat: {rec['ratio']:.2f}x -> {'met' if rec['ratio'] >= 5 else 'MISSED'}.", ""]
    w1, w2 = results.get(("score-folder-4x1024px", "workers=1")), results.get(("score-folder-4x1024px", "workers=2"))
    if w1:
        lines += ["| folder of 4 pairs | seconds | pairs/s | Mpx/s |", "|---|---|---|---|"]
        for label, r in (("workers=1", w1), ("workers=2", w2)):
            if r:
                lines.append(f"| {label} | {r['min']:.2f} | {r['pairs'] / r['min']:.2f} | {r['pixels'] / r['min'] / 1e6:.2f} |")
        if w2:
            lines.append(f"\n2 workers vs 1: {fmt_ratio(w1['min'] / w2['min'])} faster.")
        lines.append("")
    sh, se = results.get(("score-cache-3sets-1024px", "shared")), results.get(("score-cache-3sets-1024px", "separate"))
    if sh and se:
        lines += ["| 3 prediction sets, 1 target | whole s | LPIPS-Sat part s |", "|---|---|---|",
                  f"| one run (target features cached) | {sh['min']:.2f} | {sh['lpips_min']:.2f} |",
                  f"| three runs | {se['min']:.2f} | {se['lpips_min']:.2f} |",
                  f"| speed-up | {fmt_ratio(se['min'] / sh['min'])} | {fmt_ratio(se['lpips_min'] / sh['lpips_min'])} (ideal 2K/(K+1) = 1.50x) |"]
    return lines
