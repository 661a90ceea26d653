"""gapeval's opensr-test protocol against the opensr-test 1.3.3 package itself, on the example pairs and on random
crops of real Sentinel-2 scenes (target: 1e-4 relative agreement on the same arrays)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from gapeval.metrics.opensr import KEYS, opensr_test_metrics, phase_shift, translate
from lpips_sat.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
#: (file, indices of B04, B03, B02, B08, crops as (HR size, scale, dtype))
SCENES = [
    (SHARED / "s2" / "s2_l1c_virginia_13band_10m.tif", [3, 2, 1, 7], ((128, 4, np.float32), (64, 4, np.float64))),
    (SHARED / "s2_world" / "s2_l1c_denmark_T33UUB_20170527_10m.tif", [0, 1, 2, 3], ((96, 2, np.float32), (128, 8, np.float32))),
    (SHARED / "s2_world" / "s2_l2a_accra_T30NZM_20240407_10m.tif", [2, 1, 0, 4], ((128, 4, np.float32),)),
]


@pytest.fixture()
def reference():
    """``opensr_test.Metrics().compute`` with torch's global state (seeds, cuDNN flags it sets) restored after."""
    opensr_test = pytest.importorskip("opensr_test")
    state = torch.random.get_rng_state(), torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    metrics = opensr_test.Metrics()

    def compute(lr: np.ndarray, sr: np.ndarray, hr: np.ndarray) -> dict[str, float]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # satalign warns when its translation estimate is too large
            return metrics.compute(torch.from_numpy(lr), torch.from_numpy(sr), torch.from_numpy(hr))

    yield compute
    torch.random.set_rng_state(state[0])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = state[1], state[2]


def _assert_same(mine: dict[str, float], ref: dict[str, float], what: str) -> None:
    assert set(mine) == set(KEYS) == set(ref)
    for key in KEYS:
        if math.isnan(ref[key]):
            assert math.isnan(mine[key]), f"{what} {key}: {mine[key]} vs NaN"
        else:
            assert mine[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-9), f"{what} {key}"


def _read(path: Path) -> np.ndarray:
    rasterio = pytest.importorskip("rasterio")
    with rasterio.open(path) as ds:
        return ds.read().astype(np.float32) * np.float32(1e-4)


@pytest.mark.parametrize("pred", ["bicubic", "sharpened", "shifted", "noisy"])
def test_examples_match_opensr_test(reference, pred: str) -> None:
    keys = sorted(p.stem for p in (ROOT / "examples" / "hr").glob("*.tif"))
    assert len(keys) == 6
    for key in keys:
        lr, hr = _read(ROOT / "examples" / "lr" / f"{key}.tif"), _read(ROOT / "examples" / "hr" / f"{key}.tif")
        sr = _read(ROOT / "examples" / "pred" / pred / f"{key}.tif")
        _assert_same(opensr_test_metrics(lr, sr, hr), reference(lr, sr, hr), f"{pred}/{key}")


