"""Imagery for training and validation: GeoTIFF folders -> 4-band reflectance arrays -> random crops.

A source is ``PATH[:BANDS[:SCALE[:OFFSET]]]``: ``PATH`` a folder of GeoTIFFs or one GeoTIFF, ``BANDS`` a preset of
:mod:`lpips_sat.bands` (default ``s2-l1c-13``), ``OFFSET`` DN subtracted before scaling (``1000`` for Sentinel-2
products of processing baseline >= 04.00, whose reflectance is (DN - 1000) / 10000), ``SCALE`` the divisor to
reflectance (default 10000) or ``moments``, which maps each band of an 8-bit aerial
image (NAIP) affinely onto the mean/std of :data:`S2_MOMENTS` — texture donors, not radiometric truth.
Every raster's bottom ``holdout`` fraction of rows is reserved for validation (held-out region).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from lpips_sat.bands import DEFAULT_BANDS, band_indices, resolve
from lpips_sat.errors import InputError, MissingFileError
from lpips_sat.raster import open_geotiff, require
from lpips_sat.registry import sha256_file

log = logging.getLogger(__name__)

#: Per-band (mean, std) reflectance of R, G, B, NIR used to place 8-bit aerial imagery on an S2-like scale.
#: Measured on the shared Sentinel-2 L1C stack (B04, B03, B02, B08), see docs/model_card.md.
S2_MOMENTS = ((0.0743, 0.0268), (0.0946, 0.0206), (0.1186, 0.0177), (0.1087, 0.0970))

#: PlanetScope / Sentinel-2 per-band median ratios (R, G, B, NIR) on a co-located tile (CONTEXT.md): the radiometric
#: difference between two real sensors, given to the other acquisition in real cross-acquisition judgments and checks.
PS_OVER_S2 = (1.20, 1.02, 1.21, 0.96)


@dataclass
class Source:
    folder: Path
    bands: str = "s2-l1c-13"
    scale: str = "10000"
    offset: str = "0"

    @classmethod
    def parse(cls, text: str) -> "Source":
        parts = text.split(":")
        src = cls(Path(parts[0]), *parts[1:4])
        if not src.folder.exists():
            raise MissingFileError(f"Training data folder {src.folder} does not exist")
        return src


@dataclass
class Image:
    """One training raster as (4, H, W) float32 reflectance plus provenance."""

    name: str
    data: np.ndarray
    sha256: str


def load_source(src: Source, bands: Sequence[str] = DEFAULT_BANDS) -> list[Image]:
    """Read every GeoTIFF of ``src.folder`` into reflectance arrays with ``bands``."""
    RasterioIOError = require("rasterio.errors", f"{src.folder}: reading GeoTIFF training data").RasterioIOError  # noqa: N806

    if src.folder.is_file():
        files = [src.folder]
    else:
        files = sorted(p for p in src.folder.rglob("*") if p.suffix.lower() in (".tif", ".tiff"))
    if not files:
        raise InputError(f"{src.folder}: no GeoTIFF files to train on")
    idx = band_indices(src.bands, bands)
    out = []
    for path in files:
        with open_geotiff(path) as ds:
            if ds.count != len(resolve(src.bands)):
                raise InputError(f"{path}: has {ds.count} bands but preset {src.bands!r} declares a different count")
            try:
                arr = ds.read([i + 1 for i in idx]).astype(np.float32)
            except RasterioIOError as exc:
                raise InputError(f"{path}: cannot read pixels ({exc}); the file may be corrupt or truncated") from exc
            nodata = ds.nodata
        if src.scale == "moments":
            arr = _moment_match(arr, nodata, path)
        else:
            invalid = (arr == nodata).all(0) if nodata is not None else None
            if float(src.offset):
                arr -= float(src.offset)
            arr /= float(src.scale)
            if invalid is not None:
                arr[:, invalid] = np.nan
        if not np.isfinite(arr).all():
            arr = _fill_nan(arr)
        out.append(Image(path.name, arr, sha256_file(path)))
        log.info("loaded %s %s", path, arr.shape)
    return out


def _moment_match(arr: np.ndarray, nodata: float | None, path: Path) -> np.ndarray:
    out = np.empty_like(arr)
    for b in range(arr.shape[0]):
        band = arr[b]
        valid = band != nodata if nodata is not None else np.ones_like(band, bool)
        mu, sd = float(band[valid].mean()), float(band[valid].std())
        if sd == 0:
            raise InputError(f"{path}: band {b + 1} is constant; cannot moment-match it")
        out[b] = (band - mu) / sd * S2_MOMENTS[b][1] + S2_MOMENTS[b][0]
    return np.clip(out, 0.0, None)


def _fill_nan(arr: np.ndarray) -> np.ndarray:
    mean = np.nanmean(arr, axis=(1, 2), keepdims=True)
    return np.where(np.isfinite(arr), arr, mean).astype(np.float32)


def split_rows(img: np.ndarray, holdout: float) -> tuple[np.ndarray, np.ndarray]:
    """Split ``img`` (C, H, W) into (train, held-out) by rows: the bottom ``holdout`` fraction is held out."""
    cut = int(round(img.shape[1] * (1 - holdout)))
    return img[:, :cut], img[:, cut:]


def reference_scenes(path: str | Path) -> list[np.ndarray]:
    """The eo-learn reference scenes (time, rows, cols, 13 bands) as a list of (4, H, W) R,G,B,NIR arrays."""
    arr = np.load(path)
    idx = band_indices("s2-l1c-13", DEFAULT_BANDS)
    return [np.ascontiguousarray(np.moveaxis(scene[..., idx], -1, 0)).astype(np.float32) for scene in arr]


class CropSampler:
    """Random square crops from a list of (C, H, W) arrays, area-weighted, reproducible by seed."""

    def __init__(self, images: Sequence[np.ndarray], size: int, seed: int = 0) -> None:
        self.images = [torch.from_numpy(np.ascontiguousarray(im)) for im in images if min(im.shape[1:]) >= size]
        if not self.images:
            raise InputError(f"No training image is at least {size}x{size} px")
        areas = np.array([im.shape[1] * im.shape[2] for im in self.images], dtype=float)
        self.p = areas / areas.sum()
        self.size = size
        self.rng = np.random.default_rng(seed)

    def sample(self, n: int, size: int | None = None) -> torch.Tensor:
        """``n`` crops of ``size`` (default the sampler's) as an (n, C, size, size) tensor."""
        size = size or self.size
        out = []
        for k in self.rng.choice(len(self.images), size=n, p=self.p):
            im = self.images[k]
            y = self.rng.integers(0, im.shape[1] - size + 1)
            x = self.rng.integers(0, im.shape[2] - size + 1)
            out.append(im[:, y : y + size, x : x + size])
        return torch.stack(out)


class PairSampler:
    """Same-place crops from two different acquisitions of co-registered rasters (e.g. NAIP years)."""

    def __init__(self, stacks: list[np.ndarray], min_corr: float, seed: int = 0) -> None:
        if len(stacks) < 2:
            raise InputError("--pairs needs at least two acquisitions of one place")
        h = min(s.shape[1] for s in stacks)
        w = min(s.shape[2] for s in stacks)
        self.stacks = [torch.from_numpy(np.ascontiguousarray(s[:, :h, :w])) for s in stacks]
        self.min_corr, self.rng = min_corr, np.random.default_rng(seed)

    def sample(self, n: int, size: int, tries: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` (A, B) crop pairs of ``size``; the best-correlated of ``tries`` draws when none passes."""
        h, w = self.stacks[0].shape[1:]
        out_a, out_b = [], []
        for _ in range(n):
            best = None
            for _ in range(tries):
                i, j = self.rng.choice(len(self.stacks), size=2, replace=False)
                y, x = int(self.rng.integers(0, h - size + 1)), int(self.rng.integers(0, w - size + 1))
                a = self.stacks[i][:, y : y + size, x : x + size]
                b = self.stacks[j][:, y : y + size, x : x + size]
                r = float(torch.corrcoef(torch.stack([a.mean(0).flatten(), b.mean(0).flatten()]))[0, 1])
                if best is None or r > best[0]:
                    best = (r, a, b)
                if r >= self.min_corr:
                    break
            out_a.append(best[1])
            out_b.append(best[2])
        return torch.stack(out_a), torch.stack(out_b)


def area_average(x: np.ndarray, f: int) -> np.ndarray:
    """(C, H, W) -> (C, H // f, W // f) by averaging f x f blocks (the S2 pixel as an area mean)."""
    if f == 1:
        return x
    c, h, w = x.shape
    return x[:, : h // f * f, : w // f * f].reshape(c, h // f, f, w // f, f).mean(axis=(2, 4))
