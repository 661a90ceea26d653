"""The one raster reader/writer of gapeval (rasterio), plus image formats without geometry (PNG/JPEG, .npy).

Arrays are float32 (bands, rows, cols) in the file's own units; scaling to reflectance is the caller's
explicit choice (``scale``). Invalid pixels (nodata, NaN/inf) come back as a boolean ``valid`` mask.
Writes are atomic: a temporary file in the same folder is renamed onto the target.

Also here, because every command needs them: pairing the files of folders by relative path and stem,
pixel grids and the half-pixel geometry check, band selection (via :mod:`lpips_sat.bands`), scale and
value-range checks, windowed sources that read (and, when asked, resample) tile by tile in bounded
memory, and a windowed atomic GeoTIFF writer.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lpips_sat.errors import InputError, MissingFileError

RASTER_SUFFIXES = (".tif", ".tiff")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARRAY_SUFFIXES = (".npy",)
SUFFIXES = RASTER_SUFFIXES + IMAGE_SUFFIXES + ARRAY_SUFFIXES

logger = logging.getLogger(__name__)


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


def _existing_suffix(path: Path) -> str:
    """The lower-case suffix of ``path`` after checking the file exists and has a supported type."""
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


#: Cap (MiB) on GDAL's raster block cache, set once when gapeval first opens a GeoTIFF unless the ``GDAL_CACHEMAX``
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


def _open_geotiff(path: Path) -> Any:
    """An open rasterio dataset (the caller closes it); an unreadable file raises InputError naming it."""
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    cap_gdal_cache()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioIOError as exc:
        raise InputError(f"{path}: cannot read as GeoTIFF ({exc}); the file may be corrupt or truncated") from exc


def _read_geotiff(path: Path, window: Any) -> Raster:
    from rasterio.errors import RasterioIOError

    with _open_geotiff(path) as ds:
        try:
            data = ds.read(window=window)
        except RasterioIOError as exc:
            raise InputError(f"{path}: cannot read pixels ({exc}); the file may be corrupt or truncated") from exc
        transform = ds.window_transform(window) if window is not None else ds.transform
        return _finish(data, path, ds.nodata, transform=transform, crs=ds.crs, tags=dict(ds.tags()), descriptions=tuple(ds.descriptions))


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
    return _finish(_load_npy(path), path, None)


def atomic_path(target: str | Path) -> Path:
    """A fresh temporary path in ``target``'s folder (same file system, so ``os.replace`` is atomic)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; outputs should get the usual permissions
    return Path(tmp)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    tmp = atomic_path(path)
    tmp.write_text(text)
    os.replace(tmp, path)


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
    import rasterio
    from rasterio.enums import Resampling

    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    path = Path(path)
    tmp = atomic_path(path)
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
    try:
        with rasterio.open(tmp, "w", **profile) as ds:
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
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# ---------------------------------------------------------------------------------------------------------------
# Geometry: grids, the half-pixel agreement check, and resampling onto another grid
# ---------------------------------------------------------------------------------------------------------------

#: CRS given to grids of files without georeferencing (PNG/JPEG/.npy, a GeoTIFF without CRS) so one resampling
#: path serves every input; such files are placed on the target's extent (see :func:`grid_of`).
PLACEHOLDER_CRS = "EPSG:3857"
#: Extra source pixels read around a window before resampling it, so every kernel (up to lanczos) is complete.
WARP_MARGIN = 4
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
        crs = self.crs if self.georeferenced else "none (not georeferenced)"
        return f"{self.width}x{self.height} px, pixel {rx:g}x{ry:g}, origin ({self.transform.c:.3f}, {self.transform.f:.3f}), CRS {crs}"

    def mismatch(self, other: Grid, tolerance: float = 0.5) -> str | None:
        """Why this grid is not ``other`` (same CRS, shape, and corners within ``tolerance`` of ``other``'s pixels),
        or ``None`` when they agree."""
        if self.georeferenced and other.georeferenced and not _same_crs(self.crs, other.crs):
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


def _same_crs(a: Any, b: Any) -> bool:
    from rasterio.crs import CRS

    if a is None or b is None:
        return a is None and b is None
    return CRS.from_user_input(a) == CRS.from_user_input(b)


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
        return self.crs is not None and self.transform is not None


