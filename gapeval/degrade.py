"""Synthetic low-resolution inputs from high-resolution imagery: sensor degradation profiles and band transforms.

Data flow of :func:`degrade_array` (each step switchable in :class:`DegradeConfig`):

    HR reflectance -> spectral-response adjustment (a linear band transform) -> per-band Gaussian MTF blur
    -> area resampling to the target ground sampling distance (GSD, any ratio, e.g. 3 m -> 10 m)
    -> per-band Gaussian noise at a given SNR -> uint16 quantisation (DN = reflectance x 10000 + offset)

Profiles:
    ``bicubic``: the naive synthetic baseline of SR papers: GDAL's cubic resampling straight to the target grid
        (its kernel is widened by the ratio when downsampling, i.e. antialiased like MATLAB ``imresize``); no MTF,
        no noise, float32 reflectance out.
    ``s2``: a Sentinel-2-like sensor: Gaussian MTF per band, area averaging over each target pixel (the detector
        footprint), noise, uint16 DN out.

MTF model (the pansharpening "MTF-matched Gaussian" of Aiazzi et al. 2006 / Vivone et al. 2015, in metres): a
Gaussian PSF of std ``sigma`` has the transfer function ``G(f) = exp(-2 pi^2 sigma^2 f^2)``. The published MTF of a
band is the *system* MTF at the Nyquist frequency ``f_N = 1 / (2 GSD)`` of its grid, which includes the detector
footprint. Area averaging over a target pixel already contributes the box transfer function
``|sinc(f GSD)|`` (``2/pi = 0.637`` at ``f_N``), so with ``mtf_includes_footprint=True`` (default) the Gaussian
supplies the rest: ``G(f_N) = MTF_N / (2/pi)``, i.e. ``sigma = GSD sqrt(-2 ln G(f_N)) / pi``. With
``mtf_includes_footprint=False`` the Gaussian alone equals ``MTF_N`` (the Wald-protocol convention of pansharpening).
The MTF of the HR imagery itself is ignored (as in every such simulation). Values used: see :data:`S2_MTF_NYQUIST`
and ``docs/degradation.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from gapeval.align import BandTransform, fit_band_transform, histogram_match  # noqa: F401 - re-exported: their home is gapeval.align
from gapeval.folders import list_images
from gapeval.grids import Grid
from lpips_sat.atomic import make_folder, remove_stale_temporaries
from lpips_sat.bands import canonical, resolve
from lpips_sat.errors import InputError, MissingFileError
from lpips_sat.options import finite_float, nonnegative_int, number, positive_float
from lpips_sat.raster import SUFFIXES, read_raster, write_raster

log = logging.getLogger(__name__)

#: System MTF at the Nyquist frequency of each band's own grid, used by the ``s2`` profile.
#: ASSUMPTION, not a measured value: the Sentinel-2 MSI image-quality requirement is usually quoted as an MTF at
#: Nyquist between 0.15 and 0.30 for the 10 m and 20 m bands (ESA Sentinel-2 mission requirements, as reproduced
#: in ESA/Copernicus documentation), and the monthly L1C Data Quality Reports of the S2 Mission Performance Centre
#: publish the in-flight per-band measurements. Neither document could be read on the machines this toolkit was
#: written on, so every band gets 0.25, inside the quoted range. Override per band (``DegradeConfig(mtf={...})`` or
#: ``--mtf B04=0.23,B08=0.21``) with values taken from the Data Quality Report of your acquisition period.
S2_MTF_NYQUIST: dict[str, float] = {"default": 0.25, **{b: 0.25 for b in ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")}}

#: Signal-to-noise ratio per band used by the ``s2`` profile, defined at ``snr_reference`` (default: each band's
#: image mean). ASSUMPTION: 100 for every band, the order of magnitude of the Sentinel-2 radiometric requirements
#: (SNR of roughly 50-170 at the reference radiances, band dependent); not a measured value. Override per band.
S2_SNR: dict[str, float] = {"default": 100.0}

#: Resampling methods accepted by :class:`DegradeConfig` (rasterio ``Resampling`` names).
RESAMPLING = ("average", "cubic", "bilinear", "lanczos", "nearest")
#: Largest uint16 value; quantised DN are clipped to [1, 65535] when 0 marks nodata, else [0, 65535].
UINT16_MAX = 65535
#: Tag holding the JSON configuration in every written LR file (used by ``--resume``-style skipping).
CONFIG_TAG = "GAPEVAL_DEGRADE"


# ---------------------------------------------------------------------------------------------- MTF maths
def gaussian_mtf(freq: np.ndarray | float, sigma: float) -> np.ndarray | float:
    """Transfer function ``exp(-2 pi^2 sigma^2 f^2)`` of a Gaussian PSF (``f`` and ``sigma`` in reciprocal units)."""
    return np.exp(-2.0 * np.pi ** 2 * sigma ** 2 * np.asarray(freq, dtype=float) ** 2)


def box_mtf(freq: np.ndarray | float, width: float) -> np.ndarray | float:
    """Transfer function ``|sinc(f w)|`` of a box (detector footprint / area average) of width ``w``."""
    return np.abs(np.sinc(np.asarray(freq, dtype=float) * width))


def gaussian_sigma_for_mtf(mtf_nyquist: float, gsd: float, *, includes_footprint: bool = True) -> float:
    """Std (same unit as ``gsd``) of the Gaussian PSF that gives the system MTF ``mtf_nyquist`` at ``f_N = 1 / (2 gsd)``.

    With ``includes_footprint`` the box footprint of width ``gsd`` (transfer ``2/pi`` at ``f_N``) is part of the
    system, so the Gaussian must reach ``mtf_nyquist / (2/pi)`` there; this needs ``mtf_nyquist < 2/pi``.

    Example:
        >>> round(gaussian_sigma_for_mtf(0.25, 10.0), 2), round(gaussian_sigma_for_mtf(0.25, 10.0, includes_footprint=False), 2)
        (4.35, 5.3)
    """
    if not 0.0 < mtf_nyquist < 1.0:
        raise InputError(f"MTF at Nyquist must lie in (0, 1), got {mtf_nyquist}")
    target = mtf_nyquist / float(box_mtf(0.5, 1.0)) if includes_footprint else mtf_nyquist
    if target >= 1.0:
        raise InputError(f"MTF at Nyquist {mtf_nyquist} is not reachable with a box footprint (whose MTF alone is 2/pi = 0.637); "
                         "lower it or set mtf_includes_footprint=False")
    return gsd * math.sqrt(-2.0 * math.log(target)) / math.pi


def gaussian_kernel1d(sigma_px: float, radius: int | None = None) -> np.ndarray:
    """Normalised sampled Gaussian (sum 1) of std ``sigma_px`` pixels, radius ``ceil(4 sigma)`` by default."""
    if sigma_px <= 0:
        return np.ones(1)
    radius = int(math.ceil(4.0 * sigma_px)) if radius is None else radius
    x = np.arange(-radius, radius + 1, dtype=float)
    k = np.exp(-0.5 * (x / sigma_px) ** 2)
    return k / k.sum()


def kernel_transfer(kernel: np.ndarray, freq: np.ndarray | float) -> np.ndarray | float:
    """Magnitude of the discrete-time Fourier transform of a centred 1-D kernel at ``freq`` cycles per sample."""
    kernel = np.asarray(kernel, dtype=float)
    n = np.arange(kernel.size) - (kernel.size - 1) / 2
    f = np.atleast_1d(np.asarray(freq, dtype=float))
    val = np.abs(np.exp(-2j * np.pi * np.outer(f, n)) @ kernel)
    return val if np.ndim(freq) else float(val[0])


# ---------------------------------------------------------------------------------------------- configuration
@dataclass
class DegradeConfig:
    """Every parameter of a degradation; profiles are instances, any field can be overridden.

    Attributes:
        profile: name recorded in outputs.
        scale: target GSD / source GSD (e.g. 4, or 10/3); used when ``gsd`` is ``None``.
        gsd: target ground sampling distance in CRS units (metres); needs a georeferenced input.
        resampling: rasterio resampling onto the target grid (``average`` = area weighted, exact for non-integer ratios).
        mtf: system MTF at the target Nyquist frequency, one value or per band (``{"B04": 0.23, "default": 0.25}``);
            ``None`` disables the blur.
        mtf_includes_footprint: the MTF value includes the area-average footprint (see module docstring).
        snr: signal-to-noise ratio, one value or per band; ``None`` disables noise.
        snr_reference: reflectance at which ``snr`` is defined (noise std = reference / snr); ``None``: each band's
            image mean.
        band_transform: spectral-response adjustment applied to the HR reflectance first (``None``: none).
        quantize: write uint16 DN = round(reflectance x dn_scale + dn_offset); else float32 reflectance.
        dn_scale, dn_offset: quantisation (Sentinel-2 L1C/L2A: 10000 and 0, or +1000 from baseline 04.00 on).
        seed: noise seed; each file's noise stream is derived from (seed, file name), independent of processing order.
    """

    profile: str = "custom"
    scale: float | None = 4.0
    gsd: float | None = None
    resampling: str = "average"
    mtf: float | Mapping[str, float] | None = None
    mtf_includes_footprint: bool = True
    snr: float | Mapping[str, float] | None = None
    snr_reference: float | None = None
    band_transform: BandTransform | None = None
    quantize: bool = False
    dn_scale: float = 10000.0
    dn_offset: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.resampling not in RESAMPLING:
            raise InputError(f"resampling must be one of {RESAMPLING}, got {self.resampling!r}")
        if self.gsd is None and self.scale is None:
            raise InputError("Give a target GSD (gsd=...) or a scale factor (scale=...)")
        if self.gsd is not None and self.gsd <= 0 or self.scale is not None and self.scale <= 0:
            raise InputError(f"gsd and scale must be positive, got gsd={self.gsd}, scale={self.scale}")
        if self.snr_reference is not None and self.snr_reference <= 0:
            raise InputError(f"snr_reference must be positive reflectance, got {self.snr_reference}")

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["mtf"] = dict(self.mtf) if isinstance(self.mtf, Mapping) else self.mtf
        d["snr"] = dict(self.snr) if isinstance(self.snr, Mapping) else self.snr
        d["band_transform"] = self.band_transform.to_dict() if self.band_transform else None
        return d


PROFILES: dict[str, DegradeConfig] = {
    "bicubic": DegradeConfig(profile="bicubic", resampling="cubic"),
    "s2": DegradeConfig(profile="s2", resampling="average", mtf=dict(S2_MTF_NYQUIST), snr=dict(S2_SNR), quantize=True),
}


def get_profile(name: str, **overrides: Any) -> DegradeConfig:
    """A copy of profile ``name`` with ``overrides`` applied (e.g. ``get_profile("s2", gsd=10, snr=None)``)."""
    if name not in PROFILES:
        raise InputError(f"Unknown degradation profile {name!r}; use one of {sorted(PROFILES)}")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(DegradeConfig)}
    if unknown:
        raise InputError(f"Unknown degradation parameter(s) {sorted(unknown)}")
    return dataclasses.replace(PROFILES[name], **overrides)


def per_band(value: float | Mapping[str, float] | None, bands: Sequence[str | None] | None, n: int, what: str) -> list[float] | None:
    """Expand a scalar or per-band mapping to one value per band (``default`` key fills unnamed/unlisted bands)."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        return [float(value)] * n
    table = {("default" if k == "default" else canonical(k)): float(v) for k, v in value.items()}
    out = []
    for i in range(n):
        band = bands[i] if bands is not None else None
        if band is not None and band in table:
            out.append(table[band])
        elif "default" in table:
            out.append(table["default"])
        else:
            raise InputError(f"No {what} value for band {band or i} (bands {list(bands) if bands else 'unknown'}); add it or a 'default'")
    return out


