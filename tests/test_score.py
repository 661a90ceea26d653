"""gapeval score: Python API and CLI on tiny real crops (examples/) with a random tiny LPIPS-Sat."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from affine import Affine
from scipy.ndimage import gaussian_filter
from skimage.metrics import peak_signal_noise_ratio

import gapeval.score as score_mod
import gapeval.scoring.scene as scene_mod
from gapeval.cli import main
from gapeval.score import score
from lpips_sat import LPIPSSat
from lpips_sat.errors import InputError, MissingFileError
from lpips_sat.raster import read_raster, write_raster

torch.set_num_threads(1)  # tiny networks: threads only add overhead on a shared machine
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCENES = ("fields", "town", "marsh_channels")


@pytest.fixture(scope="module")
def metric() -> LPIPSSat:
    return LPIPSSat.random()


def hr_of(name: str):
    return read_raster(EXAMPLES / "hr" / f"{name}.tif")


def reflectance(name: str) -> np.ndarray:
    return hr_of(name).data / 10000.0


def put(path: Path, data: np.ndarray, like: str, **kw) -> Path:
    """Write float reflectance ``data`` on the grid of example scene ``like`` (overrides via kw)."""
    r = hr_of(like)
    args = dict(transform=r.transform, crs=r.crs, dtype=str(data.dtype), descriptions=("B04", "B03", "B02", "B08"))
    args.update(kw)
    return write_raster(path, data, **args)


def blur(x: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    return np.stack([gaussian_filter(b, sigma) for b in x]).astype(np.float32)


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    """hr/ (example files, uint16 with scale metadata), lr/ (example files), pred/same (copies of the HR files)
    and pred/blur (Gaussian blur, float reflectance), for three scenes."""
    for sub in ("hr", "lr"):
        (tmp_path / sub).mkdir()
        for s in SCENES:
            shutil.copy(EXAMPLES / sub / f"{s}.tif", tmp_path / sub / f"{s}.tif")
    for s in SCENES:
        (tmp_path / "pred" / "same").mkdir(parents=True, exist_ok=True)
        shutil.copy(EXAMPLES / "hr" / f"{s}.tif", tmp_path / "pred" / "same" / f"{s}.tif")
        put(tmp_path / "pred" / "blur" / f"{s}.tif", blur(reflectance(s).astype(np.float32)), s)
    return tmp_path


def preds(root: Path, *names: str) -> dict[str, Path]:
    return {n: root / "pred" / n for n in names}


def by(records, pred_set, key):
    return next(r for r in records if r["pred_set"] == pred_set and r["key"] == key)


# ------------------------------------------------------------------------------------------ values


def test_values_against_independent_computations(dataset, metric):
    res = score(preds(dataset, "same", "blur"), dataset / "hr", metric=metric)
    assert len(res.records) == 6 and all(r["status"] == "ok" for r in res.records)
    same = by(res.records, "same", "town")
    assert (
        same["lpips_sat"] == 0.0
        and same["psnr"] == np.inf
        and same["ssim"] == pytest.approx(1.0)
        and same["sam_deg"] == pytest.approx(0, abs=1e-4)
    )
    assert same["valid_fraction"] == 1.0 and same["lpips_tiles"] == 1
    x = reflectance("town").astype(np.float32)
    b = blur(x)
    rec = by(res.records, "blur", "town")
    direct = float(metric(torch.from_numpy(b)[None], torch.from_numpy(x)[None]))
    assert rec["lpips_sat"] == pytest.approx(direct, rel=1e-5)
    assert rec["psnr"] == pytest.approx(peak_signal_noise_ratio(x.astype(np.float64), b.astype(np.float64), data_range=1.0), rel=1e-6)
    assert rec["rmse_B08"] == pytest.approx(np.sqrt(np.mean((b[3].astype(np.float64) - x[3]) ** 2)), rel=1e-6)
    assert np.isnan(rec["ergas"])  # no LR and no sr_factor: the ratio is unknown, so no number
    s = res.summary["pred_sets"]
    assert s["blur"]["metrics"]["lpips_sat"]["mean"] > 0 and s["same"]["metrics"]["lpips_sat"]["mean"] == 0
    assert s["blur"]["metrics"]["psnr"]["n"] == 3
    assert res.table("lpips_sat")["same"] == 0.0


def test_module_is_callable(dataset, metric):
    import gapeval
    import gapeval.score

    res = gapeval.score(preds(dataset, "blur"), dataset / "hr", metric=metric)  # the documented spelling
    assert isinstance(res, score_mod.ScoreResult) and len(res.records) == 3


def test_target_features_are_computed_once_per_tile(dataset, metric, monkeypatch):
    calls: list[str] = []
    original = metric.features

    def counting(x, name="input", prepared=False):
        calls.append(name)
        return original(x, name, prepared)

    monkeypatch.setattr(metric, "features", counting)
    score(preds(dataset, "same", "blur"), dataset / "hr", metric=metric, tile=32)
    # 3 scenes x 4 tiles of 32 px, one batch per scene: target once, each prediction once
    assert calls.count("target") == 3 and calls.count("same") == 3 and calls.count("blur") == 3


def test_tiles_give_the_same_classical_metrics(dataset, metric):
    whole = score(preds(dataset, "blur"), dataset / "hr", metric=metric)
    tiled = score(preds(dataset, "blur"), dataset / "hr", metric=metric, tile=32, batch_size=3)
    for a, b in zip(whole.records, tiled.records):
        assert a["key"] == b["key"] and b["lpips_tiles"] == 4
        for col in ("psnr", "ssim", "sam_deg", "rmse", "mae", "ssim_B02"):
            assert a[col] == pytest.approx(b[col], rel=1e-9), col
        assert 0 < b["lpips_sat"] < 10


def test_lr_metrics_and_ergas(dataset, metric):
    res = score(preds(dataset, "same", "blur"), dataset / "hr", lr=dataset / "lr", metric=metric)
    same = by(res.records, "same", "fields")
    # the example LR is the 4x4 block mean of the HR (rounded to DN): the exact HR is consistent with it
    assert same["refl_l1"] < 1e-4 and same["shift_px"] < 0.05 and same["spectral_sam_deg"] < 0.1
    assert same["improvement"] == 1.0 and same["tc_patches"] > 0
    blurred = by(res.records, "blur", "fields")
    assert blurred["improvement"] < 0.5 and blurred["ergas"] > 0
    x = reflectance("fields")
    b = blur(x.astype(np.float32)).astype(np.float64)
    expected = 100 * 0.25 * np.sqrt(np.mean(np.mean((b - x) ** 2, axis=(1, 2)) / x.mean(axis=(1, 2)) ** 2))
    assert blurred["ergas"] == pytest.approx(expected, rel=1e-6)
    assert score(preds(dataset, "blur"), dataset / "hr", metric=metric, sr_factor=4).records[0]["ergas"] == pytest.approx(
        by(res.records, "blur", SCENES[0])["ergas"], rel=1e-9
    )


# ------------------------------------------------------------------------------------------- masks


def test_nodata_is_masked_out_of_every_metric(tmp_path, metric):
    x = reflectance("town").astype(np.float32)
    b = blur(x)
    t = x.copy()
    t[:, :20, :] = -9999  # nodata stripe in the target
    put(tmp_path / "hr" / "a.tif", t, "town", nodata=-9999)
    put(tmp_path / "clean" / "a.tif", b, "town")
    junk = b.copy()
    junk[:, :20, :] = 0.9  # anything under the target's nodata must not matter
    put(tmp_path / "junk" / "a.tif", junk, "town")
    holes = b.copy()
    holes[:, 40:44, 10:20] = np.nan  # NaN where the target is valid: masked when asked, and reported
    holes[0, 50, 50] = np.inf
    put(tmp_path / "holes" / "a.tif", holes, "town")
    res = score({n: tmp_path / n for n in ("clean", "junk", "holes")}, tmp_path / "hr", metric=metric, invalid_pred="mask")
    clean, junk_r, holes_r = (by(res.records, n, "a") for n in ("clean", "junk", "holes"))
    assert clean["valid_fraction"] == pytest.approx(44 / 64) and clean["pred_invalid_fraction"] == 0
    for col in ("psnr", "ssim", "sam_deg", "rmse", "mae", "lpips_sat"):
        assert junk_r[col] == pytest.approx(clean[col], rel=1e-6), col
    assert holes_r["valid_fraction"] == pytest.approx((44 * 64 - 41) / 64**2)
    assert holes_r["pred_invalid_fraction"] == pytest.approx(41 / (44 * 64))
    assert np.isfinite([holes_r[c] for c in ("psnr", "ssim", "sam_deg", "lpips_sat")]).all()


def test_all_nodata_pair_is_skipped_never_scored(tmp_path, metric):
    x = reflectance("town").astype(np.float32)
    put(tmp_path / "hr" / "a.tif", x, "town")
    put(tmp_path / "hr" / "empty.tif", np.full_like(x, -9999), "town", nodata=-9999)
    put(tmp_path / "p" / "a.tif", blur(x), "town")
    put(tmp_path / "p" / "empty.tif", blur(x), "town")
    res = score({"p": tmp_path / "p"}, tmp_path / "hr", metric=metric, out=tmp_path / "out")
    rec = by(res.records, "p", "empty")
    assert rec["status"] == "skipped" and "no valid pixel" in rec["reason"]
    assert all(np.isnan(rec[c]) for c in ("psnr", "ssim", "lpips_sat", "mae"))
    assert res.summary["pred_sets"]["p"]["n_skipped"] == 1 and res.summary["pred_sets"]["p"]["metrics"]["psnr"]["n"] == 1
    assert res.skipped == [{"pred_set": "p", "key": "empty", "status": "skipped", "reason": rec["reason"]}]
    with open(tmp_path / "out" / "pairs.csv") as fh:
        row = next(r for r in csv.DictReader(fh) if r["key"] == "empty")
    assert row["status"] == "skipped" and row["psnr"] == "" and row["lpips_sat"] == ""
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["skipped"][0]["key"] == "empty"


# -------------------------------------------------------------------------------------- bad inputs


def test_geometry_checks(tmp_path, metric):
    x = reflectance("town").astype(np.float32)
    r = hr_of("town")
    put(tmp_path / "hr" / "a.tif", x, "town")
    cases = {
        "crs": dict(crs="EPSG:32633"),
        "offset": dict(transform=r.transform @ Affine.translation(1, 0)),
        "subpixel": dict(transform=r.transform @ Affine.translation(0.3, -0.2)),
    }
    for name, kw in cases.items():
        put(tmp_path / name / "a.tif", blur(x), "town", **kw)
    put(tmp_path / "shape" / "a.tif", blur(x)[:, :60], "town")
    for name, pattern in (("crs", "CRS differ"), ("offset", "offset by up to 1.00 px"), ("shape", "shapes differ")):
        with pytest.raises(InputError) as err:
            score({name: tmp_path / name}, tmp_path / "hr", metric=metric)
        assert pattern in str(err.value) and f"{name}/a.tif" in str(err.value) and "hr/a.tif" in str(err.value)
    assert score({"s": tmp_path / "subpixel"}, tmp_path / "hr", metric=metric).records[0]["status"] == "ok"  # within half a pixel
    coarse = x.reshape(4, 32, 2, 32, 2).mean(axis=(2, 4))
    put(tmp_path / "coarse" / "a.tif", coarse, "town", transform=r.transform @ Affine.scale(2))
    with pytest.raises(InputError, match="--resample"):
        score({"c": tmp_path / "coarse"}, tmp_path / "hr", metric=metric)
    rec = score({"c": tmp_path / "coarse"}, tmp_path / "hr", metric=metric, resample="bilinear").records[0]
    assert rec["status"] == "ok" and rec["valid_fraction"] > 0.9 and 20 < rec["psnr"] < 60


def test_band_and_scale_errors(tmp_path, metric):
    x = reflectance("town").astype(np.float32)
    put(tmp_path / "hr" / "a.tif", x, "town")
    put(tmp_path / "rgb" / "a.tif", x[:3], "town", descriptions=None)
    with pytest.raises(InputError, match="rgb/a.tif: has 3 bands.*--pred-bands"):
        score({"p": tmp_path / "rgb"}, tmp_path / "hr", metric=metric)
    dn = np.rint(x * 10000).astype(np.uint16)
    put(tmp_path / "dn" / "a.tif", dn, "town")  # digital numbers without scale metadata
    with pytest.raises(InputError, match="dn/a.tif.*digital numbers.*--pred-scale 10000"):
        score({"p": tmp_path / "dn"}, tmp_path / "hr", metric=metric)
    assert score({"p": tmp_path / "dn"}, tmp_path / "hr", metric=metric, pred_scale=10000).records[0]["psnr"] > 60
    put(tmp_path / "refl" / "a.tif", x, "town")
    with pytest.raises(InputError, match="refl/a.tif.*implausibly small.*--pred-scale"):
        score({"p": tmp_path / "refl"}, tmp_path / "hr", metric=metric, pred_scale=10000)
    bgrn = x[[2, 1, 0, 3]]
    put(tmp_path / "ps" / "a.tif", bgrn, "town", descriptions=None)
    rec = score({"p": tmp_path / "ps"}, tmp_path / "hr", metric=metric, pred_bands="planetscope-4b").records[0]
    assert rec["lpips_sat"] == 0.0 and rec["psnr"] == np.inf  # reordered to R, G, B, NIR


def test_folder_errors_and_corrupt_files(dataset, metric):
    (dataset / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        score({"e": dataset / "empty"}, dataset / "hr", metric=metric)
    with pytest.raises(MissingFileError):
        score({"x": dataset / "nowhere"}, dataset / "hr", metric=metric)
    (dataset / "pred" / "same" / "town.tif").unlink()
    with pytest.raises(InputError, match="targets without prediction in same.*town"):
        score(preds(dataset, "same"), dataset / "hr", metric=metric)
    res = score(preds(dataset, "same", "blur"), dataset / "hr", metric=metric, allow_missing=True)
    assert len(res.records) == 5 and res.summary["unpaired"] == {"targets without prediction in same": ["town"]}
    (dataset / "pred" / "blur" / "town.tif").write_bytes(b"II*\x00 not really a tiff")
    with pytest.raises(InputError, match="blur/town.tif.*corrupt"):
        score(preds(dataset, "blur"), dataset / "hr", metric=metric)


# ---------------------------------------------------------------------------------- outputs, resume


def test_interrupted_run_resumes_without_losing_rows(dataset, metric, monkeypatch):
    out = dataset / "out"
    real = scene_mod.score_scene
    calls = []

    def interrupted(plan, *args, **kwargs):
        calls.append(plan.key)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(plan, *args, **kwargs)

    monkeypatch.setattr(scene_mod, "score_scene", interrupted)
    with pytest.raises(KeyboardInterrupt):
        score(preds(dataset, "same", "blur"), dataset / "hr", metric=metric, out=out)
    lines = (out / "pairs.csv").read_text().splitlines()
    assert len(lines) == 1 + 2  # header + both predictions of the first scene
    with open(out / "pairs.csv", "a") as fh:
        fh.write("same,town,ok,,0.5")  # a row cut short by the interruption
    with pytest.raises(InputError, match="--resume"):
        score(preds(dataset, "same", "blur"), dataset / "hr", metric=metric, out=out)
    calls.clear()
    monkeypatch.setattr(scene_mod, "score_scene", lambda plan, *a, **k: (calls.append(plan.key), real(plan, *a, **k))[1])
    res = score(preds(dataset, "same", "blur"), dataset / "hr", metric=metric, out=out, resume=True)
    assert sorted(calls) == sorted(set(SCENES) - {lines[1].split(",")[1]})  # only the scenes not yet written
    fresh = score(preds(dataset, "same", "blur"), dataset / "hr", metric=metric)
    assert len(res.records) == len(fresh.records) == 6
    for a, b in zip(res.records, fresh.records):
        assert (a["pred_set"], a["key"]) == (b["pred_set"], b["key"])
        assert a["lpips_sat"] == pytest.approx(b["lpips_sat"], rel=1e-6) and a["psnr"] == pytest.approx(b["psnr"], rel=1e-9)
    assert len((out / "pairs.csv").read_text().splitlines()) == 7
    calls.clear()
    score(preds(dataset, "same", "blur"), dataset / "hr", metric=metric, out=out, resume=True)
    assert calls == []  # nothing left to do
    put(dataset / "pred" / "blur" / "town.tif", blur(reflectance("town").astype(np.float32), 3.0), "town")  # a file changed
    score(preds(dataset, "same", "blur"), dataset / "hr", metric=metric, out=out, resume=True)
    assert calls == ["town"]
    calls.clear()
    res = score(preds(dataset, "same", "blur"), dataset / "hr", metric=metric, out=out, resume=True, data_range=2.0)  # other config
    assert sorted(calls) == sorted(SCENES) and len(res.records) == 6
    assert len((out / "pairs.csv").read_text().splitlines()) == 7


def test_outputs_maps_and_workers(dataset, metric):
    out = dataset / "out"
    res = score(preds(dataset, "same", "blur"), dataset / "hr", lr=dataset / "lr", metric=metric, out=out, maps=True, workers=2)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config_hash"] == res.config.hash() and summary["weights"]["testing_only"] is True
    assert len(summary["weights"]["sha256"]) == 64 and "rasterio" in summary["versions"]
    st = summary["pred_sets"]["blur"]["metrics"]["lpips_sat"]
    assert st["n"] == 3 and st["ci_low"] <= st["mean"] <= st["ci_high"]
    with open(out / "pairs.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 and rows[0]["target_sha256"] and rows[0]["pred_sha256"] and rows[0]["lr_sha256"]
    m = read_raster(out / "maps" / "blur" / "town.tif")
    t = hr_of("town")
    assert m.transform == t.transform and m.crs == t.crs and m.data.shape == (1, 64, 64) and np.isfinite(m.data).all()
    assert m.data.mean() > 0 and read_raster(out / "maps" / "same" / "town.tif").data.max() == 0
    serial = score(preds(dataset, "same", "blur"), dataset / "hr", lr=dataset / "lr", metric=metric, workers=1)
    for a, b in zip(res.records, serial.records):
        assert a["key"] == b["key"] and a["lpips_sat"] == pytest.approx(b["lpips_sat"], rel=1e-6) and a["shift_px"] == b["shift_px"]


def test_cli_exit_codes(dataset, capsys):
    out = dataset / "out"
    code = main(
        [
            "score",
            "--pred",
            f"copy={dataset / 'pred' / 'same'}",
            "--pred",
            str(dataset / "pred" / "blur"),
            "--target",
            str(dataset / "hr"),
            "--out",
            str(out),
            "--weights",
            "random-tiny",
            "--no-progress",
            "--device",
            "cpu",
        ]
    )
    text = capsys.readouterr().out
    assert code == 0 and "copy" in text and "blur" in text and "random network" in text
    with open(out / "pairs.csv") as fh:
        assert {r["pred_set"] for r in csv.DictReader(fh)} == {"copy", "blur"}
    code = main(
        [
            "score",
            "--pred",
            str(dataset / "pred" / "blur"),
            "--target",
            str(dataset / "nowhere"),
            "--out",
            str(out),
            "--weights",
            "random-tiny",
        ]
    )
    assert code == 1 and "nowhere" in capsys.readouterr().err
    code = main(["score", "--pred", str(dataset / "pred" / "blur"), "--target", str(dataset / "hr"), "--out", str(dataset / "o2"),
                 "--weights", "no-such-weights"])
    err = capsys.readouterr().err
    assert code == 1 and "no-such-weights" in err and "lpips-sat-s2-rn18" in err  # unknown weights: the known names are listed
    with pytest.raises(SystemExit) as exc:
        main(["score", "--pred", str(dataset / "pred" / "blur"), "--out", str(out)])
    assert exc.value.code == 2


def test_examples_rank_simple_predictions_sensibly(metric, tmp_path):
    """The committed examples: bicubic and shifted (bicubic moved 2 px = 0.5 LR px in x and y)."""
    res = score({n: EXAMPLES / "pred" / n for n in ("bicubic", "shifted")}, EXAMPLES / "hr", lr=EXAMPLES / "lr", metric=metric)
    for key in {r["key"] for r in res.records}:
        bic, sh = by(res.records, "bicubic", key), by(res.records, "shifted", key)
        assert bic["psnr"] > sh["psnr"] and bic["refl_l1"] < sh["refl_l1"]
        assert bic["shift_px"] < 0.1 and sh["shift_px"] == pytest.approx(np.hypot(0.5, 0.5), abs=0.25)
        assert bic["tc_patches"] > 0 and bic["omission"] > 0.9  # bicubic of the LR adds no detail: omission