def raster_info(path: str | Path) -> RasterInfo:
    """Header of a GeoTIFF, PNG/JPEG or ``.npy`` file: band count, shape, dtype, geometry, nodata, band scales.

    Raises:
        MissingFileError: no such file. InputError: corrupt/unreadable file or unsupported type.
    """
    path = Path(path)
    suffix = _existing_suffix(path)
    if suffix in RASTER_SUFFIXES:
        with _open_geotiff(path) as ds:
            georef = ds.crs is not None
            return RasterInfo(
                path,
                ds.count,
                ds.height,
                ds.width,
                ds.dtypes[0],
                ds.transform if georef else None,
                ds.crs if georef else None,
                ds.nodata,
                tuple(ds.descriptions),
                tuple(float(s) for s in ds.scales),
                tuple(float(o) for o in ds.offsets),
            )
    if suffix in IMAGE_SUFFIXES:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as img:
                bands, (width, height), mode = len(img.getbands()), img.size, img.mode
        except (UnidentifiedImageError, OSError) as exc:
            raise InputError(f"{path}: cannot read as an image ({exc})") from exc
        if mode not in ("L", "RGB", "RGBA", "LA", "P"):
            raise InputError(f"{path}: only 8-bit PNG/JPEG are supported, got image mode {mode}")
        return RasterInfo(path, bands, height, width, "uint8")
    arr = _load_npy(path, mmap=True)
    return RasterInfo(path, arr.shape[0], arr.shape[1], arr.shape[2], str(arr.dtype))


def _load_npy(path: Path, mmap: bool = False) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (ValueError, OSError) as exc:
        raise InputError(f"{path}: cannot read as .npy ({exc})") from exc
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise InputError(f"{path}: expected a (bands, rows, cols) array, got shape {arr.shape}")
    return arr


def grid_of(info: RasterInfo, target: Grid | None = None) -> Grid:
    """The grid ``info``'s pixels lie on.

    A georeferenced file keeps its own grid. A file without geometry (or any file when the target has none)
    is assumed to cover the target's extent: its pixel size is the target's scaled by the shape ratio. The
    target itself, if not georeferenced, gets a unit grid in :data:`PLACEHOLDER_CRS`.
    """
    from affine import Affine
    from rasterio.crs import CRS

    if info.georeferenced and (target is None or target.georeferenced):
        return Grid(info.transform, info.crs, info.height, info.width, True)
    if target is None:
        return Grid(Affine(1.0, 0.0, 0.0, 0.0, -1.0, 0.0), CRS.from_user_input(PLACEHOLDER_CRS), info.height, info.width, False)
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
    if lr.georeferenced and target.georeferenced and not _same_crs(lr.crs, target.crs):
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


# ---------------------------------------------------------------------------------------------------------------
# Pairing files of folders
# ---------------------------------------------------------------------------------------------------------------


def list_images(folder: str | Path, pattern: str | None = None) -> dict[str, Path]:
    """Images under ``folder`` (recursive) keyed by relative path without suffix (``sub/scene_01``).

    Only supported suffixes count; hidden files (temporary files of atomic writes) are ignored; ``pattern``
    is a glob matched against the relative path (e.g. ``*.tif`` or ``2023/*``).
    Raises:
        MissingFileError: no such folder. InputError: not a folder, or two files share a key (``a.tif`` + ``a.png``).
    """
    from fnmatch import fnmatch

    folder = Path(folder)
    if not folder.exists():
        raise MissingFileError(f"{folder}: folder does not exist")
    if not folder.is_dir():
        raise InputError(f"{folder}: expected a folder of images, got a file")
    out: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if not path.is_file() or path.suffix.lower() not in SUFFIXES or any(part.startswith(".") for part in rel.parts):
            continue
        if pattern and not (fnmatch(rel.as_posix(), pattern) or fnmatch(path.name, pattern)):
            continue
        key = rel.with_suffix("").as_posix()
        if key in out:
            raise InputError(f"{folder}: {out[key].name} and {path.name} have the same name stem {key!r}; keep one or use --glob")
        out[key] = path
    return out