# ---------------------------------------------------------------------------------------------- geometry
def target_grid(transform: Any, shape: tuple[int, int], *, gsd: float | None = None, scale: float | None = None, crs: Any = None) -> Grid:
    """The coarser grid with the same upper-left corner and pixel size ``gsd`` (or ``scale`` x the source pixel).

    Only whole target pixels inside the source extent are kept: ``cols = floor(W * px / gsd)`` (likewise rows), so a
    3 m, 100 px image becomes 30 px at 10 m, covering 300 of its 300 m; 101 px would also give 30 px.
    """
    from affine import Affine

    if transform.b != 0 or transform.d != 0:
        raise InputError(f"Only north-up grids are supported (rotation/shear terms {transform.b}, {transform.d}); warp the input first")
    px, py = abs(transform.a), abs(transform.e)
    if gsd is not None:
        gx, gy = float(gsd), float(gsd)
    elif scale is not None:
        gx, gy = px * scale, py * scale
    else:
        raise InputError("target_grid needs gsd or scale")
    if gx < px or gy < py:
        raise InputError(f"Target GSD {gx:g} x {gy:g} is finer than the source pixel {px:g} x {py:g}; degrade only coarsens")
    rows, cols = int(math.floor(shape[0] * py / gy + 1e-9)), int(math.floor(shape[1] * px / gx + 1e-9))
    if rows < 1 or cols < 1:
        raise InputError(f"A {shape[0]}x{shape[1]} px image at {px:g} m is smaller than one {gx:g} m target pixel")
    new = Affine(math.copysign(gx, transform.a), 0.0, transform.c, 0.0, math.copysign(gy, transform.e), transform.f)
    return Grid(new, crs, rows, cols, crs is not None)


