"""Reading and writing image files: GeoTIFF (rasterio, from the ``[eval]`` extra), PNG/JPEG (Pillow) and ``.npy``.

Arrays are float32 (bands, rows, cols) in the file's own units; scaling to reflectance is the caller's
explicit choice (``scale``, or the file's band scale/offset metadata via :func:`band_gain_offset`). Invalid pixels
(nodata, NaN/inf) come back as a boolean ``valid`` mask. Writes are atomic (:mod:`lpips_sat.atomic`).

This is the one file reader of the project: ``lpips-sat compare``, calibration and every ``gapeval`` command
use it. rasterio and Pillow are optional; without them reading such a file raises :class:`MissingExtraError`
naming the extra to install.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from lpips_sat.atomic import atomic_file
from lpips_sat.errors import InputError, MissingExtraError, MissingFileError

RASTER_SUFFIXES = (".tif", ".tiff")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARRAY_SUFFIXES = (".npy",)
SUFFIXES = RASTER_SUFFIXES + IMAGE_SUFFIXES + ARRAY_SUFFIXES

#: How to install the optional readers (rasterio for GeoTIFF, Pillow for PNG/JPEG).
EVAL_HINT = 'pip install "lpips-sat[eval]"'

logger = logging.getLogger(__name__)


def require(module: str, what: str) -> ModuleType:
    """Import an optional dependency, or raise :class:`MissingExtraError` saying that ``what`` needs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(f"{what} needs {module.split('.')[0]}; install it with {EVAL_HINT}") from exc


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
    def count(self) -> int:
        """Number of bands (as :attr:`RasterInfo.count`)."""
        return int(self.data.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.data.shape[1]), int(self.data.shape[2])

    @property
    def valid_fraction(self) -> float:
        return float(self.valid.mean()) if self.valid.size else 0.0


#: URL schemes mapped onto GDAL virtual file systems by :func:`gdal_path`.
VSI_SCHEMES = {"http://": "/vsicurl/", "https://": "/vsicurl/", "s3://": "/vsis3/", "gs://": "/vsigs/", "az://": "/vsiaz/"}


def is_virtual(path: str | Path) -> bool:
    """True for a GDAL virtual file system path (``/vsicurl/...``, ``/vsis3/...``): read by GDAL, never by Python."""
    return str(path).startswith("/vsi")


def gdal_path(text: str) -> str:
    """``https://host/a.tif`` -> ``/vsicurl/https://host/a.tif``, ``s3://bucket/a.tif`` -> ``/vsis3/bucket/a.tif``
    (GDAL's virtual file systems, https://gdal.org/user/virtual_file_systems.html); anything else unchanged.

    Kept in a ``Path``, ``/vsicurl/https://host`` becomes ``/vsicurl/https:/host`` (GDAL reads it the same); write
    paths out with :func:`path_text`, which puts the slash back.
    """
    for scheme, prefix in VSI_SCHEMES.items():
        if text.startswith(scheme):
            return prefix + (text if prefix == "/vsicurl/" else text[len(scheme):])
    return text


#: ``/vsicurl/https:/host`` as a ``Path`` leaves it: the URL scheme followed by one slash only.
_COLLAPSED_URL = re.compile(r"^(/vsicurl(?:_streaming)?/[A-Za-z][A-Za-z0-9+.-]*:)/(?!/)")


def path_text(path: str | Path) -> str:
    """A path as text for tables, JSON and messages: ``str(path)``, except that a ``/vsicurl/`` URL gets back the
    ``//`` after its scheme that ``pathlib`` collapsed (``/vsicurl/https:/host/a.tif`` -> ``/vsicurl/https://host/a.tif``),
    so a remote input is written exactly as it was given."""
    text = str(path)
    return _COLLAPSED_URL.sub(r"\1//", text) if is_virtual(text) else text


def _existing_suffix(path: Path) -> str:
    """The lower-case suffix of ``path`` after checking the file exists and has a supported type (files on GDAL's
    virtual file systems must be GeoTIFF/COG; whether they exist shows when GDAL opens them)."""
    if is_virtual(path):
        if path.suffix.lower() not in RASTER_SUFFIXES:
            raise InputError(f"{path}: only GeoTIFF/COG ({', '.join(RASTER_SUFFIXES)}) can be read through GDAL's virtual file systems")
        return path.suffix.lower()
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not an image file")
    if not path.is_file():
        raise MissingFileError(f"{path}: file does not exist")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise InputError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(SUFFIXES)}")
    return suffix


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
    suffix = _existing_suffix(path)
    if suffix in RASTER_SUFFIXES:
        raster = _read_geotiff(path, window)
    elif suffix in IMAGE_SUFFIXES:
        raster = _read_image(path)
    else:
        raster = _read_npy(path)
    if scale is not None:
        if scale <= 0:
            raise InputError(f"scale must be positive, got {scale}")
        raster.data = raster.data / np.float32(scale)
    return raster