@dataclass
class Pairing:
    """Files matched by key across folders. ``preds[set][key]`` and ``lr[key]`` only hold keys that have a target."""

    targets: dict[str, Path]
    preds: dict[str, dict[str, Path]]
    lr: dict[str, Path] | None
    unpaired: dict[str, list[str]] = field(default_factory=dict)

    @property
    def keys(self) -> list[str]:
        """Target keys that at least one prediction set covers, sorted."""
        return sorted(k for k in self.targets if any(k in files for files in self.preds.values()))

    @property
    def n_pairs(self) -> int:
        return sum(len(files) for files in self.preds.values())


def pair_folders(
    targets: str | Path,
    preds: Mapping[str, str | Path],
    lr: str | Path | None = None,
    *,
    pattern: str | None = None,
    allow_missing: bool = False,
) -> Pairing:
    """Match prediction folders (and an optional LR folder) to a target folder by relative path and stem.

    Raises:
        InputError: a folder holds no images, or files lack a partner and ``allow_missing`` is False
            (the message lists them); ``MissingFileError`` for missing folders.
    """
    hint = f" matching {pattern!r}" if pattern else ""
    tfiles = list_images(targets, pattern)
    if not tfiles:
        raise InputError(f"{targets}: no images ({', '.join(SUFFIXES)}){hint} in the target folder")
    pairing = Pairing(targets=tfiles, preds={}, lr=None)
    for name, folder in preds.items():
        pfiles = list_images(folder, pattern)
        if not pfiles:
            raise InputError(f"{folder}: no images ({', '.join(SUFFIXES)}){hint} in prediction folder {name!r}")
        pairing.preds[name] = {k: p for k, p in pfiles.items() if k in tfiles}
        missing = sorted(set(tfiles) - set(pfiles))
        extra = sorted(set(pfiles) - set(tfiles))
        if missing:
            pairing.unpaired[f"targets without prediction in {name}"] = missing
        if extra:
            pairing.unpaired[f"predictions in {name} without target"] = extra
        if not pairing.preds[name]:
            raise InputError(
                f"{folder}: none of its {len(pfiles)} files matches a target in {targets} (e.g. {extra[:3]} vs {sorted(tfiles)[:3]})"
            )
    if lr is not None:
        lfiles = list_images(lr, pattern)
        if not lfiles:
            raise InputError(f"{lr}: no images ({', '.join(SUFFIXES)}){hint} in the low-resolution folder")
        pairing.lr = {k: p for k, p in lfiles.items() if k in tfiles}
        missing = sorted(set(tfiles) - set(lfiles))
        if missing:
            pairing.unpaired["targets without LR input"] = missing
    if pairing.unpaired and not allow_missing:
        lines = [
            f"  {label} ({len(keys)}): {', '.join(keys[:10])}{' ...' if len(keys) > 10 else ''}" for label, keys in pairing.unpaired.items()
        ]
        raise InputError("Unpaired files (pass --allow-missing to score only the complete pairs):\n" + "\n".join(lines))
    return pairing


# ---------------------------------------------------------------------------------------------------------------
# Bands, scale and value ranges
# ---------------------------------------------------------------------------------------------------------------


def band_order(info: RasterInfo, declared: str | Sequence[str | None] | None, wanted: Sequence[str], flag: str) -> tuple[str | None, ...]:
    """Band names of ``info``'s file, in file order.

    From ``declared`` (a preset such as ``planetscope-4b`` or names) if given, else from the file's band
    descriptions when they are all band names, else assumed to be ``wanted`` when the band count matches
    (logged). ``flag`` is the option that declares it, quoted in errors.
    Raises:
        InputError: declared order of the wrong length, or unknown order with a different band count.
    """
    from lpips_sat.bands import resolve

    if declared is not None:
        try:
            order = resolve(declared)
        except InputError as exc:
            raise InputError(f"{flag} {declared!r}: {exc}") from exc
        if len(order) != info.count:
            raise InputError(
                f"{info.path}: {flag} declares {len(order)} bands ({', '.join(map(str, order))}) but the file has {info.count}"
            )
        return order
    if info.descriptions and all(info.descriptions):
        try:
            return resolve(list(info.descriptions))  # type: ignore[arg-type]
        except InputError:
            pass
    if info.count == len(wanted):
        logger.info("%s: no band names; assuming the %d bands are %s (declare with %s)", info.path, info.count, ",".join(wanted), flag)
        return tuple(wanted)
    raise InputError(
        f"{info.path}: has {info.count} bands without band names, but the metric needs {len(wanted)} "
        f"({', '.join(wanted)}); declare the file's band order with {flag} (a preset such as s2-l1c-13, planetscope-4b, planetscope-8b, naip, or names)"
    )


