"""Pixel grids of files and the checks that two files lie on one grid.

:class:`Grid` (transform, CRS, shape), :func:`grid_of` (a file's grid, or a stand-in for files without
geometry), :func:`check_same_grid` (the half-pixel agreement check before pixel-by-pixel comparison) and
:func:`lr_ratio` (a low-resolution input covering the target's extent).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lpips_sat.errors import InputError
from lpips_sat.raster import RasterInfo

logger = logging.getLogger(__name__)

#: CRS given to grids of files without georeferencing (PNG/JPEG/.npy, a GeoTIFF without CRS) so one resampling
#: path serves every input; such files are placed on the target's extent (see :func:`grid_of`).
PLACEHOLDER_CRS = "EPSG:3857"
#: Resampling methods accepted by ``--resample`` (rasterio/GDAL names).
RESAMPLING_METHODS = ("nearest", "bilinear", "cubic", "cubic_spline", "lanczos", "average")


@dataclass(frozen=True)
class Grid:
    """A pixel grid: affine ``transform`` (pixel -> map coordinates), ``crs``, shape; ``georeferenced`` is False
    for files without geometry, whose grid is a stand-in placed on the target's extent."""

    transform: Any
    crs: Any
    height: int
    width: int
    georeferenced: bool = True

    @property
    def res(self) -> tuple[float, float]:
        """Pixel size (x, y) in map units."""
        t = self.transform
        return float(np.hypot(t.a, t.d)), float(np.hypot(t.b, t.e))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in map units."""
        xs, ys = zip(*(self.transform @ c for c in ((0, 0), (self.width, 0), (0, self.height), (self.width, self.height))))
        return min(xs), min(ys), max(xs), max(ys)

    def window_transform(self, window: Any) -> Any:
        """Affine transform of ``window`` (a rasterio ``Window``) on this grid."""
        from rasterio.windows import transform as wtransform

        return wtransform(window, self.transform)

    def describe(self) -> str:
        """One line for error messages: size, pixel size, origin and CRS."""
        rx, ry = self.res
        crs = (self.crs if self.crs is not None else "unknown (geotransform only)") if self.georeferenced else "none (not georeferenced)"
        return f"{self.width}x{self.height} px, pixel {rx:g}x{ry:g}, origin ({self.transform.c:.3f}, {self.transform.f:.3f}), CRS {crs}"

    def mismatch(self, other: Grid, tolerance: float = 0.5) -> str | None:
        """Why this grid is not ``other`` (same CRS, shape, and corners within ``tolerance`` of ``other``'s pixels),
        or ``None`` when they agree."""
        if self.georeferenced and other.georeferenced and not same_crs(self.crs, other.crs, unknown_matches=True):
            return f"CRS differ ({self.crs} vs {other.crs})"
        if (self.height, self.width) != (other.height, other.width):
            return f"shapes differ ({self.width}x{self.height} vs {other.width}x{other.height} px)"
        inv = ~other.transform
        worst = 0.0
        for c in ((0, 0), (self.width, 0), (0, self.height), (self.width, self.height)):
            px = inv @ (self.transform @ c)
            worst = max(worst, abs(px[0] - c[0]), abs(px[1] - c[1]))
        if worst > tolerance:
            return f"pixel grids are offset by up to {worst:.2f} px (more than {tolerance} px)"
        return None


def same_crs(a: Any, b: Any, *, unknown_matches: bool = False) -> bool:
    """Whether two CRS are equal; a missing CRS (``None``) matches only another missing one, or any CRS when
    ``unknown_matches`` (a file with a geotransform but no CRS is compared by its transform alone)."""
    from rasterio.crs import CRS

    if a is None or b is None:
        return unknown_matches or (a is None and b is None)
    return CRS.from_user_input(a) == CRS.from_user_input(b)


def grid_of(info: RasterInfo, target: Grid | None = None) -> Grid:
    """The grid ``info``'s pixels lie on.

    A file with a geotransform keeps its own grid; without a CRS it is taken to share the target's CRS, so its
    transform is still compared with the target's. A file without geometry (or any file when the target has none)
    is assumed to cover the target's extent: its pixel size is the target's scaled by the shape ratio. The target
    itself, if it has no geometry, gets a unit grid in :data:`PLACEHOLDER_CRS`.
    """
    from affine import Affine
    from rasterio.crs import CRS

    if info.transform is not None and (target is None or target.georeferenced):
        crs = info.crs if info.crs is not None else (target.crs if target is not None else None)
        if info.crs is None:
            logger.info("%s has a geotransform but no CRS; assuming the CRS of the grid it is compared with", info.path)
        return Grid(info.transform, crs, info.height, info.width, True)
    if target is None:
        # top-left corner at (0, height), not (0, 0): GDAL's warper returns nothing for the geotransform (0, 1, 0, 0, 0, -1)
        # (every LR-consistency value of non-georeferenced inputs came out NaN)
        top = float(info.height)
        return Grid(Affine(1.0, 0.0, 0.0, 0.0, -1.0, top), CRS.from_user_input(PLACEHOLDER_CRS), info.height, info.width, False)
    transform = target.transform @ Affine.scale(target.width / info.width, target.height / info.height)
    return Grid(transform, target.crs, info.height, info.width, False)


def check_same_grid(grid: Grid, target: Grid, path: Path, target_path: Path, resample: str | None) -> bool:
    """Whether ``grid`` (of ``path``) must be resampled onto ``target``'s grid.

    Returns False when both agree within half a pixel, True when they differ and ``resample`` names a method.
    Raises:
        InputError: the grids differ and no ``resample`` method was chosen (names both files and grids).
    """
    why = grid.mismatch(target)
    if why is None:
        return False
    if resample is None:
        raise InputError(
            f"{path} and {target_path}: {why}.\n  prediction: {grid.describe()}\n  target:     {target.describe()}\n"
            f"  Resample explicitly (--resample {{{','.join(RESAMPLING_METHODS)}}}) or fix the inputs."
        )
    if resample not in RESAMPLING_METHODS:
        raise InputError(f"Unknown resampling {resample!r}; use one of {RESAMPLING_METHODS}")
    if not grid.georeferenced:
        logger.info("%s has no georeferencing; assuming it covers %s's extent before resampling", path, target_path)
    return True


def lr_ratio(lr: Grid, target: Grid, lr_path: Path, target_path: Path) -> float:
    """Resolution ratio ``lr pixel size / target pixel size`` (> 1) after checking that both cover one extent.

    Raises:
        InputError: different CRS, extents that differ by more than half a low-resolution pixel, anisotropic
            ratio, or an "LR" finer than the target.
    """
    if lr.georeferenced and target.georeferenced and not same_crs(lr.crs, target.crs, unknown_matches=True):
        raise InputError(f"{lr_path} and {target_path}: CRS differ ({lr.crs} vs {target.crs}); reproject the LR input first")
    rx, ry = lr.res[0] / target.res[0], lr.res[1] / target.res[1]
    if abs(rx - ry) > 0.01 * max(rx, ry):
        raise InputError(f"{lr_path}: resolution ratio to {target_path} differs in x ({rx:g}) and y ({ry:g})")
    if rx <= 1.0:
        raise InputError(
            f"{lr_path}: low-resolution input has pixel {lr.res[0]:g} but the target {target_path} has {target.res[0]:g}; LR must be coarser"
        )
    tol = 0.5 * lr.res[0]
    worst = max(abs(a - b) for a, b in zip(lr.bounds, target.bounds))
    if worst > tol:
        raise InputError(
            f"{lr_path} does not cover the same extent as {target_path} (edges differ by {worst:g} map units, "
            f"more than half an LR pixel).\n  lr:     {lr.describe()}\n  target: {target.describe()}"
        )
    return float(rx)
