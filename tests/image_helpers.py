"""Small images shared by the metric and training tests: smooth synthetic reflectance, crops of the shared Sentinel-2 L1C
stack and of the shared NAIP stack."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
S2 = SHARED / "s2" / "s2_l1c_virginia_13band_10m.tif"


def s2_crops(n: int, side: int) -> torch.Tensor:
    """(n, 4, side, side) real Sentinel-2 L1C reflectance (B04, B03, B02, B08): side-by-side crops of the shared stack
    from column 600, row 500 (the test skips when the stack or rasterio is missing)."""
    rasterio = pytest.importorskip("rasterio")
    if not S2.exists():
        pytest.skip("shared Sentinel-2 stack not found")
    import numpy as np
    from rasterio.windows import Window

    with rasterio.open(S2) as ds:
        arr = ds.read([4, 3, 2, 8], window=Window(600, 500, n * side, side)).astype(np.float32) / 10000
    return torch.from_numpy(np.stack([arr[:, :, i * side : (i + 1) * side] for i in range(n)]))


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
