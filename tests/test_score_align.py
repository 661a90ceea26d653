"""gapeval score --align/--harmonize: a known shift and gains on a real Sentinel-2 crop are undone, the prediction file is
never touched, identity changes nothing, and pairs that cannot be aligned are listed, never silently scored."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import fourier_shift

import gapeval
from gapeval.cli import main

S2_STACK = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "s2" / "s2_l1c_virginia_13band_10m.tif"
SHIFT = (1.4, 2.0)
GAINS = np.array([0.9, 1.1, 1.0, 0.95])
OFFSETS = np.array([0.01, -0.005, 0.0, 0.02])
N, PAD = 192, 32
BANDS = ("B04", "B03", "B02", "B08")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """pred: a real S2 crop plus noise (an imperfect SR); target/clean: the crop; target/moved: the crop moved by SHIFT
    (exact Fourier shift of a larger crop) with per-band gains and offsets; target/far: moved by 2.5 px."""
    rasterio = pytest.importorskip("rasterio")
    from affine import Affine
    from rasterio.windows import Window

    from lpips_sat.raster import write_raster

    if not S2_STACK.is_file():
        pytest.skip("shared Sentinel-2 stack not available")
    with rasterio.open(S2_STACK) as ds:
        win = Window(300, 1100, N + 2 * PAD, N + 2 * PAD)
        big, transform, crs = ds.read([4, 3, 2, 8], window=win).astype(np.float64) / 10000.0, ds.window_transform(win), ds.crs
    transform = transform @ Affine.translation(PAD, PAD)
    clean = big[:, PAD:PAD + N, PAD:PAD + N]

    def moved(shift):
        return np.stack([np.fft.ifft2(fourier_shift(np.fft.fft2(b), shift)).real for b in big])[:, PAD:PAD + N, PAD:PAD + N]

    root = tmp_path_factory.mktemp("score_align")
    pred = clean + np.random.default_rng(0).normal(0.0, 0.01, clean.shape)
    sets = {
        "pred/scene.tif": pred,
        "clean/scene.tif": clean,
        "moved/scene.tif": moved(SHIFT) * GAINS[:, None, None] + OFFSETS[:, None, None],
        "far/scene.tif": moved((2.5, 0.0)),
    }
    sparse = clean.copy()
    sparse[:, 10:, :] = np.nan  # 10 valid rows only: too few pixels (once exposed borders are masked) to align
    sets["sparse/scene.tif"] = sparse
    for rel, data in sets.items():
        write_raster(root / rel, data.astype(np.float32), transform=transform, crs=crs, nodata=float("nan"), descriptions=BANDS)
    return {k.split("/")[0]: root / k for k in sets}


def _score(files, target: str, out: Path, *extra: str) -> tuple[int, dict[str, str], dict]:
    rc = main(["score", "--pred", str(files["pred"].parent), "--target", str(files[target].parent), "--out", str(out), "--weights",
               "random-tiny", "--tile", "128", "--no-progress", *extra])
    with open(out / "pairs.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return rc, rows[0], json.loads((out / "summary.json").read_text())


def test_known_shift_and_gain_are_undone_and_the_prediction_is_never_modified(files, tmp_path):
    before = _sha(files["pred"])
    rc, clean, _ = _score(files, "clean", tmp_path / "clean")
    assert rc == 0
    rc, row, summary = _score(files, "moved", tmp_path / "aligned", "--align", "shift", "--harmonize", "linear", "--report-raw")
    assert rc == 0 and row["status"] == "ok"
    assert abs(float(row["psnr"]) - float(clean["psnr"])) < 0.5  # the unshifted, ungained comparison
    assert float(row["raw_psnr"]) < float(clean["psnr"]) - 5  # what scoring the raw target measures: misregistration
    # per window (192 px in 128 px windows: 4 windows), the estimated displacement of the target
    assert float(row["align_dy"]) == pytest.approx(SHIFT[0], abs=0.1) and float(row["align_dx"]) == pytest.approx(SHIFT[1], abs=0.1)
    gains = np.array([float(row[f"harm_gain_{b}"]) for b in BANDS])
    np.testing.assert_allclose(gains, 1.0 / GAINS, rtol=0.01)  # target -> prediction
    assert 0 < float(row["align_masked_fraction"]) < 0.1  # the borders the correction exposed, not padded
    assert _sha(files["pred"]) == before
    note = summary["alignment"]
    assert note["align"] == "shift" and note["harmonize"] == "linear" and "psnr" in note["aligned"] and "raw_psnr" in note["raw"]
    assert "prediction" in note["direction"] and "never altered" in note["direction"]
    assert summary["config"]["align"] == "shift"  # read by gapeval gap to refuse mixed comparisons


@pytest.mark.parametrize("harmonize", ["none", "linear", "histogram"])
def test_identity_changes_nothing(files, tmp_path, harmonize):
    """Prediction and target identical (no shift, no gain): the aligned/harmonised run equals the plain one."""
    plain = gapeval.metrics.compute(*(np.stack([_read(files["clean"])] * 2)), metric="random-tiny")
    aligned = gapeval.metrics.compute(*(np.stack([_read(files["clean"])] * 2)), metric="random-tiny", align="shift", harmonize=harmonize)
    assert aligned["status"] == "ok" and aligned["align_dy"] == 0.0 and aligned["align_dx"] == 0.0
    for key in ("psnr", "ssim", "sam_deg", "rmse", "mae", "lpips_sat", "valid_fraction"):
        a, b = plain[key], aligned[key]
        assert (a == b) if np.isinf(a) else abs(a - b) <= 1e-6, key


def _read(path: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as ds:
        return ds.read()


def test_shift_above_max_shift_is_listed_not_scored(files, tmp_path, capsys):
    rc, row, summary = _score(files, "far", tmp_path / "far", "--align", "shift", "--max-shift", "1")
    assert rc == 3
    assert row["status"] == "not_alignable" and row["psnr"] == "" and row["lpips_sat"] == ""
    assert str(files["far"]) in row["reason"] and "max-shift" in row["reason"]
    assert summary["pred_sets"]["pred"]["n_not_alignable"] == 1
    assert "not_alignable pred/scene" in capsys.readouterr().out


def test_too_few_valid_pixels_to_harmonise_names_the_file(files, tmp_path):
    rc, row, _ = _score(files, "sparse", tmp_path / "sparse", "--harmonize", "linear")
    assert rc == 3 and row["status"] == "not_alignable"
    assert str(files["sparse"]) in row["reason"] and "valid pixels" in row["reason"]


def test_bad_combinations_are_refused(files, tmp_path, capsys):
    assert main(["score", "--pred", str(files["pred"].parent), "--target", str(files["clean"].parent), "--out", str(tmp_path / "o"),
                 "--weights", "random-tiny", "--report-raw"]) == 1
    assert "--report-raw" in capsys.readouterr().err
