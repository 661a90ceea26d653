"""Small images shared by the metric and training tests: smooth synthetic reflectance and crops of the shared NAIP stack."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def smooth_reflectance(seed: int, n: int = 2, size: int = 48) -> torch.Tensor:
    """(n, 4, size, size) reflectance 0.05-0.32: bilinear-upsampled random blocks plus a little fine texture."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 4, size // 4, size // 4, generator=g)
    up = torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
    return 0.05 + 0.25 * up + 0.02 * torch.rand(n, 4, size, size, generator=g)


def crop_naip(folder: Path, n_files: int, col: int, row: int, size: int) -> Path:
    """Write ``size`` px crops (at ``col``, ``row``) of the first ``n_files`` NAIP acquisitions into ``folder``; skip
    the test when rasterio or the shared stack is missing."""
    rasterio = pytest.importorskip("rasterio")
    from rasterio.windows import Window

    src = sorted((SHARED / "naip").glob("*.tif"))[:n_files]
    if len(src) < n_files:
        pytest.skip("shared NAIP stack not found")
    folder.mkdir(parents=True, exist_ok=True)
    for f in src:
        with rasterio.open(f) as ds:
            win = Window(col, row, size, size)
            data = ds.read(window=win)
            profile = ds.profile | {"width": size, "height": size, "transform": ds.window_transform(win), "tiled": False}
            profile.pop("blockxsize", None), profile.pop("blockysize", None)
        with rasterio.open(folder / f.name, "w", **profile) as dst:
            dst.write(data)
    return folder