def valid_mask(data: np.ndarray, nodata: float | None) -> np.ndarray:
    """(rows, cols) True where every band is finite and not all bands equal ``nodata``."""
    valid = np.isfinite(data).all(axis=0)
    if nodata is not None and np.isfinite(nodata):
        nd = data.dtype.type(nodata) if np.issubdtype(data.dtype, np.floating) else nodata
        valid &= ~(data == nd).all(axis=0)
    return valid


def _finish(data: np.ndarray, path: Path, nodata: float | None, **kw: Any) -> Raster:
    data = data.astype(np.float32, copy=False)
    return Raster(data=data, valid=valid_mask(data, nodata), path=path, nodata=nodata, **kw)


#: Cap (MiB) on GDAL's raster block cache, set once when the first GeoTIFF is opened unless the ``GDAL_CACHEMAX``
#: environment variable is set. Windows are read once (a halo re-reads part of the previous block row), so a few block
#: rows suffice, whereas GDAL's default (5 % of RAM) keeps every block read so far: it grew the peak memory of scoring
#: one 4096 x 4096 4-band pair by ~250 MiB and would grow it by ~1 GiB at 8192 x 8192 (docs/performance.md).
GDAL_CACHE_MB = 128
_gdal_cache_capped = False


def cap_gdal_cache(mb: int = GDAL_CACHE_MB) -> None:
    """Lower GDAL's block-cache limit to ``mb`` MiB for this process (never raises it; no-op if ``GDAL_CACHEMAX`` is set)."""
    global _gdal_cache_capped
    if _gdal_cache_capped or "GDAL_CACHEMAX" in os.environ:
        return
    from rasterio.env import get_gdal_config, set_gdal_config

    limit = mb * 2**20
    try:
        current: int | None = int(get_gdal_config("GDAL_CACHEMAX"))
        current = current * 2**20 if current < 100_000 else current  # GDAL reads values below 100000 as MiB
    except (TypeError, ValueError):  # unset or a percentage
        current = None
    if current is None or current > limit:
        set_gdal_config("GDAL_CACHEMAX", limit)
        logger.debug("GDAL block cache capped at %d MiB (was %s bytes)", mb, current)
    _gdal_cache_capped = True



def open_geotiff(path: Path) -> Any:
    """An open rasterio dataset (the caller closes it); an unreadable file raises InputError naming it."""
    import warnings

    rasterio = require("rasterio", f"{path}: reading a GeoTIFF")
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    cap_gdal_cache()
    # on a virtual file system, no listing of the folder and no probes for side-car files (.aux.xml, .ovr, .msk):
    # each would be one more HTTP request (GDAL's advice for COGs); the user's own setting wins
    remote = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"} if is_virtual(path) and "GDAL_DISABLE_READDIR_ON_OPEN" not in os.environ else {}
    try:
        with warnings.catch_warnings(), rasterio.Env(**remote):
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioIOError as exc:
        if is_virtual(path):
            raise MissingFileError(f"{path_text(path)}: GDAL cannot open it ({exc}); check the URL/bucket, the network and credentials") from exc
        raise InputError(f"{path}: cannot read as GeoTIFF ({exc}); the file may be corrupt or truncated") from exc


def _read_geotiff(path: Path, window: Any) -> Raster:
    with open_geotiff(path) as ds:
        from rasterio.errors import RasterioIOError

        try:
            data = ds.read(window=window)
        except RasterioIOError as exc:
            raise InputError(f"{path}: cannot read pixels ({exc}); the file may be corrupt or truncated") from exc
        transform = ds.window_transform(window) if window is not None else ds.transform
        return _finish(data, path, ds.nodata, transform=transform, crs=ds.crs, tags=dict(ds.tags()), descriptions=tuple(ds.descriptions))


def _open_image(path: Path) -> Any:
    """An open Pillow image (the caller closes it); an unreadable file raises InputError naming it."""
    pil = require("PIL.Image", f"{path}: reading a PNG/JPEG image")
    try:
        return pil.open(path)
    except (pil.UnidentifiedImageError, OSError) as exc:
        raise InputError(f"{path}: cannot read as an image ({exc})") from exc


def _read_image(path: Path) -> Raster:
    with _open_image(path) as img:
        try:
            arr = np.asarray(img)
        except OSError as exc:
            raise InputError(f"{path}: cannot read as an image ({exc})") from exc
    if arr.dtype != np.uint8:
        raise InputError(f"{path}: only 8-bit PNG/JPEG are supported, got {arr.dtype}")
    arr = arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)
    return _finish(arr, path, None)


def _read_npy(path: Path) -> Raster:
    return _finish(load_npy(path), path, None)


def load_npy(path: Path, mmap: bool = False) -> np.ndarray:
    """A (bands, rows, cols) array from a ``.npy`` file (2-D arrays get one band); never unpickles."""
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (ValueError, OSError) as exc:
        raise InputError(f"{path}: cannot read as .npy ({exc})") from exc
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise InputError(f"{path}: expected a (bands, rows, cols) array, got shape {arr.shape}")
    return arr