def resample(data: np.ndarray, src_transform: Any, dst: Grid, *, method: str = "average", crs: Any = None) -> np.ndarray:
    """Resample (C, H, W) float data onto ``dst`` with rasterio/GDAL (NaN = nodata, ignored by ``average``).

    GDAL's ``average`` weights each source pixel by the fraction of its area inside the target pixel, so
    non-integer ratios are exact; its ``cubic``/``lanczos`` widen the kernel by the ratio when downsampling.
    Source and target share one CRS, so nothing is reprojected: both grids are moved into a local metric CRS with
    the source corner at (10000, 10000) (GDAL treats a grid whose corner is exactly (0, 0) as ungeoreferenced and
    geographic CRSs have domain limits; the relative geometry is all that matters here). ``crs`` is unused.
    """
    from affine import Affine
    from rasterio.crs import CRS
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    local = CRS.from_wkt('LOCAL_CS["gapeval pixel grid",UNIT["metre",1]]')
    shift = Affine.translation(1.0e4 - src_transform.c, 1.0e4 - src_transform.f)
    out = np.full((data.shape[0], dst.height, dst.width), np.nan, dtype=np.float32)
    for b in range(data.shape[0]):
        reproject(np.ascontiguousarray(data[b], dtype=np.float32), out[b], src_transform=shift @ src_transform, src_crs=local, src_nodata=np.nan,
                  dst_transform=shift @ dst.transform, dst_crs=local, dst_nodata=np.nan, resampling=getattr(Resampling, method))
    return out


