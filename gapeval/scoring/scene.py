"""Score one scene: every prediction of one target, window by window, in bounded memory.

Per window of the target grid the target is read once, each prediction once (resampled only if asked), and fed to
the classical metrics (masked), the LPIPS-Sat tiles (batched, target features shared) and, with an LR input, the
LR-upsampled reference; then per window of the LR grid the predictions are area-averaged onto it (consistency).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from gapeval.align import MIN_VALID_PIXELS, AlignmentError, ShiftTooLarge, align_pair
from gapeval.grids import Grid
from gapeval.metrics.classical import SSIM_RADIUS, ClassicalAccumulator, interior_mask
from gapeval.metrics.consistency import ConsistencyAccumulator
from gapeval.metrics.opensr import OpenSRAccumulator
from gapeval.metrics.perceptual import TiledLPIPS
from gapeval.reflectance import check_not_tiny, check_reflectance
from gapeval.scoring.config import ScoreConfig
from gapeval.scoring.plan import SceneInput, ScenePlan
from gapeval.sources import RasterWriter
from gapeval.windows import expand_window, fixed_size_window, iter_windows, union_window, window_slices
from lpips_sat.metric import MIN_SIZE, LPIPSSat
from lpips_sat.raster import path_text

logger = logging.getLogger(__name__)


class Cancelled(Exception):
    """Raised inside a worker when the run was interrupted."""


def _read(inp: SceneInput, grid: Grid, window: Any, resampling: str | None) -> tuple[np.ndarray, np.ndarray]:
    """A prediction's window on the target grid (resampled when its grid differs)."""
    return inp.source.read_on(grid, window, resampling or "nearest") if inp.warp else inp.source.read(window)


def _open_map_writers(stack: ExitStack, plan: ScenePlan, config: ScoreConfig, maps_dir: Path) -> dict[str, RasterWriter]:
    """One georeferenced LPIPS-Sat map writer per prediction: ``maps_dir/<set>/<key>.tif``."""
    writers = {}
    for name, inp in plan.preds.items():
        path = maps_dir / name / f"{plan.key}.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        tags = {
            "METRIC": "LPIPS-Sat",
            "WEIGHTS": config.weights,
            "WEIGHTS_SHA256": config.weights_sha256 or "",
            "PREDICTION": str(inp.source.path),
            "TARGET": str(plan.target.source.path),
        }
        writers[name] = stack.enter_context(RasterWriter(path, plan.target.source.grid, tags=tags, descriptions=["lpips_sat"]))
    return writers