def select_bands(info: RasterInfo, declared: str | Sequence[str | None] | None, wanted: Sequence[str], flag: str) -> list[int]:
    """0-based band indices of ``info``'s file that give ``wanted`` in order (see :func:`band_order`)."""
    from lpips_sat.bands import band_indices

    order = band_order(info, declared, wanted, flag)
    try:
        return band_indices(order, wanted)
    except InputError as exc:
        raise InputError(f"{info.path}: {exc} (set {flag})") from exc


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


def check_reflectance(data: np.ndarray, valid: np.ndarray, path: Path, flag: str) -> float:
    """Fail on values no reflectance image has; return the largest valid value (for :func:`check_not_tiny`).

    Raises:
        InputError: valid values above ``MAX_REFLECTANCE`` (digital numbers not divided) or below -0.5.
    """
    from lpips_sat.metric import MAX_REFLECTANCE

    if not valid.any():
        return float("-inf")
    vals = data[:, valid]
    hi, lo = float(vals.max()), float(vals.min())
    if hi > MAX_REFLECTANCE:
        raise InputError(
            f"{path}: values up to {hi:g} are not reflectance (expected about 0..1.5); these look like digital numbers: "
            f"pass {flag} 10000 for Sentinel-2 / PlanetScope DN (or 255 for 8-bit images)"
        )
    if lo < -0.5:
        raise InputError(f"{path}: values down to {lo:g} are not reflectance; check {flag} and any offset (e.g. -1000 DN applied twice)")
    return hi


def check_not_tiny(max_value: float, path: Path, flag: str) -> None:
    """Fail when a whole image's largest valid value is below ``MIN_DN_MAX / 10000``: reflectance divided again."""
    from lpips_sat.metric import MIN_DN_MAX

    if np.isfinite(max_value) and max_value < MIN_DN_MAX / 10000.0:
        raise InputError(
            f"{path}: largest value is {max_value:g}, implausibly small for reflectance; the file probably holds "
            f"reflectance already and was divided by a DN scale (drop {flag}), or its nodata value is not declared"
        )


# ---------------------------------------------------------------------------------------------------------------
# Windows and windowed sources
# ---------------------------------------------------------------------------------------------------------------


def iter_windows(height: int, width: int, tile: int) -> Iterator[Any]:
    """Non-overlapping ``tile`` x ``tile`` windows covering the image row by row (edge windows are smaller)."""
    from rasterio.windows import Window

    if tile <= 0:
        raise InputError(f"tile size must be positive, got {tile}")
    for row in range(0, height, tile):
        for col in range(0, width, tile):
            yield Window(col, row, min(tile, width - col), min(tile, height - row))


def expand_window(window: Any, margin: int, height: int, width: int) -> Any:
    """``window`` grown by ``margin`` pixels on every side, clipped to the image."""
    from rasterio.windows import Window

    c0, r0 = max(0, int(window.col_off) - margin), max(0, int(window.row_off) - margin)
    c1 = min(width, int(window.col_off + window.width) + margin)
    r1 = min(height, int(window.row_off + window.height) + margin)
    return Window(c0, r0, c1 - c0, r1 - r0)


def fixed_size_window(window: Any, size: int, height: int, width: int) -> Any:
    """A ``size`` x ``size`` window (or the whole image side if smaller) holding ``window``, moved inward at edges."""
    from rasterio.windows import Window

    h, w = min(size, height), min(size, width)
    r0 = min(int(window.row_off), height - h)
    c0 = min(int(window.col_off), width - w)
    return Window(c0, r0, w, h)