def blur(data: np.ndarray, sigma_px: Sequence[tuple[float, float]]) -> np.ndarray:
    """Separable Gaussian blur per band, ``sigma_px[b] = (sigma_rows, sigma_cols)`` in source pixels.

    Edges are mirrored; NaN pixels are excluded by normalised convolution and stay NaN.
    """
    from scipy.ndimage import convolve1d

    out = np.empty_like(data, dtype=np.float32)
    for b in range(data.shape[0]):
        band = data[b].astype(np.float64)
        bad = ~np.isfinite(band)
        work, weight = np.where(bad, 0.0, band), (~bad).astype(np.float64)
        for axis, s in ((0, sigma_px[b][0]), (1, sigma_px[b][1])):
            k = gaussian_kernel1d(s)
            work = convolve1d(work, k, axis=axis, mode="mirror")
            if bad.any():
                weight = convolve1d(weight, k, axis=axis, mode="mirror")
        res = work / weight if bad.any() else work
        res[bad] = np.nan
        out[b] = res
    return out


def add_noise(data: np.ndarray, snr: Sequence[float], rng: np.random.Generator, *, reference: float | None = None) -> np.ndarray:
    """Add zero-mean Gaussian noise with std ``reference / snr_b`` per band (reference: the band's mean if ``None``)."""
    out = data.astype(np.float32, copy=True)
    for b in range(data.shape[0]):
        if snr[b] <= 0:
            raise InputError(f"SNR must be positive, got {snr[b]} for band {b}")
        ref = float(np.nanmean(data[b])) if reference is None else reference
        std = abs(ref) / snr[b]
        out[b] += rng.normal(0.0, std, size=data.shape[1:]).astype(np.float32)
    return out