class SceneScorer:
    """The accumulators of one scene; :meth:`hr_window` and :meth:`lr_window` feed them, :meth:`records` reads them."""

    def __init__(self, plan: ScenePlan, config: ScoreConfig, metric: LPIPSSat, batch_size: int, maps: bool) -> None:
        self.plan, self.config = plan, config
        self.grid = plan.target.source.grid
        self.names = list(plan.preds)
        ratio_hl = 1.0 / plan.ratio if plan.ratio else (1.0 / config.sr_factor if config.sr_factor else None)
        self.classical = {n: ClassicalAccumulator(config.bands, config.data_range, ratio_hl) for n in self.names}
        self.opensr = plan.lr is not None and config.protocol == "opensr-test"
        self.consistency = (
            {n: ConsistencyAccumulator(config.bands, config.patch, config.hf_threshold, config.lambdas) for n in self.names}
            if plan.lr and not self.opensr
            else {}
        )
        self.opensr_acc = {n: OpenSRAccumulator() for n in self.names} if self.opensr else {}
        self.lpips = TiledLPIPS(metric, self.names, batch_size=batch_size, maps=maps)
        self.n_target = 0  # valid target pixels
        self.pred_invalid = {n: 0 for n in self.names}  # invalid prediction pixels where the target is valid
        self.pred_defects = {n: 0 for n in self.names}  # of those, pixels the prediction file itself marks invalid
        self.lr_invalid = self.lr_pixels = 0  # invalid (NaN/inf/nodata) and all pixels of the LR input, on its own grid
        self.maxima = {"target": -math.inf, **{n: -math.inf for n in self.names}}
        # --align/--harmonize: per-prediction corrections, accumulated valid-pixel weighted over windows
        self.aligner = {n: _AlignStats(len(config.bands)) for n in self.names} if config.aligned else {}
        self.raw = {n: ClassicalAccumulator(config.bands, config.data_range, ratio_hl) for n in self.names} if config.report_raw else {}
        self.lpips_raw = TiledLPIPS(metric, self.names, batch_size=batch_size, maps=False) if config.report_raw else None

    def hr_window(self, core: Any) -> list[tuple[str, Any, np.ndarray]]:
        """Feed one window of the target grid; returns LPIPS-Sat map windows that are complete."""
        plan, config, grid = self.plan, self.config, self.grid
        height, width = grid.height, grid.width
        lp_win = fixed_size_window(core, config.tile, height, width)
        read_win = union_window(expand_window(core, SSIM_RADIUS, height, width), lp_win)
        core_sl, lp_sl = window_slices(core, read_win), window_slices(lp_win, read_win)
        interior = interior_mask(
            slice(int(core.row_off), int(core.row_off + core.height)),
            slice(int(core.col_off), int(core.col_off + core.width)),
            height,
            width,
        )
        tgt = plan.target
        t, tv = tgt.source.read(read_win)
        self.maxima["target"] = max(self.maxima["target"], check_reflectance(t, tv, tgt.source.path, tgt.flag, scaled=tgt.scaled))
        self.n_target += int(tv[core_sl].sum())
        lr_up = lr_up_valid = lr_block = None
        if self.opensr:  # the LR pixels under this window, on their own grid (the protocol resamples by itself)
            lr_block, lr_valid = self._lr_block(core)
        elif plan.lr is not None:
            lr_up, lr_up_valid = plan.lr.source.read_on(grid, core, "bilinear")
        lp_preds, lp_valid = {}, {}
        done: list[tuple[str, Any, np.ndarray]] = []
        for n in self.names:
            inp = plan.preds[n]
            p, pv = _read(inp, grid, read_win, config.resample)
            self.maxima[n] = max(self.maxima[n], check_reflectance(p, pv, inp.source.path, inp.flag, scaled=inp.scaled))
            joint = tv & pv
            self.pred_invalid[n] += int((missing := (tv & ~pv)[core_sl]).sum())
            if missing.any():
                self.pred_defects[n] += int((missing & inp.source.defects_on(grid, core)).sum()) if inp.warp else int(missing.sum())
            tn = t
            if self.aligner:  # the target brought onto this prediction (the prediction is never altered)
                aligned = self._align(n, p, t, joint, core, core_sl)
                if aligned is None:
                    continue
                tn, joint = aligned
                if self.raw:  # --report-raw: the unaligned target on the same pixels
                    self.raw[n].update(p, t, joint, core_sl, interior)
                    self.lpips_raw.add(t[:, lp_sl[0], lp_sl[1]], joint[lp_sl], {n: p[:, lp_sl[0], lp_sl[1]]}, {n: joint[lp_sl]},
                                       window_slices(core, lp_win))
            self.classical[n].update(p, tn, joint, core_sl, interior)
            if lr_block is not None:
                complete = bool(joint[core_sl].all() and lr_valid.all())
                self.opensr_acc[n].update(lr_block, p[:, core_sl[0], core_sl[1]], tn[:, core_sl[0], core_sl[1]], complete)
            elif plan.lr is not None:
                pc = p[:, core_sl[0], core_sl[1]]
                self.consistency[n].update_hr(pc, tn[:, core_sl[0], core_sl[1]], lr_up, joint[core_sl] & lr_up_valid)
            if self.aligner:  # one target per prediction: LPIPS-Sat target features cannot be shared
                done.extend(self.lpips.add(tn[:, lp_sl[0], lp_sl[1]], joint[lp_sl], {n: p[:, lp_sl[0], lp_sl[1]]}, {n: joint[lp_sl]},
                                           window_slices(core, lp_win), tag=core))
            else:
                lp_preds[n], lp_valid[n] = p[:, lp_sl[0], lp_sl[1]], joint[lp_sl]
        if self.aligner:
            return done
        return self.lpips.add(t[:, lp_sl[0], lp_sl[1]], tv[lp_sl], lp_preds, lp_valid, window_slices(core, lp_win), tag=core)

    def _align(self, name: str, p: np.ndarray, t: np.ndarray, joint: np.ndarray, core: Any, core_sl: tuple[slice, slice]
               ) -> tuple[np.ndarray, np.ndarray] | None:
        """The target of this window aligned and harmonised onto prediction ``name`` and the pixels left valid, or
        ``None`` when the pair is (or just became) not alignable. A window with too few valid pixels to estimate a
        shift or fit a harmonisation contributes none (its pixels are counted as masked)."""
        stats = self.aligner[name]
        if stats.failure:
            return None
        n_joint = int(joint[core_sl].sum())
        if n_joint == 0:
            return t, joint
        try:
            res = align_pair(p, t, joint, align=self.config.align, harmonize=self.config.harmonize, max_shift=self.config.max_shift)
        except ShiftTooLarge as exc:
            stats.failure = (f"{self.plan.target.source.path} is misaligned with {self.plan.preds[name].source.path} beyond --max-shift "
                             f"(window at row {int(core.row_off)}, col {int(core.col_off)}: {exc}); not scored")
            return None
        except AlignmentError as exc:
            stats.masked += n_joint
            stats.total += n_joint
            stats.last_error = f"{self.plan.target.source.path} vs {self.plan.preds[name].source.path}: {exc}"
            return t, np.zeros_like(joint)
        kept = int(res.valid[core_sl].sum())
        stats.add(res, kept, n_joint)
        return res.target, res.valid


    def _lr_block(self, core: Any) -> tuple[np.ndarray, np.ndarray]:
        """The LR window exactly under the target window ``core`` (whole LR pixels, see :func:`~gapeval.scoring.plan.check_protocol`)."""
        from rasterio.windows import Window

        lr = self.plan.lr
        assert lr is not None and self.plan.ratio is not None
        s = round(self.plan.ratio)
        data, valid = lr.source.read(Window(int(core.col_off) // s, int(core.row_off) // s, int(core.width) // s, int(core.height) // s))
        check_reflectance(data, valid, lr.source.path, lr.flag, scaled=lr.scaled)
        self._count_lr(valid)
        return data, valid

    def _count_lr(self, valid: np.ndarray) -> None:
        """Count the invalid pixels of one LR window (the windows of a scene tile the LR grid once, in either mode)."""
        self.lr_invalid += int(valid.size - np.count_nonzero(valid))
        self.lr_pixels += int(valid.size)

    def lr_windows(self) -> Any:
        """Windows of the LR grid for :meth:`lr_window` (the LR counterpart of the target tile)."""
        assert self.plan.lr is not None and self.plan.ratio is not None
        if self.opensr:  # the protocol's LR values come from hr_window
            return iter([])
        lgrid = self.plan.lr.source.grid
        return iter_windows(lgrid.height, lgrid.width, max(MIN_SIZE, math.ceil(self.config.tile / self.plan.ratio)))

    def lr_window(self, lcore: Any) -> None:
        """Feed one window of the LR grid: predictions area-averaged onto it against the LR input."""
        lr = self.plan.lr
        assert lr is not None
        lv_data, lv = lr.source.read(lcore)
        check_reflectance(lv_data, lv, lr.source.path, lr.flag, scaled=lr.scaled)
        self._count_lr(lv)
        for n in self.names:
            s, sv = self.plan.preds[n].source.read_on(lr.source.grid, lcore, "average")
            self.consistency[n].update_lr(s, lv_data, sv & lv)

    def records(self, seconds: float) -> list[dict[str, Any]]:
        """One record per prediction (see :func:`gapeval.results.columns`).

        Raises:
            InputError: a whole image whose values are implausibly small for reflectance.
        """
        plan, config = self.plan, self.config
        tgt = plan.target
        check_not_tiny(self.maxima["target"], tgt.source.path, tgt.flag, scaled=tgt.scaled)
        records = []
        for n in self.names:
            inp = plan.preds[n]
            if self.maxima[n] > -math.inf:
                check_not_tiny(self.maxima[n], inp.source.path, inp.flag, scaled=inp.scaled)
            rec = {"pred_set": n, "key": plan.key, **self._metrics(n)}
            rec.update(
                seconds=seconds,
                config_hash=config.hash(),
                pred_path=path_text(inp.source.path),
                target_path=path_text(tgt.source.path),
                lr_path=path_text(plan.lr.source.path) if plan.lr else "",
                pred_sha256=inp.sha256,
                target_sha256=tgt.sha256,
                lr_sha256=plan.lr.sha256 if plan.lr else "",
            )
            records.append(rec)
        return records

    def _metrics(self, name: str) -> dict[str, Any]:
        """Status, valid fractions and metric values of one prediction (``skipped`` without valid pixels)."""
        n_valid = self.classical[name].n_valid
        rec: dict[str, Any] = {
            "status": "ok",
            "reason": "",
            "height": self.grid.height,
            "width": self.grid.width,
            "valid_fraction": n_valid / (self.grid.height * self.grid.width),
            "pred_invalid_fraction": self.pred_invalid[name] / self.n_target if self.n_target else float("nan"),
        }
        if self.plan.lr is not None:  # LR nodata is masked out of the LR-consistency metrics: say how much
            rec["lr_invalid_px"] = self.lr_invalid
            rec["lr_invalid_fraction"] = self.lr_invalid / self.lr_pixels if self.lr_pixels else float("nan")
        defects = self.pred_defects[name]
        if self.n_target and defects and self.config.invalid_pred == "fail":
            why = (
                f"{defects} of the {self.n_target} valid target pixels have no valid prediction value (NaN/inf/nodata in "
                f"{self.plan.preds[name].source.path}); a prediction must predict every pixel (--invalid-pred mask scores "
                "only its valid pixels)"
            )
            rec.update(status="failed", reason=why)
            logger.warning("%s / %s failed: %s", name, self.plan.key, why)
            return rec
        if self.aligner:
            stats = self.aligner[name]
            if stats.failure or (stats.weight == 0 and stats.total > 0):
                why = stats.failure or (f"{stats.last_error or self.plan.target.source.path}; no window had the {MIN_VALID_PIXELS} valid "
                                        "pixels needed to align/harmonise it")
                rec.update(status="not_alignable", reason=why)
                logger.warning("%s / %s not alignable: %s", name, self.plan.key, why)
                return rec
        if n_valid == 0:
            why = (
                "the target has no valid pixel (all nodata/NaN)"
                if self.n_target == 0
                else "the prediction has no valid pixel where the target is valid (all nodata/NaN)"
            )
            rec.update(status="skipped", reason=why)
            logger.warning("%s / %s skipped: %s", name, self.plan.key, why)
            return rec
        if self.aligner:
            rec.update(stats.columns(self.config.bands))
            if self.raw:
                raw = self.raw[name].result()
                rec.update({f"raw_{k}": raw[k] for k in ("psnr", "ssim", "sam_deg", "ergas", "rmse", "mae")})
                rec["raw_lpips_sat"] = float(self.lpips_raw.result(name)[0])
        rec.update(self.classical[name].result())
        rec["lpips_sat"], rec["lpips_tiles"] = (float(v) for v in self.lpips.result(name))
        if self.opensr:
            rec.update(self.opensr_acc[name].result())
        elif self.plan.lr is not None:
            rec.update(self.consistency[name].result())
        return rec


class _AlignStats:
    """Corrections applied to one prediction's target, valid-pixel weighted over windows."""

    def __init__(self, bands: int) -> None:
        self.weight = 0.0
        self.sums = {"dy": 0.0, "dx": 0.0, "residual": 0.0, "quality": 0.0}
        self.residual_weight = 0.0
        self.gain, self.offset = np.zeros(bands), np.zeros(bands)
        self.masked = self.total = 0
        self.failure: str | None = None
        self.last_error: str | None = None
        self.has_fit = False

    def add(self, res: Any, kept: int, before: int) -> None:
        w = float(kept)
        self.weight += w
        self.sums["dy"] += res.dy * w
        self.sums["dx"] += res.dx * w
        if math.isfinite(res.quality):
            self.sums["quality"] += res.quality * w
        if math.isfinite(res.residual_dy):
            self.sums["residual"] += math.hypot(res.residual_dy, res.residual_dx) * w
            self.residual_weight += w
        self.gain += np.nan_to_num(res.gain, nan=0.0) * w if res.gain.size else 0.0
        self.offset += np.nan_to_num(res.offset, nan=0.0) * w if res.offset.size else 0.0
        self.has_fit = self.has_fit or bool(res.gain.size and np.isfinite(res.gain).all())
        self.masked += before - kept
        self.total += before

    def columns(self, bands: Any) -> dict[str, float]:
        w = self.weight
        nan = float("nan")
        out = {
            "align_dy": self.sums["dy"] / w, "align_dx": self.sums["dx"] / w,
            "align_residual_px": self.sums["residual"] / self.residual_weight if self.residual_weight else nan,
            "align_quality": self.sums["quality"] / w if self.sums["quality"] else nan,
            "align_masked_fraction": self.masked / self.total if self.total else nan,
        }
        for i, b in enumerate(bands):
            out[f"harm_gain_{b}"] = float(self.gain[i] / w) if self.has_fit else nan
            out[f"harm_offset_{b}"] = float(self.offset[i] / w) if self.has_fit else nan
        return out


def score_scene(
    plan: ScenePlan,
    config: ScoreConfig,
    metric: LPIPSSat,
    *,
    batch_size: int = 8,
    maps_dir: Path | None = None,
    stop: threading.Event | None = None,
) -> list[dict[str, Any]]:
    """Score every prediction of one scene; returns one record per prediction (see :func:`gapeval.results.columns`).

    Reads the target once per window for all predictions; LPIPS-Sat target features are computed once per tile.
    Raises:
        InputError: values that are not reflectance (unscaled digital numbers, reflectance divided twice).
        Cancelled: ``stop`` was set (the run was interrupted).
    """
    t0 = time.perf_counter()
    scorer = SceneScorer(plan, config, metric, batch_size, maps=maps_dir is not None)
    with ExitStack() as stack:
        for inp in [plan.target, *plan.preds.values(), *([plan.lr] if plan.lr else [])]:
            stack.enter_context(inp.source)
        writers = _open_map_writers(stack, plan, config, maps_dir) if maps_dir is not None else {}

        def write_maps(done: list[tuple[str, Any, np.ndarray]]) -> None:
            for name, window, dmap in done:
                writers[name].write(dmap[None], window)

        grid = plan.target.source.grid
        for core in iter_windows(grid.height, grid.width, config.tile):
            _check_stop(stop)
            write_maps(scorer.hr_window(core))
        write_maps(scorer.lpips.flush())
        if scorer.lpips_raw is not None:
            scorer.lpips_raw.flush()
        if plan.lr is not None:
            for lcore in scorer.lr_windows():
                _check_stop(stop)
                scorer.lr_window(lcore)
    return scorer.records(time.perf_counter() - t0)


def _check_stop(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise Cancelled()
