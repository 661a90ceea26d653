"""Windowed access to one file: :class:`RasterSource` reads selected, scaled bands window by window (optionally
resampled onto another grid) in bounded memory; :class:`ArraySource` does the same for an array in memory;
:class:`RasterWriter` writes a GeoTIFF window by window, atomically."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gapeval.grids import PLACEHOLDER_CRS, Grid, same_crs
from gapeval.windows import full_window, window_slices
from lpips_sat.atomic import atomic_path
from lpips_sat.errors import InputError
from lpips_sat.raster import ARRAY_SUFFIXES, RASTER_SUFFIXES, RasterInfo, load_npy, open_geotiff, read_raster, valid_mask

#: Extra source pixels read around a window before resampling it, so every kernel (up to lanczos) is complete.
WARP_MARGIN = 4

class RasterSource:
    """One file opened for windowed reads of selected bands, scaled (``raw * gain + offset``), on ``grid``.

    GeoTIFFs are read window by window (bounded memory); ``.npy`` files are memory-mapped; PNG/JPEG are read
    whole. Reads return ``(data, valid)``: float32 (bands, rows, cols) with NaN where invalid, and the mask.
    """

    def __init__(self, info: RasterInfo, grid: Grid, bands: Sequence[int], gain: np.ndarray, offset: np.ndarray) -> None:
        self.info, self.grid, self.bands = info, grid, list(bands)
        self.gain = np.asarray(gain, np.float32).reshape(-1, 1, 1)
        self.offset = np.asarray(offset, np.float32).reshape(-1, 1, 1)
        self._ds: Any = None
        self._arr: np.ndarray | None = None
        self._use_mask = False

    @property
    def path(self) -> Path:
        return self.info.path

    def __enter__(self) -> RasterSource:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Open the file (idempotent)."""
        if self._ds is not None or self._arr is not None:
            return
        suffix = self.path.suffix.lower()
        if suffix in RASTER_SUFFIXES:
            from rasterio.enums import MaskFlags

            self._ds = open_geotiff(self.path)
            flags = self._ds.mask_flag_enums[self.bands[0]]
            self._use_mask = MaskFlags.per_dataset in flags or MaskFlags.alpha in flags
        elif suffix in ARRAY_SUFFIXES:
            self._arr = load_npy(self.path, mmap=True)
        else:
            self._arr = read_raster(self.path).data

    def close(self) -> None:
        if self._ds is not None:
            self._ds.close()
        self._ds, self._arr = None, None

    def read(self, window: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Selected bands of ``window`` (whole image if ``None``) on this source's own grid."""
        self.open()
        if self._ds is not None:
            from rasterio.errors import RasterioIOError

            try:
                raw = self._ds.read([b + 1 for b in self.bands], window=window)
                extra = self._ds.read_masks(self.bands[0] + 1, window=window) > 0 if self._use_mask else None
            except RasterioIOError as exc:
                raise InputError(f"{self.path}: cannot read pixels ({exc}); the file may be corrupt or truncated") from exc
        else:
            arr = self._arr
            if window is not None:
                rs, cs = window_slices(window, full_window(arr.shape[1], arr.shape[2]))
                arr = arr[:, rs, cs]
            raw, extra = np.asarray(arr[self.bands]), None
        valid = valid_mask(raw, self.info.nodata)
        if extra is not None:
            valid &= extra
        data = raw.astype(np.float32) * self.gain + self.offset
        data[:, ~valid] = np.nan
        return data, valid

    def _source_window(self, dst: Grid, window: Any) -> tuple[Any, dict[str, Any]]:
        """The window of this file under ``window`` of ``dst`` (plus :data:`WARP_MARGIN`; ``None`` when they do not
        overlap) and the geometry arguments of ``rasterio.warp.reproject`` from it onto ``window``.

        A grid without CRS is taken to share the other grid's CRS (its transform still counts)."""
        from rasterio.warp import transform_bounds
        from rasterio.windows import Window, from_bounds

        h, w = int(window.height), int(window.width)
        dst_transform = dst.window_transform(window)
        src_crs = self.grid.crs if self.grid.crs is not None else dst.crs
        dst_crs = dst.crs if dst.crs is not None else src_crs
        if src_crs is None:
            src_crs = dst_crs = PLACEHOLDER_CRS
        left, bottom, right, top = Grid(dst_transform, dst_crs, h, w).bounds
        if not same_crs(src_crs, dst_crs):
            left, bottom, right, top = transform_bounds(dst_crs, src_crs, left, bottom, right, top, densify_pts=21)
        src_win = from_bounds(left, bottom, right, top, transform=self.grid.transform)
        r0 = max(0, int(np.floor(min(src_win.row_off, src_win.row_off + src_win.height))) - WARP_MARGIN)
        c0 = max(0, int(np.floor(min(src_win.col_off, src_win.col_off + src_win.width))) - WARP_MARGIN)
        r1 = min(self.grid.height, int(np.ceil(max(src_win.row_off, src_win.row_off + src_win.height))) + WARP_MARGIN)
        c1 = min(self.grid.width, int(np.ceil(max(src_win.col_off, src_win.col_off + src_win.width))) + WARP_MARGIN)
        if r1 <= r0 or c1 <= c0:
            return None, {}
        src_window = Window(c0, r0, c1 - c0, r1 - r0)
        geometry = dict(
            src_transform=self.grid.window_transform(src_window), src_crs=src_crs, dst_transform=dst_transform, dst_crs=dst_crs
        )
        return src_window, geometry

    def read_on(self, dst: Grid, window: Any, resampling: str = "bilinear") -> tuple[np.ndarray, np.ndarray]:
        """Selected bands resampled onto ``window`` of another grid ``dst`` (``resampling``: a GDAL method name).

        Only the source pixels under the window (plus :data:`WARP_MARGIN`) are read. A resampled pixel is valid
        when it is finite and its resampled validity mask is 1 (every contributing source pixel valid).
        """
        from rasterio.enums import Resampling
        from rasterio.warp import reproject

        h, w = int(window.height), int(window.width)
        out = np.full((len(self.bands), h, w), np.nan, np.float32)
        src_window, geometry = self._source_window(dst, window)
        if src_window is None:
            return out, np.zeros((h, w), bool)
        data, valid = self.read(src_window)
        cover = np.zeros((1, h, w), np.float32)
        method = getattr(Resampling, resampling)
        reproject(data, out, src_nodata=np.nan, dst_nodata=np.nan, resampling=method, **geometry)
        reproject(valid[None].astype(np.float32), cover, resampling=method, **geometry)
        ok = (cover[0] >= 0.999) & np.isfinite(out).all(axis=0)
        out[:, ~ok] = np.nan
        return out, ok

    def defects_on(self, dst: Grid, window: Any) -> np.ndarray:
        """(rows, cols) True where ``window`` of ``dst`` falls (nearest pixel) on a pixel that this file itself marks
        invalid (NaN/inf/nodata); pixels outside the file or at its resampling margin are not defects."""
        from rasterio.enums import Resampling
        from rasterio.warp import reproject

        h, w = int(window.height), int(window.width)
        bad = np.zeros((1, h, w), np.float32)
        src_window, geometry = self._source_window(dst, window)
        if src_window is not None:
            _, valid = self.read(src_window)
            if not valid.all():
                reproject((~valid)[None].astype(np.float32), bad, resampling=Resampling.nearest, **geometry)
        return bad[0] > 0


class ArraySource(RasterSource):
    """A (bands, rows, cols) array in memory behind the :class:`RasterSource` interface (every band, no scaling, no
    nodata value: non-finite pixels are invalid), named ``<name>`` in messages. Used by ``gapeval.metrics.compute``
    so that arrays take the very path files take."""

    def __init__(self, data: np.ndarray, name: str, grid: Grid) -> None:
        info = RasterInfo(Path(f"<{name}>"), data.shape[0], data.shape[1], data.shape[2], str(data.dtype))
        bands = data.shape[0]
        super().__init__(info, grid, range(bands), np.ones(bands), np.zeros(bands))
        self._data = data

    def open(self) -> None:
        self._arr = self._data

    def close(self) -> None:
        self._arr = None


class RasterWriter:
    """Write a GeoTIFF window by window, atomically (a temporary file renamed on success, removed on error).

    Example:
        >>> import tempfile, numpy as np
        >>> from affine import Affine
        >>> g = Grid(Affine(10, 0, 0, 0, -10, 0), "EPSG:32618", 4, 4)
        >>> path = Path(tempfile.mkdtemp()) / "m.tif"
        >>> with RasterWriter(path, g) as w:
        ...     w.write(np.ones((1, 4, 4), np.float32), full_window(4, 4))
        >>> float(read_raster(path).data.sum())
        16.0
    """

    def __init__(
        self,
        path: str | Path,
        grid: Grid,
        *,
        count: int = 1,
        dtype: str = "float32",
        nodata: float | None = float("nan"),
        tags: Mapping[str, Any] | None = None,
        descriptions: Sequence[str | None] | None = None,
    ) -> None:
        self.path, self.grid = Path(path), grid
        self.profile = dict(
            driver="GTiff",
            height=grid.height,
            width=grid.width,
            count=count,
            dtype=dtype,
            nodata=nodata,
            compress="deflate",
            crs=grid.crs if grid.georeferenced else None,
            transform=grid.transform if grid.georeferenced else None,
        )
        if min(grid.height, grid.width) >= 256:
            self.profile.update(tiled=True, blockxsize=256, blockysize=256)
        self.tags, self.descriptions = dict(tags or {}), list(descriptions or [])
        self._tmp: Path | None = None
        self._ds: Any = None

    def __enter__(self) -> RasterWriter:
        import warnings

        import rasterio
        from rasterio.errors import NotGeoreferencedWarning

        self._tmp = atomic_path(self.path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            self._ds = rasterio.open(self._tmp, "w", **self.profile)
        if self.tags:
            self._ds.update_tags(**{k: str(v) for k, v in self.tags.items()})
        for i, d in enumerate(self.descriptions, start=1):
            if d:
                self._ds.set_band_description(i, d)
        return self

    def write(self, data: np.ndarray, window: Any) -> None:
        """Write (bands, rows, cols) ``data`` into ``window``."""
        self._ds.write(np.asarray(data, dtype=self.profile["dtype"]), window=window)

    def __exit__(self, exc_type: Any, *rest: object) -> None:
        self._ds.close()
        assert self._tmp is not None
        if exc_type is None:
            os.replace(self._tmp, self.path)
        elif self._tmp.exists():
            self._tmp.unlink()

