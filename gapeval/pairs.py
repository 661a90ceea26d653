"""``gapeval pairs``: an aligned cross-sensor pair dataset (HR tiles, real LR tiles and synthetic LR twins) from scenes.

Data flow:

    HR scenes, LR scenes -> pair them by footprint overlap (same CRS, or reprojected on request)
    -> per LR scene: reflectance (optionally degraded onto a coarser LR grid first: --lr-degrade/--lr-gsd)
    -> the LR grid is the reference; the HR grid must be an integer multiple of it (--scale)
    -> per tile of the LR grid (--tile HR px = tile/scale LR px): nodata/cloud and flat filters
       -> misregistration of the HR tile against the LR tile, sub-pixel, in HR px (gapeval.align.estimate_shift_scaled)
       -> reject above --max-shift, else cut the HR tile corrected for it (one cubic-spline resampling, halo read)
       -> area-averaged HR vs LR: correlation (content change, --min-corr), per-band linear fit (--max-residual)
    -> optional radiometric harmonisation of HR onto the LR (linear or histogram, fitted on the tile or the scene)
    -> spatial blocks (--block HR px, anchored on the first LR scene's corner) -> train/val/test (--split, --seed)
    -> GeoTIFFs OUT/{split}/{hr,lr,lr_synth_PROFILE}/TILE.tif + manifest.csv (one row per tile, kept or rejected)

Every tile's fate is one row of ``manifest.csv`` (appended when its files are complete), so an interrupted run resumes
where it stopped and recomputes nothing it wrote. Documentation: ``docs/pairs.md``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io as _io
import json
import logging
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gapeval.align import (
    AlignmentError,
    Shift,
    estimate_shift_scaled,
    fit_linear,
    histogram_match,
    resample,
)
from gapeval.folders import list_images
from gapeval.grids import Grid, same_crs
from gapeval.reflectance import check_not_tiny, check_reflectance, was_scaled
from gapeval.results import append_line, read_records_complete
from gapeval.sources import RasterSource
from lpips_sat.atomic import make_folder, write_text_atomic
from lpips_sat.errors import InputError, MissingFileError
from lpips_sat.options import fraction, nonnegative_float, nonnegative_int, number, positive_float, positive_int
from lpips_sat.raster import SUFFIXES, RasterInfo, band_gain_offset, raster_info, write_raster

logger = logging.getLogger(__name__)

MANIFEST, STATE = "manifest.csv", "pairs.json"
SPLITS = ("train", "val", "test")
#: Tolerance on "integer" scale ratios and equal pixel sizes (relative).
SCALE_TOL = 1e-3
#: Spline taps and area-average reach added to the halo read around each HR tile (HR px).
HALO_EXTRA = 4


# ---------------------------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class PairsConfig:
    """Every parameter of a pairs run (recorded in ``pairs.json``; a resumed run must use the same values).

    Attributes:
        scale: HR pixels per LR pixel (integer); ``None``: taken from the grids (must come out an integer).
        tile: HR tile size in pixels (a multiple of ``scale``).
        align: ``shift`` or ``shift+affine``: the misregistration model estimated per tile.
        correct: resample the HR tile to remove the estimated misregistration (else only measure and filter).
        max_shift: reject tiles whose estimated misregistration exceeds this (HR px).
        max_residual: reject tiles whose per-band linear fit LR ~ area-averaged HR leaves a mean RMSE above this
            (reflectance); ``None``: record only.
        min_corr: reject tiles whose correlation between LR and area-averaged HR (band means) is below this
            (content change between acquisitions); ``None``: record only.
        harmonize: ``none``, ``linear`` or ``histogram``: map the HR radiometry onto the LR's.
        harmonize_on: ``tile`` or ``scene``: where the harmonisation is fitted.
        min_valid: least fraction of valid (not nodata, not cloud) pixels in both tiles.
        min_std: reject tiles whose HR band-mean standard deviation is below this (flat: water, haze).
        split: train/val/test fractions of tiles (by blocks).
        block: spatial block side in HR pixels; tiles of one block share a split; tiles crossing a block edge are dropped.
        seed: block shuffling and synthetic-noise seed.
        synthetic: ``gapeval degrade`` profiles for the synthetic twin of each HR tile.
        lr_degrade, lr_gsd: degrade the LR scenes with this profile onto this GSD first (an LR "sensor" that is itself
            high resolution, e.g. another aerial acquisition).
        hr_scale, lr_scale: divide the pixel values by this to get reflectance (default: the files' band scales).
        hr_mask_band, lr_mask_band: 1-based band holding a cloud/invalid mask (non-zero = invalid), excluded from data.
        reproject: reproject HR scenes in another CRS onto the LR grid (cubic) instead of refusing them.
    """

    scale: int | None = None
    tile: int = 128
    align: str = "shift"
    correct: bool = True
    max_shift: float = 3.0
    max_residual: float | None = None
    min_corr: float | None = None
    harmonize: str = "none"
    harmonize_on: str = "tile"
    min_valid: float = 0.95
    min_std: float = 0.002
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    block: int = 2048
    seed: int = 0
    synthetic: tuple[str, ...] = ("bicubic", "s2")
    lr_degrade: str | None = None
    lr_gsd: float | None = None
    hr_scale: float | None = None
    lr_scale: float | None = None
    hr_mask_band: int | None = None
    lr_mask_band: int | None = None
    reproject: bool = False

    def __post_init__(self) -> None:
        from gapeval.degrade import PROFILES

        self.split = tuple(float(f) for f in self.split)  # type: ignore[assignment]
        self.synthetic = tuple(self.synthetic)
        if self.align not in ("shift", "shift+affine"):
            raise InputError(f"align must be 'shift' or 'shift+affine', got {self.align!r}")
        if self.harmonize not in ("none", "linear", "histogram") or self.harmonize_on not in ("tile", "scene"):
            raise InputError(f"harmonize must be none|linear|histogram and harmonize_on tile|scene, got {self.harmonize!r}, {self.harmonize_on!r}")
        if len(self.split) != 3 or min(self.split) < 0 or abs(sum(self.split) - 1.0) > 1e-6:
            raise InputError(f"split must be three non-negative fractions summing to 1, got {self.split}")
        if self.scale is not None and (self.scale != int(self.scale) or self.scale < 1):
            raise InputError(f"scale must be a positive integer, got {self.scale}")
        if self.tile <= 0 or self.block <= 0 or self.max_shift <= 0 or not 0 <= self.min_valid <= 1:
            raise InputError("tile, block and max_shift must be positive and min_valid within [0, 1]")
        for name in self.synthetic + ((self.lr_degrade,) if self.lr_degrade else ()):
            if name not in PROFILES:
                raise InputError(f"unknown degradation profile {name!r}; use one of {sorted(PROFILES)}")
        if (self.lr_degrade is None) != (self.lr_gsd is None):
            raise InputError("--lr-degrade and --lr-gsd go together (e.g. --lr-degrade s2 --lr-gsd 20)")

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------------
# scenes
# ---------------------------------------------------------------------------------------------------------------

_DATE_IN_NAME = re.compile(r"(?<!\d)((?:19|20)\d{2})-?(0[1-9]|1[0-2])-?(0[1-9]|[12]\d|3[01])(?!\d)")


def scene_date(path: Path, tags: Mapping[str, str]) -> str:
    """Acquisition date ``YYYY-MM-DD`` from the tags (``ACQUISITION_DATE``, ``DATE_ACQUIRED``, ``TIFFTAG_DATETIME``)
    or the file name (``...20170827...``); empty when unknown."""
    for key in ("ACQUISITION_DATE", "DATE_ACQUIRED", "TIFFTAG_DATETIME"):
        m = _DATE_IN_NAME.search(str(tags.get(key, "")).replace(":", ""))
        if m:
            return "-".join(m.groups())
    m = _DATE_IN_NAME.search(path.stem)
    return "-".join(m.groups()) if m else ""


@dataclass
class Scene:
    """One input scene: header, data bands (0-based), optional mask band, reflectance scaling and date; ``scaled``:
    a scale was applied (``--hr-scale``/``--lr-scale`` or the file's metadata, :func:`gapeval.reflectance.was_scaled`)."""

    path: Path
    info: RasterInfo
    bands: list[int]
    mask_band: int | None
    gain: np.ndarray
    offset: np.ndarray
    date: str
    scaled: bool = False

    @property
    def name(self) -> str:
        return self.path.stem


def load_scenes(folder: str | Path, *, scale: float | None, mask_band: int | None, role: str) -> list[Scene]:
    """Headers of the GeoTIFF scenes under ``folder`` (or one file)."""
    import rasterio

    folder = Path(folder)
    if not folder.exists():
        raise MissingFileError(f"{folder}: {role} scenes do not exist")
    files = [folder] if folder.is_file() else list(list_images(folder).values())
    files = [f for f in files if f.suffix.lower() in (".tif", ".tiff")]
    if not files:
        raise InputError(f"{folder}: no GeoTIFF {role} scenes ({', '.join(s for s in SUFFIXES if 'tif' in s)})")
    scenes = []
    for path in files:
        info = raster_info(path)
        if not info.georeferenced:
            raise InputError(f"{path}: {role} scene has no georeferencing (CRS and transform); pairs are found by footprint")
        if info.transform.b != 0 or info.transform.d != 0:
            raise InputError(f"{path}: rotated/sheared grid; warp the {role} scene north-up first")
        if mask_band is not None and not 1 <= mask_band <= info.count:
            raise InputError(f"{path}: has {info.count} bands, no mask band {mask_band}")
        bands = [b for b in range(info.count) if mask_band is None or b != mask_band - 1]
        gain, offset = band_gain_offset(info, bands, scale)
        with rasterio.open(path) as ds:
            tags = ds.tags()
        scenes.append(Scene(path, info, bands, None if mask_band is None else mask_band - 1, gain, offset, scene_date(path, tags),
                            was_scaled(scale, gain, offset)))
    return scenes


def _grid(info: RasterInfo) -> Grid:
    return Grid(info.transform, info.crs, info.height, info.width, True)


def _bounds_in(grid: Any, crs: Any) -> tuple[float, float, float, float]:
    from rasterio.warp import transform_bounds

    if same_crs(grid.crs, crs):
        return grid.bounds
    return transform_bounds(grid.crs, crs, *grid.bounds, densify_pts=21)


def _intersection(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float, float] | None:
    left, bottom, right, top = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    return (left, bottom, right, top) if right > left and top > bottom else None


def pair_scenes(hr: Sequence[Scene], lr: Sequence[Scene], *, reproject: bool) -> list[tuple[Scene, Scene]]:
    """Every (LR, HR) pair whose footprints overlap, LR-major in name order.

    Raises:
        InputError: an overlapping pair in different CRSs without ``reproject``; no pair overlaps at all.
    """
    pairs = []
    for low in sorted(lr, key=lambda s: s.path.as_posix()):
        lg = _grid(low.info)
        for high in sorted(hr, key=lambda s: s.path.as_posix()):
            hg = _grid(high.info)
            if _intersection(lg.bounds, _bounds_in(hg, lg.crs)) is None:
                continue
            if not same_crs(hg.crs, lg.crs) and not reproject:
                raise InputError(f"{high.path}: CRS {hg.crs} differs from the LR scene {low.path} ({lg.crs}); "
                                 "reproject the HR scenes first or pass --reproject (cubic resampling onto the LR grid)")
            pairs.append((low, high))
    if not pairs:
        lines = [f"  LR {s.path}: {_grid(s.info).describe()}" for s in lr] + [f"  HR {s.path}: {_grid(s.info).describe()}" for s in hr]
        raise InputError("no HR scene overlaps any LR scene (footprints are disjoint):\n" + "\n".join(lines))
    return pairs


def read_scene(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Reflectance (C, H, W) float32 with NaN where invalid, and the valid mask (nodata, non-finite, mask band)."""
    src = RasterSource(scene.info, _grid(scene.info), scene.bands, scene.gain, scene.offset)
    with src:
        data, valid = src.read()
    if scene.mask_band is not None:
        msk = RasterSource(scene.info, _grid(scene.info), [scene.mask_band], np.ones(1), np.zeros(1))
        with msk:
            m, m_valid = msk.read()
        valid &= m_valid & (m[0] == 0)
        data[:, ~valid] = np.nan
    if not valid.any():
        raise InputError(f"{scene.path}: no valid pixels")
    return data, valid


# ---------------------------------------------------------------------------------------------------------------
# geometry of one scene pair
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class LRGrid:
    """The reference grid of one LR scene (after an optional degradation) and its pixels."""

    data: np.ndarray
    valid: np.ndarray
    transform: Any
    crs: Any


def prepare_lr(scene: Scene, config: PairsConfig) -> LRGrid:
    """Read an LR scene as reflectance; with ``lr_degrade`` degrade it onto ``lr_gsd`` first (reflectance out)."""
    data, valid = read_scene(scene)
    check_plausible(data, valid, scene, "--lr-scale")
    transform = scene.info.transform
    if config.lr_degrade:
        from gapeval.degrade import degrade_array, file_rng, get_profile

        profile = get_profile(config.lr_degrade, gsd=config.lr_gsd, scale=None, seed=config.seed)
        out = degrade_array(np.where(valid[None], data, np.nan), transform=transform, crs=scene.info.crs, config=profile,
                            rng=file_rng(config.seed, f"lr/{scene.path.name}"))
        data = _reflectance(out.data, out.nodata, profile)
        valid = np.isfinite(data).all(axis=0)
        transform = out.transform
    return LRGrid(data.astype(np.float32), valid, transform, scene.info.crs)


def check_plausible(data: np.ndarray, valid: np.ndarray, scene: Scene, flag: str) -> None:
    """The scoring path's range checks of a scene's reflectance, told whether a scale was applied (so digital numbers,
    reflectance divided by a DN scale and a corrupt file each get their own advice).

    Raises:
        InputError: see :func:`gapeval.reflectance.check_reflectance` and :func:`gapeval.reflectance.check_not_tiny`.
    """
    check_not_tiny(check_reflectance(data, valid, scene.path, flag, scaled=scene.scaled), scene.path, flag, scaled=scene.scaled)


def _reflectance(data: np.ndarray, nodata: Any, profile: Any) -> np.ndarray:
    """A degrade output as float32 reflectance with NaN nodata (quantised DN divided back)."""
    if profile.quantize:
        out = (data.astype(np.float64) - profile.dn_offset) / profile.dn_scale
        if nodata is not None:
            out[:, (data == nodata).all(axis=0)] = np.nan
        return out.astype(np.float32)
    return data.astype(np.float32)


def check_scale(lr: LRGrid, high: Scene, config: PairsConfig, low_path: Path) -> int:
    """The integer HR-per-LR pixel ratio (after checking both grids are square and the ratio is an integer).

    An HR scene in another CRS (``--reproject``) is resampled onto the LR grid subdivided ``scale`` times anyway, so
    its own pixel size only has to be close: ``--scale`` is taken as given, else the ratio rounded when within 2 %.
    """
    lr_px = (abs(lr.transform.a), abs(lr.transform.e))
    hr_px = (abs(high.info.transform.a), abs(high.info.transform.e))
    ratio = (lr_px[0] / hr_px[0], lr_px[1] / hr_px[1])
    if not same_crs(high.info.crs, lr.crs):
        scale = config.scale if config.scale is not None else int(round(ratio[0]))
        if config.scale is None and (scale < 1 or abs(ratio[0] - scale) > 0.02 * scale):
            raise InputError(f"{high.path}: pixel {hr_px[0]:g} ({high.info.crs}) is not about 1/N of the LR pixel {lr_px[0]:g} of {low_path} "
                             f"({lr.crs}; ratio {ratio[0]:g}); give --scale")
        if config.tile % scale:
            raise InputError(f"--tile {config.tile} is not a multiple of the scale {scale}")
        return scale
    if abs(ratio[0] - ratio[1]) > SCALE_TOL * ratio[0]:
        raise InputError(f"{high.path}: LR/HR pixel ratio differs in x ({ratio[0]:g}) and y ({ratio[1]:g})")
    if config.scale is not None and abs(ratio[0] - config.scale) > SCALE_TOL * config.scale:
        raise InputError(f"{high.path}: HR pixel {hr_px[0]:g} x --scale {config.scale} = {hr_px[0] * config.scale:g}, but the LR grid of "
                         f"{low_path} has pixel {lr_px[0]:g} (ratio {ratio[0]:g}); fix --scale or the inputs")
    if abs(ratio[0] - round(ratio[0])) > SCALE_TOL * ratio[0] or round(ratio[0]) < 1:
        raise InputError(f"{high.path}: the LR pixel ({lr_px[0]:g}, {low_path}) is {ratio[0]:g} HR pixels ({hr_px[0]:g}); the scale must be "
                         "an integer: resample one of them (e.g. --lr-degrade PROFILE --lr-gsd G) to an integer multiple")
    scale = int(round(ratio[0]))
    if config.tile % scale:
        raise InputError(f"--tile {config.tile} is not a multiple of the scale {scale}")
    return scale


@dataclass
class HRWork:
    """HR pixels of one scene pair and where the LR grid lies in them: LR pixel (i, j) covers the HR pixel centres
    ``origin + scale * (i, j) + (0..scale-1)`` (HR pixel-index coordinates, fractional)."""

    data: np.ndarray
    valid: np.ndarray
    origin: tuple[float, float]
    resampled: bool


def prepare_hr(high: Scene, lr: LRGrid, scale: int, halo: int) -> HRWork:
    """The HR scene's pixels: its own grid when it shares the LR's CRS (no resampling; the LR grid's corner falls at a
    fractional HR position), else reprojected (cubic) onto the LR grid subdivided ``scale`` times plus ``halo``."""
    from affine import Affine

    if same_crs(high.info.crs, lr.crs):
        data, valid = read_scene(high)
        col, row = ~high.info.transform @ (lr.transform.c, lr.transform.f)  # pixel-corner coordinates of the LR corner
        # HR pixel k has its centre at corner coordinate k + 0.5; the first HR sub-pixel centre of the LR corner pixel
        # is at corner + 0.5 HR px, i.e. pixel index (corner coordinate).
        return HRWork(data, valid, (float(row), float(col)), False)
    px = (lr.transform.a / scale, lr.transform.e / scale)
    h, w = lr.data.shape[1] * scale + 2 * halo, lr.data.shape[2] * scale + 2 * halo
    transform = Affine(px[0], 0.0, lr.transform.c - halo * px[0], 0.0, px[1], lr.transform.f - halo * px[1])
    dst = Grid(transform, lr.crs, h, w, True)
    from rasterio.windows import Window

    src = RasterSource(high.info, _grid(high.info), high.bands, high.gain, high.offset)
    with src:
        data, valid = src.read_on(dst, Window(0, 0, w, h), "cubic")
    if not valid.any():
        raise InputError(f"{high.path}: no valid pixels after reprojection onto the LR grid")
    return HRWork(data, valid, (float(halo), float(halo)), True)


def _window(work: HRWork, r0: float, c0: float, size: int, halo: int) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """HR pixels around a tile whose first sub-pixel centre is at (r0, c0), ``halo`` px each side (NaN outside)."""
    top, left = int(math.floor(r0)) - halo, int(math.floor(c0)) - halo
    n = size + 2 * halo + 1
    bands, h, w = work.data.shape
    data = np.full((bands, n, n), np.nan, np.float32)
    valid = np.zeros((n, n), bool)
    rs, re_ = max(top, 0), min(top + n, h)
    cs, ce = max(left, 0), min(left + n, w)
    if re_ > rs and ce > cs:
        data[:, rs - top:re_ - top, cs - left:ce - left] = work.data[:, rs:re_, cs:ce]
        valid[rs - top:re_ - top, cs - left:ce - left] = work.valid[rs:re_, cs:ce]
    return data, valid, (r0 - top, c0 - left)


def block_mean(x: np.ndarray, scale: int) -> np.ndarray:
    """Area average of (C, H, W) onto the grid ``scale`` times coarser (NaN propagates)."""
    c, h, w = x.shape
    return x.reshape(c, h // scale, scale, w // scale, scale).mean(axis=(2, 4))


def correlation(a: np.ndarray, b: np.ndarray, valid: np.ndarray) -> float:
    """Pearson correlation of the band means of two (C, H, W) images on ``valid``."""
    x, y = a.mean(axis=0)[valid].astype(np.float64), b.mean(axis=0)[valid].astype(np.float64)
    if x.size < 3 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


# ---------------------------------------------------------------------------------------------------------------
# tiles
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Tile:
    """One candidate tile: its place, measurements and fate (one manifest row)."""

    tile: str
    lr_scene: str
    lr_date: str
    hr_scene: str
    hr_date: str
    row: int
    col: int
    bounds: tuple[float, float, float, float]
    status: str = "kept"
    reason: str = ""
    split: str = ""
    valid_fraction: float = float("nan")
    hr_std: float = float("nan")
    shift: Shift | None = None
    residual: Shift | None = None
    correlation: float = float("nan")
    fit_gain: np.ndarray | None = None
    fit_offset: np.ndarray | None = None
    fit_rmse: float = float("nan")
    fit_r2: float = float("nan")
    harm_gain: np.ndarray | None = None
    harm_offset: np.ndarray | None = None
    # LR-grid arrays kept for a scene-level fit (not written)
    _lr: np.ndarray | None = field(default=None, repr=False)
    _hr_lr: np.ndarray | None = field(default=None, repr=False)
    _joint: np.ndarray | None = field(default=None, repr=False)

    def reject(self, reason: str) -> Tile:
        self.status, self.reason = "rejected", reason
        return self


def manifest_columns(bands: Sequence[str]) -> list[str]:
    cols = ["tile", "split", "status", "reason", "lr_scene", "lr_date", "hr_scene", "hr_date", "row", "col", "left", "bottom", "right", "top",
            "valid_fraction", "hr_std", "shift_dy", "shift_dx", "shift_px", "affine", "corrected", "residual_dy", "residual_dx", "residual_px",
            "align_quality", "correlation", "fit_rmse", "fit_r2"]
    cols += [f"fit_gain_{b}" for b in bands] + [f"fit_offset_{b}" for b in bands]
    cols += ["harmonize"] + [f"harm_gain_{b}" for b in bands] + [f"harm_offset_{b}" for b in bands]
    return cols


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return str(v)


def manifest_row(t: Tile, bands: Sequence[str], config: PairsConfig) -> dict[str, str]:
    nan = float("nan")
    row: dict[str, Any] = {
        "tile": t.tile, "split": t.split, "status": t.status, "reason": t.reason, "lr_scene": t.lr_scene, "lr_date": t.lr_date,
        "hr_scene": t.hr_scene, "hr_date": t.hr_date, "row": t.row, "col": t.col,
        "left": t.bounds[0], "bottom": t.bounds[1], "right": t.bounds[2], "top": t.bounds[3],
        "valid_fraction": t.valid_fraction, "hr_std": t.hr_std,
        "shift_dy": t.shift.dy if t.shift else nan, "shift_dx": t.shift.dx if t.shift else nan, "shift_px": t.shift.px if t.shift else nan,
        "affine": " ".join(f"{v:.6g}" for v in t.shift.deform) if t.shift is not None and config.align == "shift+affine" else "",
        "corrected": str(config.correct and t.shift is not None and t.status == "kept").lower(),
        "residual_dy": t.residual.dy if t.residual else nan, "residual_dx": t.residual.dx if t.residual else nan,
        "residual_px": t.residual.px if t.residual else nan, "align_quality": t.shift.quality if t.shift else nan,
        "correlation": t.correlation, "fit_rmse": t.fit_rmse, "fit_r2": t.fit_r2, "harmonize": f"{config.harmonize}/{config.harmonize_on}",
    }
    for i, b in enumerate(bands):
        row[f"fit_gain_{b}"] = float(t.fit_gain[i]) if t.fit_gain is not None else nan
        row[f"fit_offset_{b}"] = float(t.fit_offset[i]) if t.fit_offset is not None else nan
        row[f"harm_gain_{b}"] = float(t.harm_gain[i]) if t.harm_gain is not None else nan
        row[f"harm_offset_{b}"] = float(t.harm_offset[i]) if t.harm_offset is not None else nan
    return {k: _fmt(v) for k, v in row.items()}


def measure_tile(t: Tile, lr_tile: np.ndarray, lr_valid: np.ndarray, work: HRWork, origin: tuple[float, float], scale: int,
                 config: PairsConfig, halo: int) -> Tile:
    """Filters, misregistration and radiometric fit of one tile (its fate recorded on it)."""
    size = config.tile
    win, win_valid, local = _window(work, origin[0], origin[1], size, halo)
    hr0, hr0_ok = resample(win, (size, size), origin=local, valid=win_valid)  # zero-shift HR tile (for the filters)
    lr_cov = np.repeat(np.repeat(lr_valid, scale, axis=0), scale, axis=1)
    t.valid_fraction = float((hr0_ok & lr_cov).mean())
    if t.valid_fraction < config.min_valid:
        return t.reject(f"valid fraction {t.valid_fraction:.3f} < {config.min_valid}")
    t.hr_std = float(np.nanstd(hr0.mean(axis=0)[hr0_ok]))
    if t.hr_std < config.min_std:
        return t.reject(f"flat: HR std {t.hr_std:.4g} < {config.min_std}")
    try:
        t.shift = estimate_shift_scaled(win, lr_tile, scale, origin=local, hr_valid=win_valid, lr_valid=lr_valid,
                                        affine=config.align == "shift+affine", min_valid=_min_lr_pixels(lr_valid))
    except AlignmentError as exc:
        return t.reject(f"alignment: {exc}")
    worst = t.shift.max_displacement(size, size)
    if worst > config.max_shift:
        hr0_lr = block_mean(np.where(hr0_ok[None], hr0, np.nan), scale)
        t.correlation = correlation(lr_tile, hr0_lr, lr_valid & np.isfinite(hr0_lr).all(axis=0))  # uncorrected, for the record
        return t.reject(f"shift {worst:.2f} px > --max-shift {config.max_shift:g}")
    hr, hr_ok = resample(win, (size, size), origin=local, shift=t.shift if config.correct else None, valid=win_valid)
    t.valid_fraction = float((hr_ok & lr_cov).mean())
    if t.valid_fraction < config.min_valid:  # the correction may reach past the HR scene's edge
        return t.reject(f"valid fraction {t.valid_fraction:.3f} < {config.min_valid} after the shift correction")
    hr_lr = block_mean(np.where(hr_ok[None], hr, np.nan), scale)
    joint = lr_valid & np.isfinite(hr_lr).all(axis=0)
    try:
        t.residual = estimate_shift_scaled(hr, lr_tile, scale, hr_valid=hr_ok, lr_valid=lr_valid, min_valid=_min_lr_pixels(lr_valid) // 2)
    except AlignmentError:
        t.residual = None
    t.correlation = correlation(lr_tile, hr_lr, joint)
    try:
        fit = fit_linear(hr_lr, lr_tile, joint, min_valid=_min_lr_pixels(lr_valid) // 2)
        t.fit_gain, t.fit_offset = fit.gain, fit.offset
        t.fit_rmse, t.fit_r2 = float(np.mean(fit.rmse)), float(np.mean(fit.r2))
    except AlignmentError as exc:
        return t.reject(f"radiometric fit: {exc}")
    if config.min_corr is not None and not t.correlation >= config.min_corr:
        return t.reject(f"content change: correlation {t.correlation:.3f} < --min-corr {config.min_corr:g}")
    if config.max_residual is not None and t.fit_rmse > config.max_residual:
        return t.reject(f"fit residual {t.fit_rmse:.4g} > --max-residual {config.max_residual:g}")
    t._lr, t._hr_lr, t._joint = lr_tile, hr_lr, joint
    return t


def cut_tile(work: HRWork, origin: tuple[float, float], t: Tile, config: PairsConfig, halo: int) -> np.ndarray:
    """The HR tile as :func:`measure_tile` saw it (corrected unless ``--no-correct``); NaN where invalid."""
    win, win_valid, local = _window(work, origin[0], origin[1], config.tile, halo)
    hr, _ = resample(win, (config.tile, config.tile), origin=local, shift=t.shift if config.correct else None, valid=win_valid)
    return hr


def _min_lr_pixels(lr_valid: np.ndarray) -> int:
    """Fewest valid LR pixels a tile's shift estimate and fit need: half the tile, at least 64."""
    return max(64, lr_valid.size // 2)


def harmonise(hr: np.ndarray, t: Tile, config: PairsConfig, scene_fit: tuple[np.ndarray, np.ndarray] | None,
              scene_lr: np.ndarray | None) -> np.ndarray:
    """HR tile with the LR's radiometry (``config.harmonize``); records the applied linear coefficients on ``t``."""
    if config.harmonize == "none":
        return hr
    if config.harmonize == "linear":
        gain, offset = scene_fit if scene_fit is not None else (t.fit_gain, t.fit_offset)
        t.harm_gain, t.harm_offset = np.asarray(gain), np.asarray(offset)
        return (hr * t.harm_gain[:, None, None] + t.harm_offset[:, None, None]).astype(np.float32)
    ref = scene_lr if scene_lr is not None else t._lr[:, t._joint][:, :, None]
    valid = np.isfinite(hr).all(axis=0)
    return histogram_match(hr, ref, image_valid=valid)


def assign_blocks(tiles: Sequence[Tile], anchor: tuple[float, float], block_m: float, config: PairsConfig) -> dict[tuple[int, int], str]:
    """Split of every spatial block holding kept tiles; drops (rejects) tiles that cross a block edge.

    Blocks are ``block_m`` squares in map units anchored at ``anchor`` (upper-left corner of the first LR scene). They are
    shuffled with ``config.seed``; each non-empty split with a positive fraction first gets one block, then every block
    goes to the split furthest below its share of tiles.

    Raises:
        InputError: fewer blocks than splits with a positive fraction (an empty split).
    """
    eps = 1e-6 * block_m
    per_block: dict[tuple[int, int], list[Tile]] = {}
    for t in tiles:
        if t.status != "kept":
            continue
        left, bottom, right, top = t.bounds
        bx0, bx1 = math.floor((left - anchor[0] + eps) / block_m), math.floor((right - anchor[0] - eps) / block_m)
        by0, by1 = math.floor((anchor[1] - top + eps) / block_m), math.floor((anchor[1] - bottom - eps) / block_m)
        if bx0 != bx1 or by0 != by1:
            t.reject("crosses a spatial block edge")
            continue
        per_block.setdefault((bx0, by0), []).append(t)
    keys = sorted(per_block)
    rng = np.random.default_rng(config.seed)
    keys = [keys[i] for i in rng.permutation(len(keys))]
    wanted = [s for s, f in zip(SPLITS, config.split) if f > 0]
    if len(keys) < len(wanted):
        raise InputError(f"empty split: only {len(keys)} spatial block(s) of {config.block} HR px hold kept tiles, but {len(wanted)} splits "
                         f"({', '.join(wanted)}) need one each; use a smaller --block, more scenes, or looser filters")
    frac = dict(zip(SPLITS, config.split))
    counts = {s: 0 for s in SPLITS}
    out: dict[tuple[int, int], str] = {}
    for i, key in enumerate(keys):
        if i < len(wanted):
            split = wanted[i]
        else:
            total = sum(counts.values())
            split = max(wanted, key=lambda s: frac[s] * (total + len(per_block[key])) - counts[s])
        out[key] = split
        counts[split] += len(per_block[key])
        for t in per_block[key]:
            t.split = split
    return out


# ---------------------------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------------------------


def _done_tiles(out: Path, config: PairsConfig, overwrite: bool) -> dict[str, dict[str, str]]:
    """Manifest rows already written by a run with the same configuration (empty for a fresh run)."""
    state, manifest = out / STATE, out / MANIFEST
    if overwrite:
        import shutil

        for split in SPLITS:  # a new split assignment must not leave a tile in two splits
            if (out / split).is_dir():
                shutil.rmtree(out / split)
        for path in (manifest, state):
            if path.exists():
                path.unlink()
    if not manifest.exists():
        return {}
    previous = json.loads(state.read_text()).get("config_hash") if state.exists() else None
    if previous != config.hash():
        raise InputError(f"{out}: holds a pairs run with another configuration ({STATE}); use a new --out or --overwrite")
    records = read_records_complete(manifest)
    if len(records) < 2:
        return {}
    header = records[0]
    return {rec[0]: dict(zip(header, rec)) for rec in records[1:] if rec}


def _write_state(out: Path, config: PairsConfig, extra: Mapping[str, Any]) -> None:
    import gapeval

    state = {"config": config.to_dict(), "config_hash": config.hash(), "gapeval_version": gapeval.__version__, **extra}
    write_text_atomic(out / STATE, json.dumps(state, indent=2, sort_keys=True) + "\n")


def _band_names(scene: Scene) -> list[str]:
    desc = [scene.info.descriptions[b] if b < len(scene.info.descriptions) else None for b in scene.bands]
    names = [re.sub(r"[^A-Za-z0-9]+", "", d) if d else "" for d in desc]
    if all(names) and len(set(names)) == len(names):
        return names
    return [f"b{i + 1}" for i in range(len(scene.bands))]


def _tiles_of(lr: LRGrid, work: HRWork, scale: int, config: PairsConfig, low: Scene, high: Scene) -> Iterator[tuple[Tile, tuple[float, float]]]:
    """Candidate tiles of the LR grid whose HR footprint (with halo) touches the HR pixels."""
    n = config.tile // scale
    _, h, w = lr.data.shape
    hh, hw = work.data.shape[1:]
    res_x, res_y = lr.transform.a, lr.transform.e
    for r in range(0, h - n + 1, n):
        for c in range(0, w - n + 1, n):
            origin = (work.origin[0] + scale * r, work.origin[1] + scale * c)
            if origin[0] + config.tile <= 0 or origin[1] + config.tile <= 0 or origin[0] >= hh or origin[1] >= hw:
                continue
            x0, y0 = lr.transform.c + c * res_x, lr.transform.f + r * res_y
            bounds = (min(x0, x0 + n * res_x), min(y0, y0 + n * res_y), max(x0, x0 + n * res_x), max(y0, y0 + n * res_y))
            name = f"{low.name}__{high.name}__r{r:05d}_c{c:05d}"
            yield Tile(name, low.path.name, low.date, high.path.name, high.date, r, c, bounds), origin


def build_pairs(hr: str | Path, lr: str | Path, out: str | Path, config: PairsConfig | None = None, *, overwrite: bool = False) -> dict[str, Any]:
    """Build the pair dataset (see the module docstring); returns the summary written to ``pairs.json``.

    Raises:
        InputError: no overlap, CRS mismatch without ``reproject``, non-integer scale, an empty split, bad files.
    """
    from gapeval.degrade import degrade_array, file_rng, get_profile

    config = config or PairsConfig()
    out = Path(out)
    make_folder(out, "--out")
    hr_scenes = load_scenes(hr, scale=config.hr_scale, mask_band=config.hr_mask_band, role="HR")
    lr_scenes = load_scenes(lr, scale=config.lr_scale, mask_band=config.lr_mask_band, role="LR")
    counts = {len(s.bands) for s in hr_scenes + lr_scenes}
    if len(counts) != 1:
        raise InputError(f"HR and LR scenes must have the same number of data bands, got {sorted(counts)} (mask bands excluded)")
    pairs = pair_scenes(hr_scenes, lr_scenes, reproject=config.reproject)
    bands = _band_names(hr_scenes[0])
    done = _done_tiles(out, config, overwrite)
    _write_state(out, config, {"status": "running"})
    cols = manifest_columns(bands)
    manifest = out / MANIFEST
    if not manifest.exists():
        buf = _io.StringIO()
        csv.writer(buf, lineterminator="").writerow(cols)
        append_line(manifest, buf.getvalue())
    halo = int(math.ceil(config.max_shift)) + HALO_EXTRA
    all_tiles: list[Tile] = []
    prepared: dict[str, LRGrid] = {}
    anchor = None
    per_pair: list[tuple[Scene, Scene, int, bool, list[tuple[Tile, tuple[float, float]]]]] = []
    for low, high in pairs:
        if low.path.as_posix() not in prepared:
            prepared[low.path.as_posix()] = prepare_lr(low, config)
        lr_grid = prepared[low.path.as_posix()]
        if anchor is None:
            anchor = (lr_grid.transform.c, lr_grid.transform.f)
        scale = check_scale(lr_grid, high, config, low.path)
        work = prepare_hr(high, lr_grid, scale, halo)
        check_plausible(work.data, work.valid, high, "--hr-scale")
        n = config.tile // scale
        measured = []
        for t, origin in _tiles_of(lr_grid, work, scale, config, low, high):
            lr_tile = lr_grid.data[:, t.row:t.row + n, t.col:t.col + n]
            lr_valid = lr_grid.valid[t.row:t.row + n, t.col:t.col + n]
            t = measure_tile(t, lr_tile, lr_valid, work, origin, scale, config, halo)
            measured.append((t, origin))
            all_tiles.append(t)
        per_pair.append((low, high, scale, work.resampled, measured))
        logger.info("%s x %s: %d tiles, %d kept", low.name, high.name, len(measured), sum(t.status == "kept" for t, _ in measured))
        del work  # bounded memory: one HR scene at a time; pass 2 reads it again
    scale0 = per_pair[0][2]
    hr_res = abs(prepared[pairs[0][0].path.as_posix()].transform.a) / scale0
    assign_blocks(all_tiles, anchor, config.block * hr_res, config)
    written = 0
    for low, high, scale, _, measured in per_pair:
        kept = [t for t, _ in measured if t.status == "kept"]
        scene_fit, scene_lr = None, None
        if config.harmonize != "none" and config.harmonize_on == "scene" and kept:
            lr_all = np.concatenate([t._lr[:, t._joint] for t in kept], axis=1)
            hr_all = np.concatenate([t._hr_lr[:, t._joint] for t in kept], axis=1)
            if config.harmonize == "linear":
                fit = fit_linear(hr_all[:, :, None], lr_all[:, :, None])
                scene_fit = (fit.gain, fit.offset)
            else:
                scene_lr = lr_all[:, :, None]
        lr_grid = prepared[low.path.as_posix()]
        todo = [t for t, _ in measured if t.status == "kept" and t.tile not in done]
        work = prepare_hr(high, lr_grid, scale, halo) if todo else None
        for t, origin in measured:
            if t.tile in done:
                continue
            if t.status == "kept":
                hr_out = harmonise(cut_tile(work, origin, t, config, halo), t, config, scene_fit, scene_lr)
                n = config.tile // scale
                lr_tile = lr_grid.data[:, t.row:t.row + n, t.col:t.col + n]
                _write_tile(out, t, hr_out, lr_tile, lr_grid, scale, config, degrade_array, file_rng, get_profile)
                written += 1
            buf = _io.StringIO()
            row = manifest_row(t, bands, config)
            csv.writer(buf, lineterminator="").writerow([row[c] for c in cols])
            append_line(manifest, buf.getvalue())
    summary = {
        "status": "complete",
        "scene_pairs": [{"lr": lo.path.name, "hr": hi.path.name, "scale": s, "hr_resampled": r} for lo, hi, s, r, _ in per_pair],
        "tiles": {split: sum(t.status == "kept" and t.split == split for t in all_tiles) for split in SPLITS},
        "rejected": _reasons(all_tiles),
        "written_now": written,
        "resumed": len(done),
        "bands": bands,
        "block_m": config.block * hr_res,
        "block_anchor": list(anchor),
    }
    for split, f in zip(SPLITS, config.split):
        if f > 0 and not summary["tiles"][split]:
            raise InputError(f"empty split: no kept tile fell in a {split} block; use a smaller --block or more scenes")
    _write_state(out, config, summary)
    return summary


def _reasons(tiles: Sequence[Tile]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in tiles:
        if t.status == "rejected":
            key = t.reason.split(":")[0].split(" ")[0] if not t.reason.startswith("crosses") else "block edge"
            out[key] = out.get(key, 0) + 1
    return out


def _write_tile(out: Path, t: Tile, hr: np.ndarray, lr_tile: np.ndarray, lr_grid: LRGrid, scale: int, config: PairsConfig,
                degrade_array: Any, file_rng: Any, get_profile: Any) -> None:
    """HR tile, real LR tile and the synthetic twins, GeoTIFF float32 reflectance (NaN nodata), each written atomically;
    the manifest row that follows marks the tile complete."""
    from affine import Affine

    lr_t = lr_grid.transform @ Affine.translation(t.col, t.row)
    hr_t = lr_t @ Affine.scale(1.0 / scale)
    tags = {"UNITS": "reflectance", "LR_SCENE": t.lr_scene, "HR_SCENE": t.hr_scene, "LR_DATE": t.lr_date, "HR_DATE": t.hr_date,
            "SHIFT_DY": t.shift.dy if t.shift else "", "SHIFT_DX": t.shift.dx if t.shift else "", "CORRECTED": str(config.correct).lower()}
    nodata = float("nan")
    base = out / t.split
    write_raster(base / "hr" / f"{t.tile}.tif", hr, transform=hr_t, crs=lr_grid.crs, nodata=nodata, tags=dict(tags, ROLE="HR target"))
    write_raster(base / "lr" / f"{t.tile}.tif", lr_tile, transform=lr_t, crs=lr_grid.crs, nodata=nodata, tags=dict(tags, ROLE="real LR"))
    for name in config.synthetic:
        profile = get_profile(name, scale=float(scale), gsd=None, seed=config.seed)
        deg = degrade_array(hr, transform=hr_t, crs=lr_grid.crs, config=profile, rng=file_rng(config.seed, f"{t.tile}/{name}"))
        write_raster(base / f"lr_synth_{name}" / f"{t.tile}.tif", _reflectance(deg.data, deg.nodata, profile), transform=deg.transform,
                     crs=lr_grid.crs, nodata=nodata, tags=dict(tags, ROLE=f"synthetic LR ({name} profile)", PROFILE=name))


# ---------------------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------------------


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or not all(math.isfinite(p) for p in parts) or min(parts) < 0 or abs(sum(parts) - 1) > 1e-6:
        raise argparse.ArgumentTypeError(f"expected three fractions summing to 1 such as 0.7,0.15,0.15, got {text!r}")
    return parts  # type: ignore[return-value]


def _profiles(text: str) -> tuple[str, ...]:
    return () if text.strip().lower() == "none" else tuple(p.strip() for p in text.split(",") if p.strip())


def _scale(text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value != int(value) or value < 1:
        raise argparse.ArgumentTypeError(f"--scale must be a positive integer (HR pixels per LR pixel), got {text}")
    return int(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``gapeval pairs`` arguments."""
    parser.add_argument("--hr", required=True, help="folder (or one file) of high-resolution GeoTIFF scenes")
    parser.add_argument("--lr", required=True, help="folder (or one file) of low-resolution GeoTIFF scenes (their grid is the reference)")
    parser.add_argument("--out", required=True, help="output folder: {train,val,test}/{hr,lr,lr_synth_PROFILE}/TILE.tif, manifest.csv, pairs.json")
    parser.add_argument("--scale", type=_scale, help="HR pixels per LR pixel, an integer (default: from the grids)")
    parser.add_argument("--tile", type=positive_int, default=128, help="HR tile size in pixels, a multiple of the scale (default 128)")
    parser.add_argument("--align", choices=("shift", "shift+affine"), default="shift", help="misregistration model per tile (default shift)")
    parser.add_argument("--no-correct", dest="correct", action="store_false", help="measure and filter by misregistration but do not resample the HR")
    parser.add_argument("--max-shift", type=nonnegative_float, default=3.0, help="reject tiles misregistered by more than this many HR pixels (default 3)")
    parser.add_argument("--max-residual", type=positive_float, help="reject tiles whose linear fit LR ~ area-averaged HR leaves an RMSE above this (reflectance)")
    parser.add_argument("--min-corr", type=number(float, -1, 1), help="reject tiles whose LR vs area-averaged HR correlation is below this (content change)")
    parser.add_argument("--harmonize", choices=("none", "linear", "histogram"), default="none", help="map HR radiometry onto the LR's (default none)")
    parser.add_argument("--harmonize-on", choices=("tile", "scene"), default="tile", help="fit the harmonisation per tile or per scene pair")
    parser.add_argument("--min-valid", type=fraction, default=0.95, help="least valid (not nodata/cloud) fraction of a tile (default 0.95)")
    parser.add_argument("--min-std", type=nonnegative_float, default=0.002, help="reject flat tiles: HR band-mean std below this reflectance (default 0.002)")
    parser.add_argument("--split", type=_fractions, default=(0.7, 0.15, 0.15), help="train,val,test fractions (default 0.7,0.15,0.15)")
    parser.add_argument("--block", type=positive_int, default=2048, help="spatial block side in HR pixels; splits never share a block (default 2048)")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="block shuffling and synthetic noise seed (default 0)")
    parser.add_argument("--synthetic", type=_profiles, default=("bicubic", "s2"), help="degrade profiles of the synthetic twins, comma separated, or none "
                        "(default bicubic,s2)")
    parser.add_argument("--lr-degrade", help="degrade the LR scenes with this profile first (e.g. s2), when the LR sensor is itself high resolution")
    parser.add_argument("--lr-gsd", type=positive_float, help="ground sampling distance the LR scenes are degraded to (with --lr-degrade), e.g. 20")
    parser.add_argument("--hr-scale", type=positive_float, help="divide HR pixel values by this to get reflectance (e.g. 10000; default: file band scales)")
    parser.add_argument("--lr-scale", type=positive_float, help="divide LR pixel values by this to get reflectance")
    parser.add_argument("--hr-mask-band", type=positive_int, help="1-based HR band holding a cloud/invalid mask (non-zero = invalid)")
    parser.add_argument("--lr-mask-band", type=positive_int, help="1-based LR band holding a cloud/invalid mask (non-zero = invalid)")
    parser.add_argument("--reproject", action="store_true", help="reproject HR scenes in another CRS onto the LR grid (cubic) instead of refusing")
    parser.add_argument("--overwrite", action="store_true", help="start again in an --out holding another configuration")


def run(args: argparse.Namespace) -> int:
    """``gapeval pairs``: build the pair dataset and print a summary."""
    config = PairsConfig(scale=args.scale, tile=args.tile, align=args.align, correct=args.correct, max_shift=args.max_shift,
                         max_residual=args.max_residual, min_corr=args.min_corr, harmonize=args.harmonize, harmonize_on=args.harmonize_on,
                         min_valid=args.min_valid, min_std=args.min_std, split=args.split, block=args.block, seed=args.seed,
                         synthetic=args.synthetic, lr_degrade=args.lr_degrade, lr_gsd=args.lr_gsd, hr_scale=args.hr_scale, lr_scale=args.lr_scale,
                         hr_mask_band=args.hr_mask_band, lr_mask_band=args.lr_mask_band, reproject=args.reproject)
    summary = build_pairs(args.hr, args.lr, args.out, config, overwrite=args.overwrite)
    tiles = ", ".join(f"{k} {v}" for k, v in summary["tiles"].items())
    rejected = ", ".join(f"{k} {v}" for k, v in sorted(summary["rejected"].items())) or "none"
    print(f"gapeval pairs: {len(summary['scene_pairs'])} scene pair(s); tiles kept: {tiles}; rejected: {rejected}; "
          f"{summary['written_now']} written now, {summary['resumed']} already done -> {args.out}")
    return 0
