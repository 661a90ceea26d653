"""Distortion families: shapes, finiteness, severity ordering on real Sentinel-2 crops, exact sub-operations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from image_helpers import s2_crops

from lpips_sat.train.distortions import FAMILIES, HELDOUT_FAMILIES, MARGIN, TRAIN_FAMILIES, apply, crop_margin, fourier_shift, gaussian_blur


@pytest.fixture(scope="module")
def real_context() -> torch.Tensor:
    return s2_crops(3, 80)


def test_split_is_disjoint_and_holds_out_both_kinds():
    assert set(TRAIN_FAMILIES).isdisjoint(HELDOUT_FAMILIES)
    kinds = {FAMILIES[f].kind for f in HELDOUT_FAMILIES}
    assert kinds == {"nuisance", "damage"}
    assert sum(FAMILIES[f].kind == "damage" for f in HELDOUT_FAMILIES) >= 2


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_shape_finite_and_severity_order(name, real_context):
    ref = crop_margin(real_context)
    errs = []
    for s in (0.1, 0.9):
        g = torch.Generator().manual_seed(3)
        out = crop_margin(apply(name, real_context, s, g))
        assert out.shape == ref.shape
        assert torch.isfinite(out).all()
        errs.append(float((out - ref).pow(2).mean()))
    assert errs[0] > 0
    if name not in ("gain",):  # random per-band gains: sign of each draw differs, magnitude only on average
        assert errs[0] < errs[1], f"{name}: higher severity must move further from the reference"


def test_fourier_shift_by_whole_pixels_is_a_roll():
    x = torch.rand(2, 3, 16, 20)
    y = fourier_shift(x, torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.0]))
    assert torch.allclose(y[0], torch.roll(x[0], (1, 3), (1, 2)), atol=1e-5)
    assert torch.allclose(y[1], torch.roll(x[1], (-2, 0), (1, 2)), atol=1e-5)


def test_gaussian_blur_keeps_constants_and_matches_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = torch.full((1, 2, 20, 20), 0.3)
    assert torch.allclose(gaussian_blur(x, 1.7), x, atol=1e-6)
    img = torch.rand(1, 1, 40, 40, dtype=torch.float64)
    ours = gaussian_blur(img, 1.2)[0, 0].numpy()
    ref = ndimage.gaussian_filter(img[0, 0].numpy(), 1.2, mode="mirror", truncate=3 * 1.2 / 1.2 * 1.0 + 0.0)
    # same kernel support (radius ceil(3 sigma)), reflect padding without edge repeat = scipy 'mirror'
    assert np.allclose(ours[8:-8, 8:-8], ref[8:-8, 8:-8], atol=1e-3)


def test_margin_is_cropped():
    x = torch.zeros(1, 4, 40 + 2 * MARGIN, 40 + 2 * MARGIN)
    assert crop_margin(x).shape[-1] == 40