def quantize(data: np.ndarray, *, scale: float = 10000.0, offset: float = 0.0) -> tuple[np.ndarray, int | None]:
    """uint16 DN ``round(x * scale + offset)`` clipped to the uint16 range; NaN -> 0 (returned as nodata, and then
    valid DN are clipped to >= 1 so they cannot read as nodata). Returns ``(dn, nodata)``."""
    bad = ~np.isfinite(data)
    nodata = 0 if bad.any() else None
    dn = np.rint(np.where(bad, 0.0, data.astype(np.float64) * scale + offset))
    dn = np.clip(dn, 1 if nodata is not None else 0, UINT16_MAX)
    dn[bad] = 0
    return dn.astype(np.uint16), nodata


# ---------------------------------------------------------------------------------------------- the degradation
@dataclass
class Degraded:
    """Output of :func:`degrade_array`: data (float32 reflectance or uint16 DN), its grid and bookkeeping."""

    data: np.ndarray
    transform: Any
    nodata: float | int | None
    sigma_m: list[float] | None = None
    noise_std: list[float] | None = None
    tags: dict[str, str] = field(default_factory=dict)


def degrade_array(data: np.ndarray, *, transform: Any = None, crs: Any = None, bands: Sequence[str | None] | None = None,
                  config: DegradeConfig, rng: np.random.Generator | None = None) -> Degraded:
    """Degrade (C, H, W) HR reflectance following ``config`` (see the module docstring for the steps).

    Args:
        data: float reflectance, NaN where invalid.
        transform: the HR affine transform (north-up); ``None`` for non-georeferenced arrays: then pixels have size 1,
            only ``config.scale`` can be used, and the returned transform is the coarse pixel grid in HR pixel units.
        bands: band ids of ``data`` for per-band MTF/SNR values (``None``: the tables' ``default``).
    """
    from affine import Affine

    data = np.asarray(data, dtype=np.float32)
    if data.ndim != 3:
        raise InputError(f"Expected a (bands, rows, cols) array, got shape {data.shape}")
    if bands is not None and len(bands) != data.shape[0]:
        raise InputError(f"{len(bands)} band names given for an image with {data.shape[0]} bands")
    georef = transform is not None
    if not georef:
        if config.gsd is not None:
            raise InputError("A target GSD needs a georeferenced input; give a scale factor instead (--scale / scale=...) for files without geometry")
        transform = Affine(1.0, 0.0, 0.0, 0.0, -1.0, float(data.shape[1]))
    x = config.band_transform.apply(data) if config.band_transform is not None else data
    grid = target_grid(transform, x.shape[1:], gsd=config.gsd, scale=config.scale, crs=crs)
    gx, gy = abs(grid.transform.a), abs(grid.transform.e)
    mtf = per_band(config.mtf, bands, x.shape[0], "MTF")
    sigmas = None
    if mtf is not None:
        # one Gaussian in ground units per band, defined at the target grid's Nyquist frequency (per axis)
        sig_xy = [(gaussian_sigma_for_mtf(m, gy, includes_footprint=config.mtf_includes_footprint),
                   gaussian_sigma_for_mtf(m, gx, includes_footprint=config.mtf_includes_footprint)) for m in mtf]
        sigmas = [s[1] for s in sig_xy]
        x = blur(x, [(sy / abs(transform.e), sx / abs(transform.a)) for sy, sx in sig_xy])
    lr = resample(x, transform, grid, method=config.resampling, crs=crs)
    snr = per_band(config.snr, bands, lr.shape[0], "SNR")
    noise_std = None
    if snr is not None:
        rng = rng or np.random.default_rng(config.seed)
        refs = [config.snr_reference if config.snr_reference is not None else float(np.nanmean(lr[b])) for b in range(lr.shape[0])]
        noise_std = [abs(r) / s for r, s in zip(refs, snr)]
        lr = add_noise(lr, snr, rng, reference=config.snr_reference)
    tags = {CONFIG_TAG: json.dumps(config.to_dict(), sort_keys=True), "PROFILE": config.profile}
    if config.quantize:
        out, nodata = quantize(lr, scale=config.dn_scale, offset=config.dn_offset)
        tags.update(SCALE=str(config.dn_scale), OFFSET=str(config.dn_offset), UNITS="DN (reflectance = (DN - OFFSET) / SCALE)")
    else:
        out, nodata = lr, (float("nan") if not np.isfinite(lr).all() else None)
        tags.update(UNITS="reflectance")
    return Degraded(out, grid.transform if georef else None, nodata, sigma_m=sigmas, noise_std=noise_std, tags=tags)


