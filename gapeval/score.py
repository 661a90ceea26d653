"""``gapeval score``: score folders of super-resolved predictions against high-resolution targets.

Data flow (one scene = one target and every prediction of it):

    pair files by key -> check headers (bands, scale, grids; all before any pixel is read)
    -> per window of the target grid: read target once, each prediction (resampled only if asked)
       -> classical metrics (masked) | LPIPS-Sat tiles, batched, target features shared | LR-upsampled reference
    -> per window of the LR grid: predictions area-averaged onto it vs LR (consistency)
    -> one row per (prediction set, scene) appended to ``pairs.csv`` -> ``summary.json`` -> optional report

The Python API is :func:`score`; the command line is :func:`add_arguments` / :func:`run`.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io as _io
import json
import logging
import math
import os
import platform
import sys
import threading
import time
import types
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gapeval.io import (
    RESAMPLING_METHODS,
    Grid,
    RasterSource,
    RasterWriter,
    append_line,
    band_gain_offset,
    check_not_tiny,
    check_reflectance,
    check_same_grid,
    expand_window,
    fixed_size_window,
    grid_of,
    iter_windows,
    lr_ratio,
    pair_folders,
    raster_info,
    read_lines_complete,
    select_bands,
    window_slices,
    write_text_atomic,
)
from gapeval.metrics import METRICS, PER_BAND
from gapeval.metrics.classical import SSIM_RADIUS, ClassicalAccumulator, interior_mask
from gapeval.metrics.consistency import CORRECTNESS_LAMBDAS, HF_THRESHOLD, ConsistencyAccumulator
from gapeval.metrics.perceptual import TiledLPIPS
from gapeval.stats import summarize
from lpips_sat.errors import InputError, LPIPSSatError, MissingFileError, WeightsError
from lpips_sat.metric import MIN_SIZE, LPIPSSat
from lpips_sat.registry import DEFAULT_NAME, sha256_file

logger = logging.getLogger(__name__)

PAIRS_CSV, SUMMARY_JSON, MAPS_DIR = "pairs.csv", "summary.json", "maps"
#: ``--weights random-tiny``: a tiny random-weight network (``LPIPSSat.random()``), for tests only.
RANDOM_WEIGHTS = "random-tiny"
#: Default window (px) for reading, classical metrics and LPIPS-Sat tiles.
DEFAULT_TILE = 512
#: Columns before and after the metric columns of ``pairs.csv``.
LEAD_COLUMNS = (
    "pred_set",
    "key",
    "status",
    "reason",
    "valid_fraction",
    "pred_invalid_fraction",
    "height",
    "width",
    "lpips_sat",
    "lpips_tiles",
)
TAIL_COLUMNS = ("seconds", "config_hash", "pred_path", "target_path", "lr_path", "pred_sha256", "target_sha256", "lr_sha256")
#: Columns of ``pairs.csv`` that are not metrics.
TEXT_COLUMNS = (
    "pred_set",
    "key",
    "status",
    "reason",
    "config_hash",
    "pred_path",
    "target_path",
    "lr_path",
    "pred_sha256",
    "target_sha256",
    "lr_sha256",
)


class _Cancelled(Exception):
    """Raised inside a worker when the run was interrupted."""


# ------------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class ScoreConfig:
    """Everything that changes the numbers of a run (its hash marks rows for ``--resume``)."""

    weights: str
    weights_sha256: str | None
    bands: tuple[str, ...]
    with_lr: bool = False
    pred_bands: str | None = None
    target_bands: str | None = None
    lr_bands: str | None = None
    pred_scale: float | None = None
    target_scale: float | None = None
    lr_scale: float | None = None
    data_range: float = 1.0
    resample: str | None = None
    tile: int = DEFAULT_TILE
    sr_factor: float | None = None
    patch: int = 8
    hf_threshold: float = HF_THRESHOLD
    lambdas: tuple[float, float, float] = CORRECTNESS_LAMBDAS
    pattern: str | None = None

    def __post_init__(self) -> None:
        if not self.data_range > 0:
            raise InputError(f"--data-range must be positive, got {self.data_range}")
        if self.tile < MIN_SIZE:
            raise InputError(f"--tile must be at least {MIN_SIZE} px (LPIPS-Sat's smallest input), got {self.tile}")
        if self.tile % self.patch:
            raise InputError(f"--tile ({self.tile}) must be a multiple of the correctness patch ({self.patch})")
        if self.resample is not None and self.resample not in RESAMPLING_METHODS:
            raise InputError(f"--resample must be one of {RESAMPLING_METHODS}, got {self.resample!r}")
        if self.sr_factor is not None and not self.sr_factor > 1:
            raise InputError(f"--sr-factor must be > 1 (e.g. 4 for 10 m -> 2.5 m), got {self.sr_factor}")

    def hash(self) -> str:
        """Short sha256 of the configuration and the gapeval version."""
        from gapeval import __version__

        text = json.dumps({**asdict(self), "gapeval": __version__}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def columns(config: ScoreConfig) -> list[str]:
    """Column order of ``pairs.csv`` for ``config`` (per-band columns use the metric's band names)."""
    cols = list(LEAD_COLUMNS) + ["psnr", "ssim", "sam_deg", "ergas", "rmse", "mae"]
    cols += [f"{m}_{b}" for m in ("psnr", "ssim", "rmse", "mae") for b in config.bands]
    if config.with_lr:
        cols += [
            "refl_l1",
            *[f"refl_l1_{b}" for b in config.bands],
            "spectral_sam_deg",
            "shift_dx",
            "shift_dy",
            "shift_px",
            "improvement",
            "omission",
            "hallucination",
            "tc_patches",
        ]
    return cols + list(TAIL_COLUMNS)


def metric_columns(cols: Sequence[str]) -> list[str]:
    """The numeric result columns summarised per prediction set."""
    return [c for c in cols if c not in TEXT_COLUMNS and c not in ("seconds", "height", "width", "lpips_tiles", "tc_patches")]


# ------------------------------------------------------------------------------------------------- metric


def load_metric(weights: str | Path | LPIPSSat | None = None, device: str | None = None) -> tuple[LPIPSSat, str, str | None]:
    """``(metric, label, sha256)`` for a registry name, a ``.safetensors`` path, ``"random-tiny"`` or an instance.

    ``sha256`` identifies the weights: the file's hash, or for an in-memory network the hash of its tensors.
    """
    if isinstance(weights, LPIPSSat):
        metric = weights
    elif str(weights) == RANDOM_WEIGHTS:
        metric = LPIPSSat.random()
    else:
        name = str(weights or DEFAULT_NAME)
        try:
            metric = LPIPSSat(name)
        except (WeightsError, MissingFileError) as exc:
            hint = (
                (
                    f"\n  The shipped weights {DEFAULT_NAME!r} are not installed yet; `--weights {RANDOM_WEIGHTS}` runs a tiny random "
                    "network for testing only (its numbers mean nothing)."
                )
                if name == DEFAULT_NAME
                else ""
            )
            raise WeightsError(f"{exc}{hint}") from exc
    if device:
        metric = metric.to(_device(device))
    sha = metric.sha256
    if sha is None and weights is not None and not isinstance(weights, LPIPSSat) and Path(str(weights)).is_file():
        sha = sha256_file(str(weights))
    if sha is None:
        digest = hashlib.sha256()
        for key, tensor in sorted(metric.state_dict().items()):
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        sha = digest.hexdigest()
    return metric, metric.name, sha


def _device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


# --------------------------------------------------------------------------------------------------- plan


@dataclass
class _Input:
    source: RasterSource
    sha256: str
    flag: str  # option that sets this file's scale, quoted in errors
    warp: bool = False


@dataclass
class ScenePlan:
    """One target with the predictions still to score and its optional LR input, checked and ready to read."""

    key: str
    target: _Input
    preds: dict[str, _Input]
    lr: _Input | None = None
    ratio: float | None = None  # LR pixel size / target pixel size


class _Hashes:
    """sha256 of files, each computed once."""

    def __init__(self) -> None:
        self._done: dict[Path, str] = {}

    def __call__(self, path: Path) -> str:
        if path not in self._done:
            self._done[path] = sha256_file(path)
        return self._done[path]


def _make_input(path: Path, config: ScoreConfig, role: str, target: Grid | None, hashes: _Hashes) -> tuple[_Input, Grid]:
    info = raster_info(path)
    declared, scale = {
        "pred": (config.pred_bands, config.pred_scale),
        "target": (config.target_bands, config.target_scale),
        "lr": (config.lr_bands, config.lr_scale),
    }[role]
    bands = select_bands(info, declared, config.bands, f"--{role}-bands")
    gain, offset = band_gain_offset(info, bands, scale)
    grid = grid_of(info, target)
    return _Input(RasterSource(info, grid, bands, gain, offset), hashes(path), f"--{role}-scale"), grid


def plan_scene(
    key: str, target: Path, preds: Mapping[str, Path], lr: Path | None, config: ScoreConfig, hashes: _Hashes | None = None
) -> ScenePlan:
    """Check one scene's headers (bands, scale, size, grids) and build its :class:`ScenePlan`.

    Raises:
        InputError: wrong band count/order, image too small, grids that differ without ``resample``, LR extent.
    """
    hashes = hashes or _Hashes()
    tin, tgrid = _make_input(target, config, "target", None, hashes)
    if min(tgrid.height, tgrid.width) < MIN_SIZE:
        raise InputError(f"{target}: {tgrid.width}x{tgrid.height} px is smaller than LPIPS-Sat's minimum of {MIN_SIZE}x{MIN_SIZE}")
    plan = ScenePlan(key, tin, {})
    for name, path in preds.items():
        pin, pgrid = _make_input(path, config, "pred", tgrid, hashes)
        pin.warp = check_same_grid(pgrid, tgrid, path, target, config.resample)
        plan.preds[name] = pin
    if lr is not None:
        lin, lgrid = _make_input(lr, config, "lr", tgrid, hashes)
        plan.lr, plan.ratio = lin, lr_ratio(lgrid, tgrid, lr, target)
    return plan


# -------------------------------------------------------------------------------------------------- scene


def _read(inp: _Input, grid: Grid, window: Any, resampling: str | None) -> tuple[np.ndarray, np.ndarray]:
    data, valid = inp.source.read_on(grid, window, resampling or "nearest") if inp.warp else inp.source.read(window)
    return data, valid


def score_scene(
    plan: ScenePlan,
    config: ScoreConfig,
    metric: LPIPSSat,
    *,
    batch_size: int = 8,
    maps_dir: Path | None = None,
    stop: threading.Event | None = None,
) -> list[dict[str, Any]]:
    """Score every prediction of one scene; returns one record per prediction (see :func:`columns`).

    Reads the target once per window for all predictions; LPIPS-Sat target features are computed once per tile.
    Raises:
        InputError: values that are not reflectance (unscaled digital numbers, reflectance divided twice).
    """
    t0 = time.perf_counter()
    tgt = plan.target
    grid = tgt.source.grid
    height, width = grid.height, grid.width
    names = list(plan.preds)
    ratio_hl = 1.0 / plan.ratio if plan.ratio else (1.0 / config.sr_factor if config.sr_factor else None)
    classical = {n: ClassicalAccumulator(config.bands, config.data_range, ratio_hl) for n in names}
    consistency = (
        {n: ConsistencyAccumulator(config.bands, config.patch, config.hf_threshold, config.lambdas) for n in names} if plan.lr else {}
    )
    lpips = TiledLPIPS(metric, names, batch_size=batch_size, maps=maps_dir is not None)
    n_target = 0
    pred_invalid = {n: 0 for n in names}
    maxima = {"target": -math.inf, **{n: -math.inf for n in names}}

    with ExitStack() as stack:
        for inp in [tgt, *plan.preds.values(), *([plan.lr] if plan.lr else [])]:
            stack.enter_context(inp.source)
        writers: dict[str, RasterWriter] = {}
        if maps_dir is not None:
            for n in names:
                path = maps_dir / n / f"{plan.key}.tif"
                path.parent.mkdir(parents=True, exist_ok=True)
                tags = {
                    "METRIC": "LPIPS-Sat",
                    "WEIGHTS": config.weights,
                    "WEIGHTS_SHA256": config.weights_sha256 or "",
                    "PREDICTION": str(plan.preds[n].source.path),
                    "TARGET": str(tgt.source.path),
                }
                writers[n] = stack.enter_context(RasterWriter(path, grid, tags=tags, descriptions=["lpips_sat"]))

        def write_maps(done: list[tuple[str, Any, np.ndarray]]) -> None:
            for name, window, dmap in done:
                writers[name].write(dmap[None], window)

        for core in iter_windows(height, width, config.tile):
            if stop is not None and stop.is_set():
                raise _Cancelled()
            lp_win = fixed_size_window(core, config.tile, height, width)
            halo = expand_window(core, SSIM_RADIUS, height, width)
            read_win = _union(halo, lp_win)
            core_sl = window_slices(core, read_win)
            lp_sl = window_slices(lp_win, read_win)
            core_in_lp = window_slices(core, lp_win)
            interior = interior_mask(
                slice(int(core.row_off), int(core.row_off + core.height)),
                slice(int(core.col_off), int(core.col_off + core.width)),
                height,
                width,
            )
            t, tv = tgt.source.read(read_win)
            maxima["target"] = max(maxima["target"], check_reflectance(t, tv, tgt.source.path, tgt.flag))
            n_target += int(tv[core_sl].sum())
            lr_up = lr_up_valid = None
            if plan.lr is not None:
                lr_up, lr_up_valid = plan.lr.source.read_on(grid, core, "bilinear")
            lp_preds, lp_valid = {}, {}
            for n in names:
                inp = plan.preds[n]
                p, pv = _read(inp, grid, read_win, config.resample)
                maxima[n] = max(maxima[n], check_reflectance(p, pv, inp.source.path, inp.flag))
                joint = tv & pv
                pred_invalid[n] += int((tv & ~pv)[core_sl].sum())
                classical[n].update(p, t, joint, core_sl, interior)
                if plan.lr is not None:
                    pc = p[:, core_sl[0], core_sl[1]]
                    consistency[n].update_hr(pc, t[:, core_sl[0], core_sl[1]], lr_up, joint[core_sl] & lr_up_valid)
                lp_preds[n], lp_valid[n] = p[:, lp_sl[0], lp_sl[1]], joint[lp_sl]
            write_maps(lpips.add(t[:, lp_sl[0], lp_sl[1]], tv[lp_sl], lp_preds, lp_valid, core_in_lp, tag=core))
        write_maps(lpips.flush())

        if plan.lr is not None:
            lgrid = plan.lr.source.grid
            lr_tile = max(MIN_SIZE, math.ceil(config.tile / plan.ratio))
            for lcore in iter_windows(lgrid.height, lgrid.width, lr_tile):
                if stop is not None and stop.is_set():
                    raise _Cancelled()
                lv_data, lv = plan.lr.source.read(lcore)
                check_reflectance(lv_data, lv, plan.lr.source.path, plan.lr.flag)
                for n in names:
                    s, sv = plan.preds[n].source.read_on(lgrid, lcore, "average")
                    consistency[n].update_lr(s, lv_data, sv & lv)

    check_not_tiny(maxima["target"], tgt.source.path, tgt.flag)
    seconds = time.perf_counter() - t0
    total = height * width
    records = []
    for n in names:
        inp = plan.preds[n]
        if maxima[n] > -math.inf:
            check_not_tiny(maxima[n], inp.source.path, inp.flag)
        res = classical[n].result()
        n_valid = classical[n].n_valid
        rec: dict[str, Any] = {
            "pred_set": n,
            "key": plan.key,
            "status": "ok",
            "reason": "",
            "height": height,
            "width": width,
            "valid_fraction": n_valid / total,
            "pred_invalid_fraction": pred_invalid[n] / n_target if n_target else float("nan"),
        }
        if n_valid == 0:
            why = (
                "the target has no valid pixel (all nodata/NaN)"
                if n_target == 0
                else "the prediction has no valid pixel where the target is valid (all nodata/NaN)"
            )
            rec.update(status="skipped", reason=why)
            logger.warning("%s / %s skipped: %s", n, plan.key, why)
        else:
            rec.update(res)
            rec["lpips_sat"], rec["lpips_tiles"] = (float(v) for v in lpips.result(n))
            if plan.lr is not None:
                rec.update(consistency[n].result())
        rec.update(
            seconds=seconds,
            config_hash=config.hash(),
            pred_path=str(inp.source.path),
            target_path=str(tgt.source.path),
            lr_path=str(plan.lr.source.path) if plan.lr else "",
            pred_sha256=inp.sha256,
            target_sha256=tgt.sha256,
            lr_sha256=plan.lr.sha256 if plan.lr else "",
        )
        records.append(rec)
    return records


def _union(a: Any, b: Any) -> Any:
    from rasterio.windows import Window

    r0, c0 = min(a.row_off, b.row_off), min(a.col_off, b.col_off)
    r1, c1 = max(a.row_off + a.height, b.row_off + b.height), max(a.col_off + a.width, b.col_off + b.width)
    return Window(int(c0), int(r0), int(c1 - c0), int(r1 - r0))


# -------------------------------------------------------------------------------------------------- table


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return "" if np.isnan(value) else format(float(value), ".10g")  # inf stays "inf" (PSNR of identical images)
    return str(value)


def _parse(row: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in row.items():
        if k in TEXT_COLUMNS:
            out[k] = v
        elif k in ("height", "width"):
            out[k] = int(v) if v else 0
        else:
            out[k] = float(v) if v not in ("", None) else float("nan")
    return out


class PairsTable:
    """``pairs.csv``: header written atomically, then one row appended per pair (fsync'd), so an interrupted run
    keeps every finished row. With ``resume`` the rows of other configurations or changed files are dropped."""

    def __init__(self, path: Path, cols: Sequence[str], config_hash: str, *, resume: bool, overwrite: bool) -> None:
        self.path, self.cols, self.config_hash = Path(path), list(cols), config_hash
        self.rows: list[dict[str, Any]] = []
        if self.path.exists() and self.path.stat().st_size:
            if resume:
                self._load()
                return
            if not overwrite:
                raise InputError(f"{self.path} already exists; pass --resume to continue that run or --overwrite to start over")
        write_text_atomic(self.path, self._line(self.cols))

    def _line(self, values: Iterable[Any]) -> str:
        buf = _io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow([_format(v) for v in values])
        return buf.getvalue()

    def _load(self) -> None:
        lines = read_lines_complete(self.path)
        reader = csv.reader(lines)
        header = next(reader, None)
        if header != self.cols:
            raise InputError(
                f"{self.path} has other columns than this configuration writes (different bands, or --lr given or not); "
                "use another --out, or --overwrite to start over"
            )
        rows = [dict(zip(header, r)) for r in reader]
        keep = [r for r in rows if r["config_hash"] == self.config_hash]
        if len(keep) != len(rows):
            logger.warning(
                "%s: %d rows were scored with another configuration; they will be scored again", self.path, len(rows) - len(keep)
            )
            write_text_atomic(self.path, "".join(self._line(r.values()) for r in [dict(zip(header, header))] + keep))
        self.rows = [_parse(r) for r in keep]

    def done(self) -> dict[tuple[str, str], dict[str, Any]]:
        return {(r["pred_set"], r["key"]): r for r in self.rows}

    def drop(self, stale: set[tuple[str, str]]) -> None:
        """Remove rows (e.g. whose input files changed) so they are scored again."""
        if not stale:
            return
        self.rows = [r for r in self.rows if (r["pred_set"], r["key"]) not in stale]
        write_text_atomic(self.path, self._line(self.cols) + "".join(self._line(r.get(c) for c in self.cols) for r in self.rows))

    def append(self, record: Mapping[str, Any]) -> None:
        append_line(self.path, self._line(record.get(c) for c in self.cols))
        self.rows.append(_parse({c: _format(record.get(c)) for c in self.cols}))


# ------------------------------------------------------------------------------------------------ summary


def _versions() -> dict[str, str]:
    import rasterio
    import scipy
    import torch

    import gapeval
    import lpips_sat

    return {
        "gapeval": gapeval.__version__,
        "lpips_sat": lpips_sat.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "torch": torch.__version__,
        "rasterio": rasterio.__version__,
        "gdal": rasterio.__gdal_version__,
    }


def summarize_rows(rows: Sequence[Mapping[str, Any]], cols: Sequence[str]) -> dict[str, Any]:
    """Per prediction set: counts and, per metric column, mean/median/std/bootstrap 95 % CI of the scored pairs."""
    out: dict[str, Any] = {}
    for name in sorted({r["pred_set"] for r in rows}):
        mine = [r for r in rows if r["pred_set"] == name]
        ok = [r for r in mine if r["status"] == "ok"]
        metrics = {c: summarize(np.array([r[c] for r in ok], dtype=float)) for c in metric_columns(cols)}
        out[name] = {"n_pairs": len(mine), "n_scored": len(ok), "n_skipped": len(mine) - len(ok), "metrics": metrics}
    return out


# ---------------------------------------------------------------------------------------------------- API


@dataclass
class ScoreResult:
    """What :func:`score` returns: one record per pair (dicts keyed by :func:`columns`), the summary, the output folder."""

    records: list[dict[str, Any]]
    summary: dict[str, Any]
    out: Path | None = None
    config: ScoreConfig | None = None
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def table(self, metric: str = "lpips_sat") -> dict[str, float]:
        """Mean of ``metric`` per prediction set."""
        return {k: v["metrics"][metric]["mean"] for k, v in self.summary["pred_sets"].items()}


def _pred_sets(pred: str | Path | Sequence[str | Path] | Mapping[str, str | Path]) -> dict[str, Path]:
    if isinstance(pred, Mapping):
        return {str(k): Path(v) for k, v in pred.items()}
    items = [pred] if isinstance(pred, (str, Path)) else list(pred)
    out: dict[str, Path] = {}
    for item in items:
        name = Path(item).name or str(item)
        if name in out:
            raise InputError(f"Two prediction folders are both named {name!r}; name them (name=DIR on the command line, a dict in Python)")
        out[name] = Path(item)
    return out


def score(
    pred: str | Path | Sequence[str | Path] | Mapping[str, str | Path],
    target: str | Path,
    *,
    lr: str | Path | None = None,
    out: str | Path | None = None,
    metric: str | Path | LPIPSSat | None = None,
    pred_bands: str | None = None,
    target_bands: str | None = None,
    lr_bands: str | None = None,
    pred_scale: float | None = None,
    target_scale: float | None = None,
    lr_scale: float | None = None,
    data_range: float = 1.0,
    resample: str | None = None,
    tile: int = DEFAULT_TILE,
    batch_size: int = 8,
    sr_factor: float | None = None,
    pattern: str | None = None,
    allow_missing: bool = False,
    maps: bool = False,
    report: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    workers: int = 1,
    device: str | None = None,
    progress: bool = False,
) -> ScoreResult:
    """Score super-resolved predictions against high-resolution targets (folders of GeoTIFF/PNG/JPEG/.npy).

    Args:
        pred: a prediction folder, a list of folders (named by folder name) or ``{name: folder}``.
        target: folder of high-resolution targets; files pair by relative path and stem.
        lr: optional folder of the low-resolution inputs (adds LR-consistency and correctness metrics).
        out: results folder (``pairs.csv``, ``summary.json``, ``maps/``, report); ``None`` keeps results in memory.
        metric: LPIPS-Sat weights (registry name, ``.safetensors`` path, ``"random-tiny"`` for tests) or an
            :class:`~lpips_sat.metric.LPIPSSat` instance; default the shipped ``lpips-sat-s2-rn18``.
        pred_bands, target_bands, lr_bands: band order of the files (preset or names); default from band
            descriptions, else assumed to be the metric's bands when the count matches.
        pred_scale, target_scale, lr_scale: divide raw values by this (10000 for Sentinel-2 DN); default the files'
            own scale/offset metadata, else values are taken as reflectance (checked for plausibility).
        data_range: peak-to-peak range for PSNR/SSIM (1.0 for reflectance).
        resample: method to bring predictions onto the target grid when grids differ; ``None`` makes that an error.
        tile, batch_size: window size in pixels and LPIPS-Sat tiles per network call.
        sr_factor: LR/HR pixel-size ratio for ERGAS when ``lr`` is not given.
        pattern: glob on relative paths selecting files; allow_missing: score complete pairs, list the rest.
        maps: write georeferenced LPIPS-Sat maps; report: write the HTML/Markdown report (both need ``out``).
        resume: skip pairs already in ``out/pairs.csv`` with this configuration and unchanged files.
        overwrite: replace an existing ``pairs.csv`` (otherwise an error unless ``resume``).
        workers: scenes scored in parallel threads. device: ``cpu``, ``cuda``, ``auto``.
        progress: show a tqdm progress bar (stderr).
    Returns:
        :class:`ScoreResult` with ``records`` (one dict per pair, metrics as floats, NaN where not applicable)
        and ``summary`` (per prediction set and metric: n, mean, median, std, ci_low, ci_high).
    Raises:
        InputError, MissingFileError, WeightsError: bad inputs, each naming the file and the problem.
    """
    if (maps or report or resume) and out is None:
        raise InputError("maps, report and resume need an output folder (out=...)")
    if workers < 1 or batch_size < 1:
        raise InputError(f"workers and batch_size must be at least 1, got {workers} and {batch_size}")
    preds = _pred_sets(pred)
    net, label, sha = load_metric(metric, device)
    config = ScoreConfig(
        weights=label,
        weights_sha256=sha,
        bands=tuple(net.model_bands),
        with_lr=lr is not None,
        pred_bands=pred_bands,
        target_bands=target_bands,
        lr_bands=lr_bands,
        pred_scale=pred_scale,
        target_scale=target_scale,
        lr_scale=lr_scale,
        data_range=data_range,
        resample=resample,
        tile=tile,
        sr_factor=sr_factor,
        pattern=pattern,
    )
    pairing = pair_folders(target, preds, lr, pattern=pattern, allow_missing=allow_missing)
    cols = columns(config)
    out_dir = Path(out) if out is not None else None
    table = None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        table = PairsTable(out_dir / PAIRS_CSV, cols, config.hash(), resume=resume, overwrite=overwrite)
    done = table.done() if table else {}

    hashes = _Hashes()
    plans: list[ScenePlan] = []
    stale: set[tuple[str, str]] = set()
    for key in pairing.keys:
        todo = {}
        for name in preds:
            path = pairing.preds[name].get(key)
            if path is None:
                continue
            row = done.get((name, key))
            if row is not None:
                lr_path = pairing.lr.get(key) if pairing.lr else None
                same = (
                    row["pred_sha256"] == hashes(path)
                    and row["target_sha256"] == hashes(pairing.targets[key])
                    and row["lr_sha256"] == (hashes(lr_path) if lr_path else "")
                )
                if same:
                    continue
                stale.add((name, key))
            todo[name] = path
        if todo:
            plans.append(plan_scene(key, pairing.targets[key], todo, pairing.lr.get(key) if pairing.lr else None, config, hashes))
    if table is not None:
        table.drop(stale)
    n_todo = sum(len(p.preds) for p in plans)
    if done:
        logger.info("resume: %d pairs already scored, %d to score", len(done) - len(stale), n_todo)

    new_records = _run_plans(
        plans,
        config,
        net,
        batch_size,
        out_dir / MAPS_DIR if maps and out_dir else None,
        workers,
        progress,
        n_todo,
        table.append if table else None,
    )
    if table is not None:  # rows of this run's sets and scenes (a resumed file may hold others)
        records = [r for r in table.rows if r["pred_set"] in preds and r["key"] in pairing.targets]
    else:
        records = [_parse({c: _format(r.get(c)) for c in cols}) for r in new_records]
    order = {k: i for i, k in enumerate(pairing.keys)}
    records.sort(
        key=lambda r: (list(preds).index(r["pred_set"]) if r["pred_set"] in preds else len(preds), order.get(r["key"], len(order)))
    )
    skipped = [{"pred_set": r["pred_set"], "key": r["key"], "reason": r["reason"]} for r in records if r["status"] != "ok"]
    summary = {
        "command": "gapeval score",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "inputs": {"pred": {k: str(v) for k, v in preds.items()}, "target": str(target), "lr": str(lr) if lr else None},
        "config": asdict(config),
        "config_hash": config.hash(),
        "weights": {"name": label, "sha256": sha, "testing_only": label.startswith("random-")},
        "versions": _versions(),
        "pred_sets": summarize_rows(records, cols),
        "skipped": skipped,
        "unpaired": pairing.unpaired,
        "columns": cols,
    }
    if out_dir is not None:
        write_text_atomic(out_dir / SUMMARY_JSON, json.dumps(_jsonable(summary), indent=2) + "\n")
        if report:
            from gapeval.report import write_report

            write_report(out_dir, metric=net)
    return ScoreResult(records, summary, out_dir, config, skipped)


def _jsonable(obj: Any) -> Any:
    """NaN/inf -> None (strict JSON), tuples -> lists."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _run_plans(
    plans: list[ScenePlan],
    config: ScoreConfig,
    metric: LPIPSSat,
    batch_size: int,
    maps_dir: Path | None,
    workers: int,
    progress: bool,
    total: int,
    sink: Any,
) -> list[dict[str, Any]]:
    """Score the scenes (in ``workers`` threads), handing each record to ``sink`` as soon as its scene is done."""
    from tqdm import tqdm

    records: list[dict[str, Any]] = []
    bar = tqdm(total=total, unit="pair", desc="gapeval score", disable=not progress or total == 0)
    stop = threading.Event()

    def finish(recs: list[dict[str, Any]]) -> None:
        for rec in recs:
            if sink is not None:
                sink(rec)
            records.append(rec)
        bar.update(len(recs))

    try:
        if workers == 1:
            for plan in plans:
                finish(score_scene(plan, config, metric, batch_size=batch_size, maps_dir=maps_dir))
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gapeval-score") as pool:
                pending = {pool.submit(score_scene, p, config, metric, batch_size=batch_size, maps_dir=maps_dir, stop=stop) for p in plans}
                try:
                    while pending:
                        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for fut in finished:
                            finish(fut.result())
                except BaseException:
                    stop.set()
                    for fut in pending:
                        fut.cancel()
                    raise
    finally:
        bar.close()
    return records


# ---------------------------------------------------------------------------------------------------- CLI


def _pred_arg(text: str) -> tuple[str | None, str]:
    """``name=DIR`` or ``DIR``."""
    name, sep, path = text.partition("=")
    if sep and name and not os.path.exists(text) and "/" not in name:
        return name, path
    return None, text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``gapeval score``."""
    parser.add_argument(
        "--pred",
        action="append",
        required=True,
        metavar="[NAME=]DIR",
        help="folder of super-resolved predictions; repeat for several models (named by folder or NAME)",
    )
    parser.add_argument(
        "--target", required=True, metavar="DIR", help="folder of high-resolution targets (paired by relative path and stem)"
    )
    parser.add_argument(
        "--lr", metavar="DIR", help="folder of low-resolution inputs: adds LR-consistency and improvement/omission/hallucination"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="results folder: pairs.csv, summary.json (+ maps/, report.html)")
    parser.add_argument("--report", action="store_true", help="write report.html and report.md with plots and best/worst image grids")
    parser.add_argument("--maps", action="store_true", help="write georeferenced LPIPS-Sat maps to OUT/maps/<set>/<key>.tif")
    parser.add_argument("--resume", action="store_true", help="skip pairs already in OUT/pairs.csv with the same configuration")
    parser.add_argument("--overwrite", action="store_true", help="start over even if OUT/pairs.csv exists")
    parser.add_argument("--workers", type=int, default=1, help="scenes scored in parallel threads (default 1)")
    parser.add_argument("--device", default="auto", help="torch device for LPIPS-Sat: auto, cpu, cuda, cuda:1 ... (default auto)")
    parser.add_argument(
        "--weights",
        default=DEFAULT_NAME,
        help=f"LPIPS-Sat weights: registry name or .safetensors path (default {DEFAULT_NAME}); "
        f"'{RANDOM_WEIGHTS}' = tiny random network, for testing only",
    )
    for role in ("pred", "target", "lr"):
        parser.add_argument(
            f"--{role}-bands",
            metavar="ORDER",
            help=f"band order of the {role} files: preset (s2-rgbn, s2-l1c-13, planetscope-4b, planetscope-8b, naip) or names like B04,B03,B02,B08",
        )
        parser.add_argument(
            f"--{role}-scale",
            type=float,
            metavar="S",
            help=f"divide {role} values by S to get reflectance (10000 for Sentinel-2/PlanetScope DN); default: the files' scale metadata",
        )
    parser.add_argument(
        "--resample", choices=RESAMPLING_METHODS, help="resample predictions onto the target grid when grids differ (else an error)"
    )
    parser.add_argument("--allow-missing", action="store_true", help="score only complete pairs and list the unpaired files")
    parser.add_argument("--glob", metavar="PATTERN", help="only files whose relative path matches this glob (e.g. '*.tif')")
    parser.add_argument("--data-range", type=float, default=1.0, help="data range for PSNR/SSIM (default 1.0, reflectance)")
    parser.add_argument("--sr-factor", type=float, help="LR/HR pixel-size ratio for ERGAS when --lr is not given (e.g. 4)")
    parser.add_argument("--tile", type=int, default=DEFAULT_TILE, help=f"window/tile size in pixels (default {DEFAULT_TILE})")
    parser.add_argument("--batch-size", type=int, default=8, help="LPIPS-Sat tiles per network call (default 8)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    """Run ``gapeval score`` from parsed arguments; prints a short table. Exit 0, or raises an LPIPSSatError."""
    preds: dict[str, str] = {}
    for text in args.pred:
        name, path = _pred_arg(text)
        name = name or Path(path.rstrip("/")).name
        if name in preds:
            raise InputError(f"--pred {text}: a prediction set named {name!r} was given twice; use NAME=DIR")
        preds[name] = path
    result = score(
        preds,
        args.target,
        lr=args.lr,
        out=args.out,
        metric=args.weights,
        pred_bands=args.pred_bands,
        target_bands=args.target_bands,
        lr_bands=args.lr_bands,
        pred_scale=args.pred_scale,
        target_scale=args.target_scale,
        lr_scale=args.lr_scale,
        data_range=args.data_range,
        resample=args.resample,
        tile=args.tile,
        batch_size=args.batch_size,
        sr_factor=args.sr_factor,
        pattern=args.glob,
        allow_missing=args.allow_missing,
        maps=args.maps,
        report=args.report,
        resume=args.resume,
        overwrite=args.overwrite,
        workers=args.workers,
        device=args.device,
        progress=not args.no_progress,
    )
    print(format_table(result.summary))
    if result.summary["weights"]["testing_only"]:
        print(f"note: weights {result.summary['weights']['name']!r} are a random network for testing; LPIPS-Sat values are not meaningful")
    for item in result.skipped:
        print(f"skipped {item['pred_set']}/{item['key']}: {item['reason']}")
    for label, keys in result.summary["unpaired"].items():
        print(f"unpaired ({label}): {len(keys)} file(s), e.g. {', '.join(keys[:5])}")
    print(
        f"wrote {Path(args.out) / PAIRS_CSV} and {Path(args.out) / SUMMARY_JSON}"
        + (f" and {Path(args.out) / 'report.html'}" if args.report else "")
    )
    return 0


def format_table(
    summary: Mapping[str, Any], metrics: Sequence[str] = ("lpips_sat", "psnr", "ssim", "sam_deg", "ergas", "refl_l1", "shift_px")
) -> str:
    """Plain-text table of mean [95 % CI] per prediction set (sets ranked by mean LPIPS-Sat, best first)."""
    sets = summary["pred_sets"]
    metrics = [m for m in metrics if any(m in s["metrics"] for s in sets.values())]
    ranked = sorted(sets, key=lambda k: _nan_last(sets[k]["metrics"].get("lpips_sat", {}).get("mean")))
    head = ["set", "n"] + [f"{m} ({'↓' if METRICS[m][0] == 'lower' else '↑'})" for m in metrics]
    rows = [head]
    for name in ranked:
        s = sets[name]
        cells = [name, f"{s['n_scored']}/{s['n_pairs']}"]
        for m in metrics:
            st = s["metrics"][m]
            ci = f" [{st['ci_low']:.3g}, {st['ci_high']:.3g}]" if np.isfinite(st["ci_low"]) else ""
            cells.append(f"{st['mean']:.4g}{ci}" if st["n"] else "-")
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def _nan_last(value: Any) -> float:
    return float(value) if value is not None and np.isfinite(value) else math.inf


__all__ = [
    "PER_BAND",
    "LPIPSSatError",
    "PairsTable",
    "ScenePlan",
    "ScoreConfig",
    "ScoreResult",
    "add_arguments",
    "columns",
    "format_table",
    "load_metric",
    "plan_scene",
    "run",
    "score",
    "score_scene",
    "summarize_rows",
]


class _CallableModule(types.ModuleType):
    """Makes ``gapeval.score(pred, target, ...)`` call :func:`score` while ``gapeval.score`` stays this module
    (so ``from gapeval.score import ...`` and the CLI's ``add_arguments``/``run`` keep working)."""

    def __call__(self, *args: Any, **kwargs: Any) -> ScoreResult:
        return score(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