def window_slices(inner: Any, outer: Any) -> tuple[slice, slice]:
    """Row/column slices that cut ``inner`` out of an array read for ``outer`` (``inner`` lies in ``outer``)."""
    r0, c0 = int(inner.row_off - outer.row_off), int(inner.col_off - outer.col_off)
    return slice(r0, r0 + int(inner.height)), slice(c0, c0 + int(inner.width))


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

            self._ds = _open_geotiff(self.path)
            flags = self._ds.mask_flag_enums[self.bands[0]]
            self._use_mask = MaskFlags.per_dataset in flags or MaskFlags.alpha in flags
        elif suffix in ARRAY_SUFFIXES:
            self._arr = _load_npy(self.path, mmap=True)
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
                rs, cs = window_slices(window, _full_window(arr.shape[1], arr.shape[2]))
                arr = arr[:, rs, cs]
            raw, extra = np.asarray(arr[self.bands]), None
        valid = valid_mask(raw, self.info.nodata)
        if extra is not None:
            valid &= extra
        data = raw.astype(np.float32) * self.gain + self.offset
        data[:, ~valid] = np.nan
        return data, valid

    def read_on(self, dst: Grid, window: Any, resampling: str = "bilinear") -> tuple[np.ndarray, np.ndarray]:
        """Selected bands resampled onto ``window`` of another grid ``dst`` (``resampling``: a GDAL method name).

        Only the source pixels under the window (plus :data:`WARP_MARGIN`) are read. A resampled pixel is valid
        when it is finite and its resampled validity mask is 1 (every contributing source pixel valid).
        """
        from rasterio.enums import Resampling
        from rasterio.warp import reproject, transform_bounds
        from rasterio.windows import from_bounds

        h, w = int(window.height), int(window.width)
        dst_transform = dst.window_transform(window)
        out = np.full((len(self.bands), h, w), np.nan, np.float32)
        cover = np.zeros((1, h, w), np.float32)
        left, bottom, right, top = Grid(dst_transform, dst.crs, h, w).bounds
        if not _same_crs(self.grid.crs, dst.crs):
            left, bottom, right, top = transform_bounds(dst.crs, self.grid.crs, left, bottom, right, top, densify_pts=21)
        src_win = from_bounds(left, bottom, right, top, transform=self.grid.transform)
        r0 = max(0, int(np.floor(min(src_win.row_off, src_win.row_off + src_win.height))) - WARP_MARGIN)
        c0 = max(0, int(np.floor(min(src_win.col_off, src_win.col_off + src_win.width))) - WARP_MARGIN)
        r1 = min(self.grid.height, int(np.ceil(max(src_win.row_off, src_win.row_off + src_win.height))) + WARP_MARGIN)
        c1 = min(self.grid.width, int(np.ceil(max(src_win.col_off, src_win.col_off + src_win.width))) + WARP_MARGIN)
        if r1 <= r0 or c1 <= c0:
            return out, np.zeros((h, w), bool)
        from rasterio.windows import Window

        src_window = Window(c0, r0, c1 - c0, r1 - r0)
        data, valid = self.read(src_window)
        src_transform = self.grid.window_transform(src_window)
        method = getattr(Resampling, resampling)
        common = dict(src_transform=src_transform, src_crs=self.grid.crs, dst_transform=dst_transform, dst_crs=dst.crs, resampling=method)
        reproject(data, out, src_nodata=np.nan, dst_nodata=np.nan, **common)
        reproject(valid[None].astype(np.float32), cover, **common)
        ok = (cover[0] >= 0.999) & np.isfinite(out).all(axis=0)
        out[:, ~ok] = np.nan
        return out, ok


def _full_window(height: int, width: int) -> Any:
    from rasterio.windows import Window

    return Window(0, 0, width, height)


class RasterWriter:
    """Write a GeoTIFF window by window, atomically (a temporary file renamed on success, removed on error).

    Example:
        >>> import tempfile, numpy as np
        >>> from affine import Affine
        >>> g = Grid(Affine(10, 0, 0, 0, -10, 0), "EPSG:32618", 4, 4)
        >>> path = Path(tempfile.mkdtemp()) / "m.tif"
        >>> with RasterWriter(path, g) as w:
        ...     w.write(np.ones((1, 4, 4), np.float32), _full_window(4, 4))
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


def append_line(path: str | Path, line: str) -> None:
    """Append one text line to ``path`` with a single ``write`` + ``fsync`` (a crash leaves at most one
    partial last line, which :func:`read_lines_complete` drops)."""
    data = (line.rstrip("\n") + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_lines_complete(path: str | Path) -> list[str]:
    """Lines of ``path`` without a trailing partial line (rewritten atomically when one was dropped)."""
    text = Path(path).read_text()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
        logger.warning("%s ended with a partial line (interrupted write); dropped it", path)
        write_text_atomic(path, text)
    return text.splitlines()
