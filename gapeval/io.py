"""The one raster reader/writer of gapeval (rasterio), plus image formats without geometry (PNG/JPEG, .npy).

Arrays are float32 (bands, rows, cols) in the file's own units; scaling to reflectance is the caller's
explicit choice (``scale``). Invalid pixels (nodata, NaN/inf) come back as a boolean ``valid`` mask.
Writes are atomic: a temporary file in the same folder is renamed onto the target.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from lpips_sat.errors import InputError, MissingFileError

RASTER_SUFFIXES = (".tif", ".tiff")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARRAY_SUFFIXES = (".npy",)
SUFFIXES = RASTER_SUFFIXES + IMAGE_SUFFIXES + ARRAY_SUFFIXES


@dataclass
class Raster:
    """Pixels plus geometry. ``transform``/``crs`` are ``None`` for PNG/JPEG/.npy inputs."""

    data: np.ndarray  # (bands, rows, cols) float32
    valid: np.ndarray  # (rows, cols) bool: True where every band is finite and not nodata
    path: Path
    transform: Any = None  # affine.Affine
    crs: Any = None  # rasterio.crs.CRS
    nodata: float | None = None
    tags: dict[str, str] = field(default_factory=dict)
    descriptions: tuple[str | None, ...] = ()

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.data.shape[1]), int(self.data.shape[2])

    @property
    def valid_fraction(self) -> float:
        return float(self.valid.mean()) if self.valid.size else 0.0


def read_raster(path: str | Path, *, window: Any = None, scale: float | None = None) -> Raster:
    """Read a GeoTIFF (windowed if ``window``), PNG/JPEG or ``.npy`` file as float32 bands-first.

    Args:
        path: the file.
        window: a ``rasterio.windows.Window`` (GeoTIFF only).
        scale: divide pixel values by this (e.g. 10000 for Sentinel-2 DN); nodata stays masked.
    Raises:
        MissingFileError: no such file. InputError: unreadable/corrupt file or unsupported suffix.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: file does not exist")
    suffix = path.suffix.lower()
    if suffix in RASTER_SUFFIXES:
        raster = _read_geotiff(path, window)
    elif suffix in IMAGE_SUFFIXES:
        raster = _read_image(path)
    elif suffix in ARRAY_SUFFIXES:
        raster = _read_npy(path)
    else:
        raise InputError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(SUFFIXES)}")
    if scale is not None:
        if scale <= 0:
            raise InputError(f"scale must be positive, got {scale}")
        raster.data = raster.data / np.float32(scale)
    return raster


def _finish(data: np.ndarray, path: Path, nodata: float | None, **kw: Any) -> Raster:
    data = data.astype(np.float32, copy=False)
    valid = np.isfinite(data).all(axis=0)
    if nodata is not None and np.isfinite(nodata):
        valid &= ~(data == np.float32(nodata)).all(axis=0)
    return Raster(data=data, valid=valid, path=path, nodata=nodata, **kw)


def _read_geotiff(path: Path, window: Any) -> Raster:
    import rasterio
    from rasterio.errors import RasterioIOError

    try:
        with rasterio.open(path) as ds:
            data = ds.read(window=window)
            transform = ds.window_transform(window) if window is not None else ds.transform
            return _finish(data, path, ds.nodata, transform=transform, crs=ds.crs, tags=dict(ds.tags()), descriptions=tuple(ds.descriptions))
    except RasterioIOError as exc:
        raise InputError(f"{path}: cannot read as GeoTIFF ({exc}); the file may be corrupt or truncated") from exc


def _read_image(path: Path) -> Raster:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            arr = np.asarray(img)
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"{path}: cannot read as an image ({exc})") from exc
    if arr.dtype != np.uint8:
        raise InputError(f"{path}: only 8-bit PNG/JPEG are supported, got {arr.dtype}")
    arr = arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)
    return _finish(arr, path, None)


def _read_npy(path: Path) -> Raster:
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InputError(f"{path}: cannot read as .npy ({exc})") from exc
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise InputError(f"{path}: expected a (bands, rows, cols) array, got shape {arr.shape}")
    return _finish(arr, path, None)


def atomic_path(target: str | Path) -> Path:
    """A fresh temporary path in ``target``'s folder (same file system, so ``os.replace`` is atomic)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    return Path(tmp)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    tmp = atomic_path(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def write_raster(path: str | Path, data: np.ndarray, *, transform: Any = None, crs: Any = None, nodata: float | None = None,
                 tags: Mapping[str, Any] | None = None, descriptions: tuple[str | None, ...] | None = None,
                 dtype: str = "float32", cog: bool = True) -> Path:
    """Write (bands, rows, cols) ``data`` as a (Cloud-Optimized when ``cog``) GeoTIFF, atomically.

    COG layout: 256 px internal tiles, DEFLATE, and overviews when the image is larger than one tile.
    """
    import rasterio
    from rasterio.enums import Resampling

    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    path = Path(path)
    tmp = atomic_path(path)
    tiled = cog and min(data.shape[1:]) >= 256
    profile = dict(driver="GTiff", height=data.shape[1], width=data.shape[2], count=data.shape[0], dtype=dtype,
                   transform=transform, crs=crs, nodata=nodata, compress="deflate")
    if tiled:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    try:
        with rasterio.open(tmp, "w", **profile) as ds:
            ds.write(data.astype(dtype, copy=False))
            if tags:
                ds.update_tags(**{k: str(v) for k, v in tags.items()})
            if descriptions:
                for i, d in enumerate(descriptions, start=1):
                    if d:
                        ds.set_band_description(i, d)
            if tiled:
                factors = [f for f in (2, 4, 8, 16) if min(data.shape[1:]) // f >= 256]
                if factors:
                    ds.build_overviews(factors, Resampling.average)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