@dataclass(frozen=True)
class RasterInfo:
    """What a file holds, read from its header only (no pixels)."""

    path: Path
    count: int
    height: int
    width: int
    dtype: str
    transform: Any = None
    crs: Any = None
    nodata: float | None = None
    descriptions: tuple[str | None, ...] = ()
    scales: tuple[float, ...] = ()
    offsets: tuple[float, ...] = ()

    @property
    def georeferenced(self) -> bool:
        """Both a CRS and a geotransform (a file may have a geotransform without CRS: ``transform`` is then set)."""
        return self.crs is not None and self.transform is not None


def raster_info(path: str | Path) -> RasterInfo:
    """Header of a GeoTIFF, PNG/JPEG or ``.npy`` file: band count, shape, dtype, geometry, nodata, band scales.

    Raises:
        MissingFileError: no such file. InputError: corrupt/unreadable file or unsupported type.
    """
    path = Path(path)
    suffix = _existing_suffix(path)
    if suffix in RASTER_SUFFIXES:
        with open_geotiff(path) as ds:
            has_transform = ds.crs is not None or not ds.transform.is_identity  # GDAL reports identity when there is none
            return RasterInfo(
                path,
                ds.count,
                ds.height,
                ds.width,
                ds.dtypes[0],
                ds.transform if has_transform else None,
                ds.crs,
                ds.nodata,
                tuple(ds.descriptions),
                tuple(float(s) for s in ds.scales),
                tuple(float(o) for o in ds.offsets),
            )
    if suffix in IMAGE_SUFFIXES:
        with _open_image(path) as img:
            bands, (width, height), mode = len(img.getbands()), img.size, img.mode
        if mode not in ("L", "RGB", "RGBA", "LA", "P"):
            raise InputError(f"{path}: only 8-bit PNG/JPEG are supported, got image mode {mode}")
        return RasterInfo(path, bands, height, width, "uint8")
    arr = load_npy(path, mmap=True)
    return RasterInfo(path, arr.shape[0], arr.shape[1], arr.shape[2], str(arr.dtype))


def band_gain_offset(info: RasterInfo, bands: Sequence[int], scale: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-band ``(gain, offset)`` so that ``value = raw * gain + offset`` (reflectance for Sentinel-2).

    An explicit ``scale`` (raw / scale, e.g. 10000 for DN) wins; otherwise the file's own band scale/offset
    metadata (GDAL ``scale_factor``/``add_offset``, 1 and 0 when absent) is used.
    """
    n = len(bands)
    if scale is not None:
        if not np.isfinite(scale) or scale <= 0:
            raise InputError(f"scale must be a positive number, got {scale}")
        file_scales = [info.scales[i] for i in bands] if info.scales else [1.0] * n
        if any(s != 1.0 for s in file_scales):
            logger.warning("%s declares band scales %s; using the explicit scale 1/%g instead", info.path, file_scales, scale)
        return np.full(n, 1.0 / scale, np.float32), np.zeros(n, np.float32)
    gain = np.array([info.scales[i] if info.scales else 1.0 for i in bands], np.float32)
    offset = np.array([info.offsets[i] if info.offsets else 0.0 for i in bands], np.float32)
    return gain, offset


def write_npy(path: str | Path, data: np.ndarray) -> Path:
    """Write ``data`` as float32 ``.npy``, atomically."""
    path = Path(path)
    with atomic_file(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.asarray(data, np.float32))
    return path


def write_raster(
    path: str | Path,
    data: np.ndarray,
    *,
    transform: Any = None,
    crs: Any = None,
    nodata: float | None = None,
    tags: Mapping[str, Any] | None = None,
    descriptions: tuple[str | None, ...] | None = None,
    dtype: str = "float32",
    cog: bool = True,
    scales: Sequence[float] | None = None,
    offsets: Sequence[float] | None = None,
) -> Path:
    """Write (bands, rows, cols) ``data`` as a (Cloud-Optimized when ``cog``) GeoTIFF, atomically.

    COG layout: 256 px internal tiles, DEFLATE, and overviews when the image is larger than one tile.
    ``scales``/``offsets``: per-band GDAL scale/offset metadata (``value = raw * scale + offset``), e.g.
    ``1e-4`` for Sentinel-2 DN, which readers here apply when no explicit scale is given.
    """
    rasterio = require("rasterio", f"{path}: writing a GeoTIFF")
    from rasterio.enums import Resampling

    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    path = Path(path)
    tiled = cog and min(data.shape[1:]) >= 256
    profile = dict(
        driver="GTiff",
        height=data.shape[1],
        width=data.shape[2],
        count=data.shape[0],
        dtype=dtype,
        transform=transform,
        crs=crs,
        nodata=nodata,
        compress="deflate",
    )
    if tiled:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    if np.issubdtype(np.dtype(dtype), np.integer):
        profile.update(predictor=2)
    with atomic_file(path) as tmp, rasterio.open(tmp, "w", **profile) as ds:
        ds.write(data.astype(dtype, copy=False))
        if scales is not None:
            ds.scales = tuple(float(v) for v in scales)
        if offsets is not None:
            ds.offsets = tuple(float(v) for v in offsets)
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
    return path