def file_rng(seed: int, name: str) -> np.random.Generator:
    """Noise generator for one file: depends on ``seed`` and the file's relative name only."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(name.encode())]))


def input_bands(descriptions: Sequence[str | None], given: str | Sequence[str] | None, n: int, path: Path) -> tuple[str | None, ...] | None:
    """Band ids of an input: ``given`` (preset or names) if set, else the file's band descriptions if they are band ids."""
    if given is not None:
        bands = resolve(given)
        if len(bands) != n:
            raise InputError(f"{path}: has {n} bands but --bands names {len(bands)} ({', '.join(map(str, bands))})")
        return bands
    try:
        if descriptions and len(descriptions) == n and all(descriptions):
            return tuple(canonical(str(d)) for d in descriptions)
    except InputError:
        pass
    return None


def degrade_file(src: Path, dst: Path, config: DegradeConfig, *, hr_scale: float | None = None, bands: str | Sequence[str] | None = None,
                 name: str | None = None, overwrite: bool = False) -> str:
    """Degrade one HR file into a GeoTIFF; returns ``"written"`` or ``"skipped"`` (same configuration already there)."""
    config_json = json.dumps(config.to_dict(), sort_keys=True)
    if dst.exists() and not overwrite:
        import rasterio

        try:
            with rasterio.open(dst) as ds:
                if ds.tags().get(CONFIG_TAG) == config_json:
                    return "skipped"
        except Exception:  # noqa: BLE001 - an unreadable partial file is simply redone
            pass
    from gapeval.reflectance import check_reflectance, was_scaled
    from lpips_sat.raster import band_gain_offset, raster_info

    raster = read_raster(src)
    gain, offset = band_gain_offset(raster_info(src), list(range(raster.data.shape[0])), hr_scale)  # --hr-scale, else file scales
    data = np.where(raster.valid[None], raster.data * gain[:, None, None] + offset[:, None, None], np.nan).astype(np.float32)
    if not raster.valid.any():
        raise InputError(f"{src}: no valid pixels")
    check_reflectance(data, raster.valid, src, "--hr-scale", scaled=was_scaled(hr_scale, gain, offset))
    band_ids = input_bands(raster.descriptions, bands, data.shape[0], src)
    out = degrade_array(data, transform=raster.transform, crs=raster.crs, bands=band_ids, config=config,
                        rng=file_rng(config.seed, name or src.name))
    tags = dict(out.tags, SOURCE=src.name)
    if hr_scale:
        tags["HR_SCALE"] = str(hr_scale)
    done_tag = {CONFIG_TAG: tags.pop(CONFIG_TAG)}
    descriptions = tuple(raster.descriptions) if raster.descriptions and len(raster.descriptions) == out.data.shape[0] else None
    import warnings

    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # arrays without geometry stay without geometry
        write_raster(dst, out.data, transform=out.transform, crs=raster.crs, nodata=out.nodata, tags=tags, descriptions=descriptions,
                     dtype="uint16" if config.quantize else "float32")
    _finish_file(dst, config, done_tag)
    return "written"


