"""The NAIP cross-acquisition proxy: a real-pair dataset built from two acquisitions of one site.

An **aerial-to-aerial proxy for Sentinel-2 <-> PlanetScope**, not the real sensor pair: the two NAIP acquisitions
differ in camera, season, radiometry, registration and (partly) content, which is the structure of real
cross-sensor pairs, but both are aerial images and the "low-resolution sensor" is simulated by degrading year B.

- HR = year A at its 5 m grid, pseudo-reflectance ``DN / dn_scale`` (one fixed scale for both years, so their
  radiometric difference stays in the data).
- real LR = year B degraded to ``scale`` x the GSD with the ``s2`` profile (MTF blur, area average, noise, uint16
  quantisation), noise stream ``seed + 1``;
- synthetic LR = year A degraded the same way (``lr_synth_s2``, noise stream ``seed``) and with ``bicubic``
  (``lr_synth_bicubic``).
- Tiles of ``tile`` LR px on the LR grid; spatial blocks of ``block`` LR px are assigned whole to train/val/test
  (seeded), so no test tile overlaps or touches a training block.
- Changed content is filtered: a tile is kept when the Pearson correlation of the band-mean images of its synthetic
  (year A) and real (year B) LR tiles is at least ``min_corr`` (land-cover change between the years would otherwise
  be measured as "sensor gap"), and when its HR band-mean standard deviation exceeds ``min_std`` (flat tiles).
- The residual registration shift of each tile (phase correlation of the band means at HR, year B vs year A) is
  recorded, not corrected: misregistration is part of the real domain.

Output layout (the pair-set layout the study reads, shared with ``gapeval pairs``)::

    OUT/{train,val,test}/{hr,lr,lr_synth_s2,lr_synth_bicubic}/TILE.tif   + OUT/manifest.csv
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine

from lpips_sat.atomic import write_text_atomic
from lpips_sat.raster import write_raster
from lpips_sat.errors import InputError, MissingFileError

SPLITS = ("train", "val", "test")
FOLDERS = ("hr", "lr", "lr_synth_s2", "lr_synth_bicubic")
BANDS = ("B04", "B03", "B02", "B08")  # NAIP band order red, green, blue, NIR


@dataclass
class ProxySpec:
    """Settings of :func:`build_naip_proxy` (see the module docstring)."""

    hr: str
    lr: str
    dn_scale: float = 1000.0
    scale: int = 4
    tile: int = 16
    block: int = 48
    split: list[float] = field(default_factory=lambda: [0.6, 0.15, 0.25])
    min_corr: float = 0.8
    min_std: float = 0.002
    seed: int = 0
    crop: int = 0  # use only the top-left crop x crop HR px of the scenes (0 = all; smoke runs)

    def __post_init__(self) -> None:
        if self.tile < 8 or self.block % self.tile or self.block < self.tile:
            raise InputError(f"naip_proxy: block ({self.block}) must be a multiple of tile ({self.tile} >= 8 LR px)")
        if len(self.split) != 3 or any(f < 0 for f in self.split) or not sum(self.split) > 0:
            raise InputError(f"naip_proxy: split must be three non-negative fractions (train, val, test), got {self.split}")
        if int(self.scale) != self.scale or self.scale < 2:
            raise InputError(f"naip_proxy: scale must be an integer >= 2, got {self.scale}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read(path: str, dn_scale: float) -> tuple[np.ndarray, Any, Any, str]:
    import rasterio

    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"{p}: NAIP scene does not exist")
    with rasterio.open(p) as ds:
        if ds.count != 4:
            raise InputError(f"{p}: expected 4 bands (red, green, blue, NIR), found {ds.count}")
        data = ds.read().astype(np.float32)
        nodata = ds.nodata
        date = ds.tags().get("ACQUISITION_DATE", p.stem.rsplit("_", 1)[-1])
        transform, crs = ds.transform, ds.crs
    invalid = (data == nodata).all(axis=0) if nodata is not None else np.zeros(data.shape[1:], bool)
    data /= np.float32(dn_scale)
    data[:, invalid] = np.nan
    return data, transform, crs, date


def assign_blocks(n_rows: int, n_cols: int, fractions: list[float], seed: int) -> np.ndarray:
    """Split index (0 train, 1 val, 2 test) per block of an ``n_rows`` x ``n_cols`` block grid: a seeded permutation
    of the blocks cut at the cumulative ``fractions``. Raises when a split with a positive fraction gets no block."""
    n = n_rows * n_cols
    f = np.asarray(fractions, float) / float(np.sum(fractions))
    counts = np.floor(f * n).astype(int)
    for i in np.argsort(-(f * n - counts))[: n - counts.sum()]:
        counts[i] += 1
    for i, name in enumerate(SPLITS):
        if f[i] > 0 and counts[i] == 0:
            raise InputError(f"naip_proxy: split {name!r} gets no spatial block ({n} blocks for fractions {fractions}); use smaller blocks")
    order = np.random.default_rng(seed).permutation(n)
    out = np.empty(n, int)
    out[order] = np.repeat(np.arange(3), counts)
    return out.reshape(n_rows, n_cols)


def build_naip_proxy(spec: ProxySpec, out: str | Path) -> dict[str, int]:
    """Write the proxy pair set into ``out`` (see the module docstring); returns the kept-tile count per split."""
    from gapeval.degrade import degrade_array, get_profile
    from gapeval.metrics.consistency import phase_correlation

    out = Path(out)
    a, ta, crs_a, date_a = _read(spec.hr, spec.dn_scale)
    b, tb, crs_b, date_b = _read(spec.lr, spec.dn_scale)
    if crs_a != crs_b or tuple(ta)[:6] != tuple(tb)[:6]:
        raise InputError(f"{spec.lr}: not on the grid of {spec.hr} (CRS {crs_b} vs {crs_a}, transform {tuple(tb)[:6]} vs {tuple(ta)[:6]}); "
                         "reproject year B onto year A's grid first")
    s = int(spec.scale)
    H, W = (min(a.shape[1], b.shape[1]) // s) * s, (min(a.shape[2], b.shape[2]) // s) * s
    if spec.crop:
        H, W = min(H, spec.crop // s * s), min(W, spec.crop // s * s)
    a, b = a[:, :H, :W], b[:, :H, :W]
    lr = {}
    for name, img, prof, seed in (("lr", b, "s2", spec.seed + 1), ("lr_synth_s2", a, "s2", spec.seed), ("lr_synth_bicubic", a, "bicubic", spec.seed)):
        cfg = get_profile(prof, scale=float(s), seed=seed)
        d = degrade_array(img, transform=ta, crs=crs_a, bands=BANDS, config=cfg, rng=np.random.default_rng(seed))
        arr = d.data.astype(np.float32)
        if cfg.quantize:  # back to reflectance; keep the quantisation
            bad = arr == d.nodata if d.nodata is not None else np.zeros_like(arr, bool)
            arr = (arr - np.float32(cfg.dn_offset)) / np.float32(cfg.dn_scale)
            arr[bad] = np.nan
        lr[name] = (arr, d.transform)
    lr_transform = lr["lr"][1]
    h, w = H // s, W // s
    t, blk = spec.tile, spec.block
    nbr, nbc = (h // t * t + blk - 1) // blk, (w // t * t + blk - 1) // blk
    splits = assign_blocks(nbr, nbc, spec.split, spec.seed)
    rows, counts = [], dict.fromkeys(SPLITS, 0)
    for r in range(0, h - t + 1, t):
        for c in range(0, w - t + 1, t):
            key = f"naip_r{r:04d}_c{c:04d}"
            split = SPLITS[splits[r // blk, c // blk]]
            syn, real = lr["lr_synth_s2"][0][:, r:r + t, c:c + t], lr["lr"][0][:, r:r + t, c:c + t]
            hr = a[:, r * s:(r + t) * s, c * s:(c + t) * s]
            hr_b = b[:, r * s:(r + t) * s, c * s:(c + t) * s]
            row = {"tile": key, "split": split, "block": f"{r // blk}_{c // blk}", "row_lr": r, "col_lr": c,
                   "hr_scene": Path(spec.hr).name, "lr_scene": Path(spec.lr).name, "hr_date": date_a, "lr_date": date_b}
            finite = all(np.isfinite(x).all() for x in (syn, real, hr, hr_b))
            if not finite:
                rows.append({**row, "kept": 0, "reason": "nodata"})
                continue
            corr = float(np.corrcoef(syn.mean(0).ravel(), real.mean(0).ravel())[0, 1])
            std = float(hr.mean(0).std())
            dy, dx = phase_correlation(hr.mean(0), hr_b.mean(0))
            row.update(corr=f"{corr:.4f}", hr_std=f"{std:.5f}", shift_dy_hr_px=f"{dy:.2f}", shift_dx_hr_px=f"{dx:.2f}")
            reason = "flat" if std < spec.min_std else ("changed content" if not corr >= spec.min_corr else "")
            rows.append({**row, "kept": int(not reason), "reason": reason})
            if reason:
                continue
            counts[split] += 1
            hr_t = ta @ Affine.translation(c * s, r * s)
            lr_t = lr_transform @ Affine.translation(c, r)
            tags = {"SOURCE": f"NAIP {date_a} (HR) / {date_b} (real LR), pseudo-reflectance DN/{spec.dn_scale:g}", "PROXY": "aerial-to-aerial"}
            write_raster(out / split / "hr" / f"{key}.tif", hr, transform=hr_t, crs=crs_a, descriptions=BANDS, tags=tags)
            for name in ("lr", "lr_synth_s2", "lr_synth_bicubic"):
                write_raster(out / split / name / f"{key}.tif", lr[name][0][:, r:r + t, c:c + t], transform=lr_t, crs=crs_a,
                             descriptions=BANDS, tags=tags)
    fields = ["tile", "split", "block", "row_lr", "col_lr", "hr_scene", "lr_scene", "hr_date", "lr_date", "corr", "hr_std",
              "shift_dy_hr_px", "shift_dx_hr_px", "kept", "reason"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, restval="")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out / "manifest.csv", buf.getvalue())
    return counts
