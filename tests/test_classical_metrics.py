"""Masked classical metrics against scikit-image / torchmetrics / direct numpy, and their tile-wise accumulation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torchmetrics.functional.image import error_relative_global_dimensionless_synthesis, spectral_angle_mapper

from gapeval.metrics.classical import SSIM_RADIUS, ClassicalAccumulator, ergas, interior_mask, mae, psnr, rmse, sam, ssim, ssim_map
from gapeval.windows import expand_window, iter_windows, window_slices
from lpips_sat.errors import InputError

BANDS = ("B04", "B03", "B02", "B08")


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    """A smooth 'reflectance' target (4 bands, 48 x 40 px) and a noisy, slightly biased prediction."""
    rng = np.random.default_rng(0)
    target = np.stack([gaussian_filter(rng.random((48, 40)), 2) * 0.4 + 0.05 * (k + 1) for k in range(4)])
    pred = target + 0.02 * rng.standard_normal(target.shape) + 0.005
    return pred, target


def test_psnr_rmse_mae_match_references(pair):
    pred, target = pair
    assert psnr(pred, target, data_range=1.0) == pytest.approx(peak_signal_noise_ratio(target, pred, data_range=1.0), rel=1e-12)
    assert psnr(pred, target, data_range=0.5) == pytest.approx(peak_signal_noise_ratio(target, pred, data_range=0.5), rel=1e-12)
    assert rmse(pred, target) == pytest.approx(np.sqrt(np.mean((pred - target) ** 2)), rel=1e-12)
    assert mae(pred, target) == pytest.approx(np.mean(np.abs(pred - target)), rel=1e-12)


def test_ssim_matches_scikit_image(pair):
    pred, target = pair
    total, per_band = ssim(pred, target, data_range=1.0)
    ref = structural_similarity(target, pred, data_range=1.0, channel_axis=0, gaussian_weights=True, use_sample_covariance=False)
    assert total == pytest.approx(ref, abs=1e-10)
    for k in range(4):
        ref_k = structural_similarity(target[k], pred[k], data_range=1.0, gaussian_weights=True, use_sample_covariance=False)
        assert per_band[k] == pytest.approx(ref_k, abs=1e-10)


def test_sam_and_ergas_match_torchmetrics(pair):
    pred, target = pair
    tp, tt = torch.from_numpy(pred)[None], torch.from_numpy(target)[None]
    assert sam(pred, target) == pytest.approx(np.degrees(float(spectral_angle_mapper(tp, tt))), rel=1e-9)
    # torchmetrics' ratio is the HR/LR resolution ratio (4), ours is Wald's h/l pixel-size ratio (1/4)
    assert ergas(pred, target, ratio=0.25) == pytest.approx(float(error_relative_global_dimensionless_synthesis(tp, tt, ratio=4)), rel=1e-9)


def test_identity_and_known_values():
    x = np.random.default_rng(1).random((3, 16, 16)) + 0.1
    assert psnr(x, x, data_range=1.0) == np.inf
    assert ssim(x, x, data_range=1.0)[0] == pytest.approx(1.0)
    assert sam(x, x) == pytest.approx(0.0, abs=1e-5)
    assert ergas(x, x, ratio=0.25) == 0.0
    assert sam(2 * x, x) == pytest.approx(0.0, abs=1e-5)  # SAM ignores brightness
    assert psnr(x + 0.01, x, data_range=1.0) == pytest.approx(40.0)
    t = np.ones((2, 4, 4))
    p = t.copy()
    p[1] = 0.0
    assert sam(p, t) == pytest.approx(45.0)


def test_metrics_order_distortions(pair):
    _, target = pair
    rng = np.random.default_rng(2)
    mild, strong = (target + s * rng.standard_normal(target.shape) for s in (0.01, 0.05))
    assert psnr(mild, target, data_range=1.0) > psnr(strong, target, data_range=1.0)
    assert ssim(mild, target, data_range=1.0)[0] > ssim(strong, target, data_range=1.0)[0]
    assert sam(mild, target) < sam(strong, target)
    assert ergas(mild, target, ratio=0.25) < ergas(strong, target, ratio=0.25)


def test_masked_metrics_equal_metrics_of_valid_pixels(pair):
    pred, target = pair
    valid = np.ones(target.shape[1:], bool)
    valid[5:20, 8:30] = False
    junk = pred.copy()
    junk[:, ~valid] = np.where(np.random.default_rng(3).random((4, (~valid).sum())) > 0.5, np.nan, 7.0)
    p_valid, t_valid = pred[:, valid][:, None, :], target[:, valid][:, None, :]  # valid pixels as a 1-row image
    assert psnr(junk, target, valid, data_range=1.0) == pytest.approx(peak_signal_noise_ratio(t_valid, p_valid, data_range=1.0), rel=1e-12)
    assert rmse(junk, target, valid) == pytest.approx(np.sqrt(np.mean((p_valid - t_valid) ** 2)), rel=1e-12)
    assert sam(junk, target, valid) == pytest.approx(sam(p_valid, t_valid), rel=1e-12)
    assert ergas(junk, target, valid, ratio=0.5) == pytest.approx(ergas(p_valid, t_valid, ratio=0.5), rel=1e-12)
    # SSIM: whatever lies under the mask does not change the result, and only valid pixels are scored
    s_junk = ssim(junk, target, valid, data_range=1.0)
    s_clean = ssim(pred, target, valid, data_range=1.0)
    assert s_junk[0] == pytest.approx(s_clean[0], abs=1e-12)
    assert np.isnan(ssim_map(junk, target, valid, data_range=1.0)[:, ~valid]).all()
    # without the mask only the NaN pixels drop out and the 7.0 values count
    assert psnr(junk, target, data_range=1.0) < psnr(junk, target, valid, data_range=1.0) - 20


def test_masked_ssim_ignores_values_under_the_mask_but_not_outside(pair):
    pred, target = pair
    valid = np.ones(target.shape[1:], bool)
    valid[:, :10] = False
    changed = pred.copy()
    changed[:, :, 12:] += 0.05  # change inside the valid area
    assert ssim(changed, target, valid, data_range=1.0)[0] < ssim(pred, target, valid, data_range=1.0)[0]


def test_accumulator_over_windows_equals_whole_image(pair):
    pred, target = pair
    valid = np.ones(target.shape[1:], bool)
    valid[30:, 33:] = False
    pred = pred.copy()
    pred[0, 2, 2] = np.nan
    valid &= np.isfinite(pred).all(axis=0)
    h, w = target.shape[1:]
    whole = ClassicalAccumulator(BANDS, 1.0, 0.25)
    whole.update(pred, target, valid, None, interior_mask(slice(0, h), slice(0, w), h, w))
    tiled = ClassicalAccumulator(BANDS, 1.0, 0.25)
    for core in iter_windows(h, w, 16):
        read = expand_window(core, SSIM_RADIUS, h, w)
        rs, cs = slice(int(read.row_off), int(read.row_off + read.height)), slice(int(read.col_off), int(read.col_off + read.width))
        inner = interior_mask(
            slice(int(core.row_off), int(core.row_off + core.height)), slice(int(core.col_off), int(core.col_off + core.width)), h, w
        )
        tiled.update(pred[:, rs, cs], target[:, rs, cs], valid[rs, cs], window_slices(core, read), inner)
    a, b = whole.result(), tiled.result()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-9), key
    assert a["ssim"] == pytest.approx(ssim(pred, target, valid, data_range=1.0)[0], rel=1e-12)
    assert a["psnr_B03"] == pytest.approx(psnr(pred[1:2], target[1:2], valid, data_range=1.0), rel=1e-12)
    assert a["ergas"] == pytest.approx(ergas(pred, target, valid, ratio=0.25), rel=1e-12)


def test_bad_inputs():
    x = np.zeros((3, 8, 8))
    with pytest.raises(InputError, match=r"\(3, 8, 8\) and \(3, 8, 9\)"):
        psnr(x, np.zeros((3, 8, 9)), data_range=1.0)
    with pytest.raises(InputError, match="data_range"):
        psnr(x, x, data_range=0)
    with pytest.raises(InputError, match="valid"):
        sam(x, x, np.ones((8, 9), bool))
    with pytest.raises(InputError, match="ratio"):
        ergas(x, x, ratio=0)
    assert np.isnan(psnr(x, x, np.zeros((8, 8), bool), data_range=1.0))  # nothing valid: no number, never 0