def _finish_file(dst: Path, config: DegradeConfig, done_tag: dict[str, str]) -> None:
    """Record GDAL band scale/offset (so readers get reflectance = DN * scale + offset without being told) and, last,
    the configuration tag that marks the file complete for resumed runs."""
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(dst, "r+") as ds:
            if config.quantize:
                ds.scales = (1.0 / config.dn_scale,) * ds.count
                ds.offsets = (-config.dn_offset / config.dn_scale,) * ds.count
            ds.update_tags(**done_tag)


def degrade_folder(hr: str | Path, out: str | Path, config: DegradeConfig, *, hr_scale: float | None = None,
                   bands: str | Sequence[str] | None = None, pattern: str | None = None, overwrite: bool = False) -> dict[str, int]:
    """Degrade every image under ``hr`` (a folder or one file) into ``out`` (same relative paths, ``.tif``).

    Files already degraded with the same configuration are skipped, so an interrupted run resumes.
    Returns counts ``{"written", "skipped"}``.
    """
    hr, out = Path(hr), Path(out)
    if not hr.exists():
        raise MissingFileError(f"{hr}: HR input does not exist")
    make_folder(out, "--out")
    remove_stale_temporaries(out)  # of a killed run (files of a run still writing here are kept)
    files = {hr.stem: hr} if hr.is_file() else list_images(hr, pattern)
    if not files:
        raise InputError(f"{hr}: no images ({', '.join(SUFFIXES)}){f' matching {pattern!r}' if pattern else ''}")
    counts = {"written": 0, "skipped": 0}
    for key, src in files.items():
        rel = src.name if hr.is_file() else src.relative_to(hr).as_posix()
        dst = out / f"{key}.tif"
        status = degrade_file(src, dst, config, hr_scale=hr_scale, bands=bands, name=rel, overwrite=overwrite)
        counts[status] += 1
        log.info("%s %s -> %s", status, src, dst)
    return counts


# ---------------------------------------------------------------------------------------------- command line
def _band_values(text: str | None) -> float | dict[str, float] | None:
    """Parse ``"0.25"`` or ``"B04=0.23,B08=0.21,default=0.25"``; ``"none"`` disables."""
    if text is None:
        return None
    if text.strip().lower() == "none":
        return {}
    try:
        if "=" not in text:
            return float(text)
        return {k.strip(): float(v) for k, v in (item.split("=", 1) for item in text.split(",") if item.strip())}
    except ValueError as exc:
        raise InputError(f"Cannot parse {text!r}: use a number or BAND=value pairs such as B04=0.23,default=0.25") from exc


def _band_option(lo: float, hi: float | None, what: str) -> Any:
    """argparse type of ``--snr``/``--mtf``: :func:`_band_values` with every value in ``(lo, hi)`` (usage error, exit 2)."""

    def parse(text: str) -> str:
        try:
            value = _band_values(text)
        except InputError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        values = list(value.values()) if isinstance(value, dict) else [value]
        if any(not (math.isfinite(v) and v > lo and (hi is None or v < hi)) for v in values):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return text

    return parse