def _block_mean(x: np.ndarray, s: int) -> np.ndarray:
    c, h, w = x.shape
    return x.reshape(c, h // s, s, w // s, s).mean(axis=(2, 4), dtype=np.float64).astype(x.dtype)


def _predictions(lr: np.ndarray, hr: np.ndarray, s: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """SR stand-ins of different kinds: interpolated LR, with noise, with gains and a sub-pixel shift, a shift beyond
    opensr-test's 5 px limit, HR with noise, HR itself."""
    up = torch.nn.functional.interpolate(torch.from_numpy(lr)[None], scale_factor=s, mode="bicubic")[0].numpy()
    gains = rng.uniform(0.9, 1.1, size=(lr.shape[0], 1, 1)).astype(lr.dtype)
    dy, dx = rng.uniform(-2.5, 2.5, size=2)
    return {
        "bicubic": up,
        "noisy": up + rng.normal(0, 0.01, up.shape).astype(lr.dtype),
        "gain_shift": translate(up * gains, dx, dy),
        "far": np.roll(hr, (9, -7), axis=(1, 2)),
        "hr_noisy": hr + rng.normal(0, 0.005, hr.shape).astype(lr.dtype),
        "hr": hr.copy(),
    }


@pytest.mark.parametrize("scene", range(len(SCENES)))
def test_random_real_crops_match_opensr_test(reference, scene: int) -> None:
    rasterio = pytest.importorskip("rasterio")
    path, bands, crops = SCENES[scene]
    if not path.exists():
        pytest.skip(f"{path} not present")
    from rasterio.windows import Window

    rng = np.random.default_rng(100 + scene)
    with rasterio.open(path) as ds:
        for size, s, dtype in crops:
            row, col = (int(v) for v in rng.integers(0, [ds.height - size, ds.width - size]))
            hr = (ds.read([b + 1 for b in bands], window=Window(col, row, size, size)).astype(np.float64) * 1e-4).astype(dtype)
            lr = _block_mean(hr, s)
            for name, sr in _predictions(lr, hr, s, rng).items():
                _assert_same(opensr_test_metrics(lr, sr, hr), reference(lr, sr, hr), f"{path.name} {size}px x{s} {np.dtype(dtype)} {name}")


def test_phase_shift_recovers_known_translation() -> None:
    """Independent of the package: a real crop translated by a known sub-pixel amount (a Fourier shift, so the
    image stays periodic as phase correlation assumes) is found to within 0.03 px
    (the 1/50 px grid, plus the error of unwindowed phase correlation)."""
    path, bands, _ = SCENES[0]
    if not path.exists():
        pytest.skip(f"{path} not present")
    img = _read(path)[bands[0], 600:664, 600:664].astype(np.float64)
    fy, fx = np.meshgrid(np.fft.fftfreq(64), np.fft.fftfreq(64), indexing="ij")
    for dy, dx in ((0.7, -1.4), (2.0, 1.46), (-3.22, 0.0)):
        moved = np.fft.ifft2(np.fft.fft2(img) * np.exp(-2j * np.pi * (fy * dy + fx * dx))).real  # content moves by (dy, dx)
        assert phase_shift(img, moved) == pytest.approx((-dy, -dx), abs=0.03)  # the shift that moves it back
        assert phase_shift(img.astype(np.float32), moved.astype(np.float32)) == pytest.approx((-dy, -dx), abs=0.03)


def test_bad_inputs_raise_input_error() -> None:
    hr = np.random.default_rng(0).uniform(0.01, 0.3, (4, 96, 96)).astype(np.float32)
    with pytest.raises(InputError, match="divide"):
        opensr_test_metrics(_block_mean(hr, 3), hr, hr)  # x3 does not divide the 16 px border
    with pytest.raises(InputError, match="share bands"):
        opensr_test_metrics(_block_mean(hr, 4)[:3], hr, hr)
    bad = hr.copy()
    bad[0, 40, 40] = np.nan
    with pytest.raises(InputError, match="NaN"):
        opensr_test_metrics(_block_mean(hr, 4), bad, hr)
    with pytest.raises(InputError, match="border"):
        opensr_test_metrics(_block_mean(hr[:, :36, :36], 4), hr[:, :36, :36], hr[:, :36, :36])


def test_accumulator_is_the_border_weighted_mean_of_window_values() -> None:
    from gapeval.metrics.opensr import COLUMNS, TILES_COLUMN, OpenSRAccumulator

    path, bands, _ = SCENES[0]
    if not path.exists():
        pytest.skip(f"{path} not present")
    hr = _read(path)[bands, 300:428, 500:676]  # 128 x 176: windows of 128 x 128 and 128 x 48
    lr = _block_mean(hr, 4)
    sr = torch.nn.functional.interpolate(torch.from_numpy(lr)[None], scale_factor=4, mode="bilinear")[0].numpy()
    acc = OpenSRAccumulator()
    for cols in (slice(0, 128), slice(128, 176)):
        lcols = slice(cols.start // 4, cols.stop // 4)
        acc.update(lr[:, :, lcols], sr[:, :, cols], hr[:, :, cols], complete=True)
    acc.update(lr[:, :, :9], sr[:, :, :36], hr[:, :, :36], complete=True)  # < 2 LR px inside the border: left out
    acc.update(lr[:, :, :32], sr[:, :, :128], hr[:, :, :128], complete=False)  # an invalid pixel: left out
    a = opensr_test_metrics(lr[:, :, :32], sr[:, :, :128], hr[:, :, :128])
    b = opensr_test_metrics(lr[:, :, 32:44], sr[:, :, 128:176], hr[:, :, 128:176])
    wa, wb = 96 * 96, 96 * 16
    res = acc.result()
    assert res[TILES_COLUMN] == 2
    for key, col in COLUMNS.items():
        assert res[col] == pytest.approx((a[key] * wa + b[key] * wb) / (wa + wb), rel=1e-9), col