def add_arguments(parser) -> None:
    """``gapeval degrade`` arguments."""
    parser.add_argument("--hr", required=True, help="folder (or one file) of high-resolution images")
    parser.add_argument("--out", required=True, help="output folder of low-resolution GeoTIFFs (same relative paths)")
    parser.add_argument("--profile", required=True, choices=sorted(PROFILES), help="degradation profile")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--scale", type=number(float, 1), help="target GSD / source GSD (default 4); non-integer allowed, e.g. 3.3333")
    size.add_argument("--gsd", type=positive_float, help="target ground sampling distance in CRS units (metres), e.g. 10")
    parser.add_argument("--snr", type=_band_option(0, None, "SNR values > 0"), help="signal-to-noise ratio: a number, BAND=value pairs, or 'none' (profile default otherwise)")
    parser.add_argument("--snr-reference", type=positive_float, help="reflectance at which the SNR holds (default: each band's image mean)")
    parser.add_argument("--mtf", type=_band_option(0, 1, "MTF values in (0, 1)"), help="system MTF at Nyquist: a number, BAND=value pairs, or 'none' (profile default otherwise)")
    parser.add_argument("--resampling", choices=RESAMPLING, help="override the profile's resampling")
    parser.add_argument("--band-transform", help="JSON band transform (from fit_band_transform) applied to HR reflectance first")
    q = parser.add_mutually_exclusive_group()
    q.add_argument("--quantize", dest="quantize", action="store_true", default=None, help="write uint16 DN (reflectance x 10000)")
    q.add_argument("--no-quantize", dest="quantize", action="store_false", help="write float32 reflectance")
    parser.add_argument("--dn-offset", type=finite_float, help="DN offset added before quantisation (e.g. 1000 for baseline >= 04.00)")
    parser.add_argument("--hr-scale", type=positive_float, help="divide HR pixel values by this to get reflectance (10000 for Sentinel-2 DN)")
    parser.add_argument("--bands", help="band order of the HR files (preset such as s2-rgbn/naip, or names); default: band descriptions")
    parser.add_argument("--glob", help="glob on relative paths under --hr selecting files (default: every image, recursively)")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="noise seed (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="redo files already degraded with the same configuration")


def config_from_args(args) -> DegradeConfig:
    """Build the configuration from the profile and the CLI overrides."""
    overrides: dict[str, Any] = {"seed": args.seed}
    if args.gsd is not None:
        overrides.update(gsd=args.gsd, scale=None)
    elif args.scale is not None:
        overrides.update(scale=args.scale)
    for key in ("snr", "mtf"):
        value = _band_values(getattr(args, key))
        if value is not None:
            overrides[key] = None if value == {} else value
    if args.snr_reference is not None:
        overrides["snr_reference"] = args.snr_reference
    if args.resampling:
        overrides["resampling"] = args.resampling
    if args.band_transform:
        overrides["band_transform"] = BandTransform.load(args.band_transform)
    if args.quantize is not None:
        overrides["quantize"] = args.quantize
    if args.dn_offset is not None:
        overrides["dn_offset"] = args.dn_offset
    return get_profile(args.profile, **overrides)


def run(args) -> int:
    """``gapeval degrade``: degrade a folder of HR images into synthetic LR inputs."""
    config = config_from_args(args)
    counts = degrade_folder(args.hr, args.out, config, hr_scale=args.hr_scale, bands=args.bands, pattern=args.glob, overwrite=args.overwrite)
    size = f"gsd {config.gsd:g}" if config.gsd is not None else f"scale {config.scale:g}"
    print(f"gapeval degrade: profile {config.profile} ({size}): {counts['written']} written, {counts['skipped']} already done -> {args.out}")
    return 0
