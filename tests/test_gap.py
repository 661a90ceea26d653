"""gapeval.gap: reading score results, matched-scene gaps with CIs/tests, spectra, feature-space distances,
report files, the CLI, and clear errors for bad inputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from scipy import ndimage

from gapeval import cli
from gapeval.gap import Design, GapConfig, gap_analysis, high_frequency_energy, load_design, match, radial_psd, read_run
from lpips_sat import LPIPSSat
from lpips_sat.errors import InputError, MissingFileError

BANDS = ("B04", "B03", "B02", "B08")
COLUMNS = ["pred_set", "key", "status", "reason", "valid_fraction", "height", "width", "lpips_sat", "lpips_tiles", "psnr", "ssim",
           "sam_deg", "psnr_B04", "seconds", "config_hash", "pred_path", "target_path", "pred_sha256", "target_sha256"]


def write_pairs(folder: Path, rows: list[dict], pred_set: str = "sr") -> Path:
    """A ``pairs.csv`` laid out like the one of ``gapeval score``."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "pairs.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            base = {"pred_set": pred_set, "status": "ok", "reason": "", "valid_fraction": 1.0, "height": 64, "width": 64, "lpips_tiles": 1,
                    "seconds": 0.1, "config_hash": "0123456789012345", "pred_path": "", "target_path": "", "pred_sha256": "p", "target_sha256": "t"}
            w.writerow({**base, **r})
    return folder


def table_rows(keys, lpips, psnr, **extra):
    return [{"key": k, "lpips_sat": a, "psnr": b, "ssim": 0.8, "sam_deg": 2.0 + 0.1 * i, "psnr_B04": b, **{c: v[i] for c, v in extra.items()}}
            for i, (k, a, b) in enumerate(zip(keys, lpips, psnr))]


@pytest.fixture
def scenes():
    rng = np.random.default_rng(0)
    keys = [f"scene_{i:02d}" for i in range(30)]
    difficulty = rng.normal(0.25, 0.05, 30)
    return keys, difficulty, rng


def fast(**kw) -> GapConfig:
    return GapConfig(images=False, n_resamples=500, **kw)


# ---------------------------------------------------------------------------------------------- tables and statistics
def test_identical_conditions_give_zero_gap_and_no_significance(tmp_path, scenes):
    keys, d, _ = scenes
    a = write_pairs(tmp_path / "a", table_rows(keys, d, 30 - 10 * d))
    b = write_pairs(tmp_path / "b", table_rows(keys, d, 30 - 10 * d))
    res = gap_analysis(Design({"a": a, "b": b}, [("a - b", "a", "b")]), tmp_path / "out", fast())
    for m in ("lpips_sat", "psnr", "sam_deg"):
        s = res["comparisons"][0]["metrics"][m]
        assert s["gap"] == 0 and s["ci_low"] <= 0 <= s["ci_high"] and not s["significant"] and s["p_value"] == 1.0
    assert "psnr_B04" not in res["metrics"] and "valid_fraction" not in res["metrics"] and "lpips_tiles" not in res["metrics"]
    assert (tmp_path / "out" / "gap.json").is_file() and (tmp_path / "out" / "report.html").is_file()


def test_known_shift_is_significant_and_exchangeable_noise_is_not(tmp_path, scenes):
    keys, d, rng = scenes
    base = write_pairs(tmp_path / "base", table_rows(keys, d + rng.normal(0, 0.005, 30), 30 - 10 * d))
    same = write_pairs(tmp_path / "same", table_rows(keys, d + rng.normal(0, 0.005, 30), 30 - 10 * d + rng.normal(0, 0.05, 30)))
    worse = write_pairs(tmp_path / "worse", table_rows(keys, d + 0.02 + rng.normal(0, 0.005, 30), 30 - 10 * d - 1.0 + rng.normal(0, 0.05, 30)))
    design = Design({"base": base, "same": same, "worse": worse}, [("same - base", "same", "base"), ("worse - base", "worse", "base")])
    res = gap_analysis(design, tmp_path / "out", fast())
    null, shift = res["comparisons"]
    assert res["n_tests"] == 2 * len(res["metrics"])
    for m in ("lpips_sat", "psnr"):
        assert null["metrics"][m]["ci_low"] <= 0 <= null["metrics"][m]["ci_high"]
        assert not null["metrics"][m]["significant"]
    s = shift["metrics"]["lpips_sat"]
    assert s["significant"] and s["ci_low"] > 0 and s["gap"] == pytest.approx(0.02, abs=0.004)
    assert s["p_holm"] >= s["p_value"] and s["rank_biserial"] > 0.9 and s["cohens_dz"] > 2
    p = shift["metrics"]["psnr"]
    assert p["significant"] and p["ci_high"] < 0 and p["direction"] == "higher"
    ranks = {r["run"]: r["ranks"]["lpips_sat"] for r in res["rankings"][0]["rows"]}
    assert ranks["worse"] == 3
    assert (tmp_path / "out" / "figures" / "forest.png").stat().st_size > 1000
    md = (tmp_path / "out" / "report.md").read_text()
    assert "worse - base" in md and "Ranking" in md and "figures/forest.png" in md
    on_disk = json.loads((tmp_path / "out" / "gap.json").read_text())
    assert on_disk["comparisons"][1]["metrics"]["lpips_sat"]["gap"] == pytest.approx(s["gap"])


def test_unmatched_scenes_are_an_error_unless_allowed(tmp_path, scenes):
    keys, d, _ = scenes
    a = write_pairs(tmp_path / "a", table_rows(keys, d, 30 - 10 * d))
    b = write_pairs(tmp_path / "b", table_rows(keys[:25], d[:25] + 0.01, 30 - 10 * d[:25]))
    design = Design({"a": a, "b": b}, [("a - b", "a", "b")])
    with pytest.raises(InputError, match=r"do not hold the same scenes.*only in a \(5\): scene_25"):
        gap_analysis(design, tmp_path / "out", fast())
    res = gap_analysis(design, tmp_path / "out", fast(allow_unmatched=True))
    assert res["comparisons"][0]["n_matched"] == 25 and res["comparisons"][0]["metrics"]["lpips_sat"]["n"] == 25
    c = write_pairs(tmp_path / "c", table_rows(["other_1", "other_2"], [0.1, 0.2], [20, 21]))
    with pytest.raises(InputError, match="no scene in common"):
        gap_analysis(Design({"a": a, "c": c}, [("a - c", "a", "c")]), tmp_path / "out", fast(allow_unmatched=True))


def test_mismatched_runs_are_errors(tmp_path, scenes):
    keys, d, _ = scenes
    a = write_pairs(tmp_path / "a", table_rows(keys, d, 30 - 10 * d))
    rows = table_rows(keys, d, 30 - 10 * d)
    rows[3]["target_sha256"] = "different"
    b = write_pairs(tmp_path / "b", rows)
    with pytest.raises(InputError, match="different targets.*scene_03"):
        gap_analysis(Design({"a": a, "b": b}, [("a - b", "a", "b")]), tmp_path / "out", fast())
    other = tmp_path / "other"
    other.mkdir()
    (other / "pairs.csv").write_text("key,score_x,pred_path\nscene_00,1.0,x\n")
    with pytest.raises(InputError, match="share no metric"):
        gap_analysis(Design({"a": a, "o": other}, [("a - o", "a", "o")]), tmp_path / "out", fast())
    with pytest.raises(InputError, match="not among the runs"):
        gap_analysis(Design({"a": a}, [("a - z", "a", "z")]), tmp_path / "out", fast())
    with pytest.raises(InputError, match="with itself"):
        gap_analysis(Design({"a": a}, [("a - a", "a", "a")]), tmp_path / "out", fast())
    with pytest.raises(InputError, match="no numeric column"):
        gap_analysis(Design({"a": a, "b": a}, [("a - b", "a", "b")]), tmp_path / "out", fast(metrics=["lpips"]))


def test_empty_missing_and_ambiguous_runs(tmp_path, scenes):
    keys, d, _ = scenes
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "pairs.csv").write_text(",".join(COLUMNS) + "\n")
    with pytest.raises(InputError, match="no scored pairs"):
        read_run("e", empty)
    with pytest.raises(MissingFileError, match="does not exist"):
        read_run("m", tmp_path / "missing")
    (tmp_path / "noscore").mkdir()
    with pytest.raises(MissingFileError, match="gapeval score"):
        read_run("n", tmp_path / "noscore")
    two = write_pairs(tmp_path / "two", table_rows(keys, d, 30 - 10 * d))
    with (two / "pairs.csv").open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        for r in table_rows(keys, d + 0.05, 30 - 10 * d):
            w.writerow({**{c: "" for c in COLUMNS}, **r, "pred_set": "other", "status": "ok"})
    with pytest.raises(InputError, match="2 prediction sets"):
        read_run("t", two)
    run = read_run("t", f"{two}#other")
    assert len(run.keys) == 30 and run.numeric["lpips_sat"][0] == pytest.approx(d[0] + 0.05)
    with pytest.raises(InputError, match="not in"):
        read_run("t", f"{two}#nope")
    dup = write_pairs(tmp_path / "dup", table_rows(keys[:3] + keys[:1], d[:4], d[:4]))
    with pytest.raises(InputError, match="more than once"):
        read_run("d", dup)


def test_failed_pairs_become_nan_and_are_dropped_pairwise(tmp_path, scenes):
    keys, d, _ = scenes
    rows = table_rows(keys, d, 30 - 10 * d)
    rows[0].update(status="skipped", reason="all nodata", lpips_sat="", psnr="")
    a = write_pairs(tmp_path / "a", rows)
    b = write_pairs(tmp_path / "b", table_rows(keys, d, 30 - 10 * d))
    res = gap_analysis(Design({"a": a, "b": b}, [("a - b", "a", "b")]), tmp_path / "out", fast())
    assert res["comparisons"][0]["metrics"]["lpips_sat"]["n"] == 29
    assert np.isnan(read_run("a", a).numeric["ssim"][0])


def test_match_orders_by_key(tmp_path, scenes):
    keys, d, _ = scenes
    a = read_run("a", write_pairs(tmp_path / "a", table_rows(keys, d, d)))
    b = read_run("b", write_pairs(tmp_path / "b", table_rows(keys[::-1], d[::-1], d[::-1])))
    ia, ib, unmatched = match(a, b)
    assert not unmatched
    np.testing.assert_array_equal(a.numeric["lpips_sat"][ia], b.numeric["lpips_sat"][ib])


# ---------------------------------------------------------------------------------------------- CLI and design file
def test_cli_pairs_and_design(tmp_path, scenes, capsys):
    keys, d, rng = scenes
    a = write_pairs(tmp_path / "res" / "a", table_rows(keys, d, 30 - 10 * d))
    b = write_pairs(tmp_path / "res" / "b", table_rows(keys, d + 0.03 + rng.normal(0, 0.003, 30), 30 - 10 * d))
    argv = ["gap", "--run", f"a={a}", "--run", f"b={b}", "--pairs", "b:a", "--out", str(tmp_path / "o1"), "--no-images", "--n-resamples", "300"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "b - a" in out and "significant" in out
    design = tmp_path / "design.yaml"
    design.write_text("runs:\n  a: res/a\n  b: res/b\nconditions:\n  a: {model: m1, input: synthetic}\n  b: {model: m1, input: real}\n"
                      "comparisons:\n  - {name: 'real - synthetic', a: b, b: a}\n")
    assert cli.main(["gap", "--design", str(design), "--out", str(tmp_path / "o2"), "--no-images", "--group-by", "input"]) == 0
    res = json.loads((tmp_path / "o2" / "gap.json").read_text())
    assert res["comparisons"][0]["name"] == "real - synthetic" and {t["group"] for t in res["rankings"]} == {"synthetic", "real"}
    assert cli.main(["gap", "--run", f"a={a}", "--pairs", "a:zzz", "--out", str(tmp_path / "o3"), "--no-images"]) == 1
    assert "not among the runs" in capsys.readouterr().err
    assert cli.main(["gap", "--run", "nonsense", "--pairs", "a:b", "--out", str(tmp_path / "o3")]) == 1
    assert "NAME=FOLDER" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("comparisons:\n  - {a: x}\n")
    with pytest.raises(InputError, match="needs keys 'a' and 'b'"):
        load_design(bad)
    assert cli.main(["gap", "--out", str(tmp_path / "o4")]) == 2  # no runs, neither --design nor --pairs
    assert "exactly two --run" in capsys.readouterr().err
    c = write_pairs(tmp_path / "res" / "c", table_rows(keys, d, 30 - 10 * d))
    three = ["gap", "--run", f"a={a}", "--run", f"b={b}", "--run", f"c={c}", "--out", str(tmp_path / "o5"), "--no-images"]
    assert cli.main(three) == 2 and "--pairs" in capsys.readouterr().err


def test_two_runs_need_no_pairs(tmp_path, scenes, capsys):
    keys, d, rng = scenes
    a = write_pairs(tmp_path / "a", table_rows(keys, d, 30 - 10 * d))
    b = write_pairs(tmp_path / "b", table_rows(keys, d + 0.03 + rng.normal(0, 0.003, 30), 30 - 10 * d))
    assert cli.main(["gap", "--run", f"new={b}", "--run", f"old={a}", "--out", str(tmp_path / "o"), "--no-images", "--n-resamples", "300"]) == 0
    res = json.loads((tmp_path / "o" / "gap.json").read_text())
    (comp,) = res["comparisons"]
    assert (comp["name"], comp["a"], comp["b"]) == ("new - old", "new", "old")  # first run minus second
    assert comp["metrics"]["lpips_sat"]["gap"] == pytest.approx(0.03, abs=0.002)
    assert "underpowered" not in capsys.readouterr().out  # 30 scenes: 2/2^30 is far below alpha / n_tests


def test_smallest_wilcoxon_p_is_two_over_two_to_the_n():
    from gapeval.gap import scenes_needed
    from gapeval.stats import smallest_wilcoxon_p, wilcoxon_signed_rank

    for n in range(1, 12):
        assert smallest_wilcoxon_p(n) == pytest.approx(2.0 / 2 ** n)
    # no outcome of 6 non-zero differences gets below it: all 64 sign patterns of ranks 1..6
    signs = ((np.arange(64)[:, None] >> np.arange(6)) & 1) * 2 - 1
    assert min(wilcoxon_signed_rank(s * np.arange(1.0, 7.0))["pvalue"] for s in signs) == pytest.approx(2 / 64)
    for m in (1, 4, 30, 200):
        n = scenes_needed(m, 0.05)
        assert smallest_wilcoxon_p(n) * m < 0.05 <= smallest_wilcoxon_p(n - 1) * m


def test_few_scenes_are_flagged_underpowered_and_explained(tmp_path, scenes, capsys):
    keys, d, rng = scenes
    k6, d6 = keys[:6], d[:6]
    a = write_pairs(tmp_path / "a", table_rows(k6, d6, 30 - 10 * d6))
    b = write_pairs(tmp_path / "b", table_rows(k6, d6 + 0.05 + rng.normal(0, 0.002, 6), 30 - 10 * d6 - 2 + rng.normal(0, 0.01, 6)))
    assert cli.main(["gap", "--run", f"b={b}", "--run", f"a={a}", "--out", str(tmp_path / "o"), "--no-images", "--n-resamples", "300"]) == 0
    out = capsys.readouterr().out
    res = json.loads((tmp_path / "o" / "gap.json").read_text())
    s = res["comparisons"][0]["metrics"]["lpips_sat"]
    # every scene is worse: the smallest p 6 scenes allow, which Holm over 4 tests lifts above 0.05
    assert res["n_tests"] == 4 and s["p_value"] == pytest.approx(2 / 64) and s["ci_low"] > 0
    assert s["underpowered"] and not s["significant"] and s["ci_excludes_zero"]
    assert "n.s. (underpowered)" in out and "cannot be significant" in out and "not adjusted for the other tests" in out
    assert "no (underpowered)" in (tmp_path / "o" / "report.md").read_text()
    # the same comparison tested alone is reachable: 2/64 < 0.05
    assert cli.main(["gap", "--run", f"b={b}", "--run", f"a={a}", "--metrics", "lpips_sat", "--out", str(tmp_path / "o1"), "--no-images",
                     "--n-resamples", "300"]) == 0
    alone = json.loads((tmp_path / "o1" / "gap.json").read_text())["comparisons"][0]["metrics"]["lpips_sat"]
    assert alone["significant"] and not alone["underpowered"]


# ---------------------------------------------------------------------------------------------- spectra
def test_radial_psd_of_white_noise_is_flat_at_its_variance():
    rng = np.random.default_rng(1)
    noise = rng.normal(0, 0.02, (2, 128, 128))
    f, psd = radial_psd(noise, bins=16)
    assert f[0] == pytest.approx(0.5 / 32)
    np.testing.assert_allclose(psd[2:], 0.02 ** 2, rtol=0.25)
    assert np.mean(psd[2:]) == pytest.approx(0.02 ** 2, rel=0.05)


def test_high_frequency_energy_closed_form_and_blur():
    rng = np.random.default_rng(2)
    noise = rng.normal(0, 0.05, (1, 128, 128))
    cutoff = 0.125
    # white noise: energy spread evenly over the [-0.5, 0.5]^2 frequency square; the disc of radius c holds pi c^2
    assert high_frequency_energy(noise, cutoff=cutoff) == pytest.approx(0.05 ** 2 * (1 - np.pi * cutoff ** 2), rel=0.05)
    smooth = ndimage.gaussian_filter(noise, (0, 2, 2))
    assert high_frequency_energy(smooth, cutoff=cutoff) < 0.05 * high_frequency_energy(noise, cutoff=cutoff)


# ---------------------------------------------------------------------------------------------- with images
def _write(path: Path, data: np.ndarray) -> str:
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0], dtype="float32",
                       crs=CRS.from_epsg(32618), transform=Affine(10, 0, 440000, 0, -10, 4170000)) as ds:
        ds.write(data.astype(np.float32))
        for i, b in enumerate(BANDS, 1):
            ds.set_band_description(i, b)
    return str(path)


def test_image_analysis_distances_spectra_and_report(tmp_path):
    rng = np.random.default_rng(3)
    img_dir = tmp_path / "img"
    img_dir.mkdir()
    n = 8
    keys = [f"s{i}" for i in range(n)]
    runs: dict[str, list[dict]] = {"copy": [], "blur": [], "noisy": []}
    for i, k in enumerate(keys):
        field = ndimage.gaussian_filter(rng.normal(0, 1, (4, 64, 64)), (0, 1.5, 1.5))
        hr = np.clip(0.2 + 0.08 * field / field.std() + np.array([0.0, 0.02, -0.03, 0.1])[:, None, None], 0.01, 0.9)
        t = _write(img_dir / f"{k}_hr.tif", hr)
        preds = {"copy": hr, "blur": ndimage.gaussian_filter(hr, (0, 2, 2)), "noisy": hr + rng.normal(0, 0.03, hr.shape)}
        for name, arr in preds.items():
            runs[name].append({"key": k, "lpips_sat": float(np.abs(arr - hr).mean()), "psnr": 30.0, "pred_path": _write(img_dir / f"{k}_{name}.tif", arr),
                               "target_path": t})
    folders = {name: write_pairs(tmp_path / name, rows) for name, rows in runs.items()}
    design = Design(folders, [("blur - copy", "blur", "copy"), ("noisy - copy", "noisy", "copy")])
    metric = LPIPSSat.random()
    res = gap_analysis(design, tmp_path / "out", GapConfig(n_resamples=300, feature_tile=32, kid_subsets=20), metric=metric)
    dist = res["distribution"]
    assert dist["copy"]["n_tiles_sr"] == dist["copy"]["n_tiles_hr"] == 4 * n
    assert dist["copy"]["fd"] == pytest.approx(0.0, abs=1e-6)
    assert abs(dist["copy"]["kid"]) < 3 * dist["copy"]["kid_std"] + 1e-6
    assert dist["blur"]["fd"] > 1e-3 and dist["noisy"]["fd"] > 1e-3
    assert dist["copy"]["hf_ratio_mean"] == pytest.approx(1.0)
    assert dist["blur"]["hf_ratio_mean"] < 0.5 and dist["noisy"]["hf_ratio_mean"] > 1.2
    for band in BANDS:
        assert dist["copy"]["bands"][band]["wasserstein"] == pytest.approx(0.0, abs=1e-9)
        assert dist["noisy"]["bands"][band]["wasserstein"] > 0.002  # ~ (sqrt(s^2 + 0.03^2) - s) sqrt(2/pi) for Gaussians, s ~ 0.08
    np.testing.assert_allclose(res["psd"]["runs"]["copy"], res["psd"]["hr"])
    hf = {c["name"]: c["metrics"]["log10_hf_ratio"] for c in res["comparisons"]}
    assert hf["blur - copy"]["gap"] < -0.3 and hf["blur - copy"]["ci_high"] < 0
    assert hf["noisy - copy"]["gap"] > 0.1 and hf["noisy - copy"]["ci_low"] > 0
    for fig in ("forest.png", "psd.png", "band_histograms.png"):
        assert (tmp_path / "out" / "figures" / fig).stat().st_size > 1000
    assert len(list((tmp_path / "out" / "cache" / "features").glob("*.npy"))) == 4 * n  # 3 SR sets + targets once
    again = gap_analysis(design, tmp_path / "out", GapConfig(n_resamples=300, feature_tile=32, kid_subsets=20), metric=metric)
    assert again["distribution"]["blur"]["fd"] == pytest.approx(dist["blur"]["fd"])  # features reused from the cache


def test_missing_image_files_name_the_run_and_the_way_out(tmp_path, scenes):
    keys, d, _ = scenes
    rows = table_rows(keys[:3], d[:3], d[:3])
    for r in rows:
        r.update(pred_path=str(tmp_path / "gone.tif"), target_path=str(tmp_path / "gone_hr.tif"))
    a = write_pairs(tmp_path / "a", rows)
    b = write_pairs(tmp_path / "b", rows)
    with pytest.raises(MissingFileError, match=r"run 'a', scene 'scene_00'.*--no-images"):
        gap_analysis(Design({"a": a, "b": b}, [("a - b", "a", "b")]), tmp_path / "out", GapConfig(n_resamples=100), metric=LPIPSSat.random())


def test_degenerate_figure_panels_are_skipped(tmp_path):
    from PIL import Image

    from gapeval.plots import band_histograms, forest_plot

    rng = np.random.default_rng(0)
    const = np.full((2, 500), 0.1)
    assert band_histograms({"a": const.copy()}, const.copy(), ["B04", "B08"], tmp_path / "none.png") is None
    varied = const.copy()
    varied[1] = rng.uniform(0, 0.4, 500)
    path = band_histograms({"a": varied.copy()}, varied, ["B04", "B08"], tmp_path / "one.png")  # only B08 varies
    both = band_histograms({"a": varied + rng.normal(0, 0.01, (2, 500))}, varied + rng.normal(0, 0.01, (2, 500)), ["B04", "B08"],
                           tmp_path / "two.png")
    with Image.open(path) as one, Image.open(both) as two:
        assert one.size[0] < 0.75 * two.size[0]  # one panel instead of two
    zero = {"gap": 0.0, "ci_low": 0.0, "ci_high": 0.0, "significant": False}
    moved = {"gap": 0.1, "ci_low": 0.05, "ci_high": 0.15, "significant": True}
    assert forest_plot([{"name": "x", "metrics": {"m": zero}}], ["m"], tmp_path / "f.png") is None
    assert forest_plot([{"name": "x", "metrics": {"m": zero, "n": moved}}], ["m", "n"], tmp_path / "f.png") is not None


# ---------------------------------------------------------------------------------------------- scoring settings
def _with_summary(folder: Path, **config) -> Path:
    (folder / "summary.json").write_text(json.dumps({"command": "gapeval score", "config": config}))
    return folder


def test_runs_scored_with_different_settings_are_refused_unless_allowed(tmp_path, scenes, capsys):
    keys, d, _ = scenes
    a = _with_summary(write_pairs(tmp_path / "a", table_rows(keys, d, 30 - 10 * d)), protocol="gapeval", align="shift", harmonize="linear")
    b = _with_summary(write_pairs(tmp_path / "b", table_rows(keys, d + 0.01, 30 - 10 * d)), protocol="gapeval", align="none", harmonize="linear")
    design = Design({"a": a, "b": b}, [("a - b", "a", "b")])
    with pytest.raises(InputError, match=r"'a - b'.*--align shift vs none.*--allow-mixed"):
        gap_analysis(design, tmp_path / "out", fast())
    res = gap_analysis(design, tmp_path / "out", fast(allow_mixed=True))
    assert res["comparisons"][0]["metrics"]["lpips_sat"]["gap"] == pytest.approx(-0.01)
    assert any("different settings" in n for n in res["notes"])
    assert res["runs"]["a"]["scoring"] == {"protocol": "gapeval", "align": "shift", "harmonize": "linear"}
    # the CLI: exit 1 with the reason, then --allow-mixed
    assert cli.main(["gap", "--run", f"a={a}", "--run", f"b={b}", "--out", str(tmp_path / "cli"), "--no-images"]) == 1
    assert "--allow-mixed" in capsys.readouterr().err
    assert cli.main(["gap", "--run", f"a={a}", "--run", f"b={b}", "--out", str(tmp_path / "cli"), "--no-images", "--allow-mixed"]) == 0
    # a protocol difference is refused too; runs from before the options existed count as gapeval/none/none
    c = _with_summary(write_pairs(tmp_path / "c", table_rows(keys, d, 30 - 10 * d)), protocol="opensr-test")
    old = _with_summary(write_pairs(tmp_path / "old", table_rows(keys, d, 30 - 10 * d)), weights="x")
    with pytest.raises(InputError, match="--protocol opensr-test vs gapeval"):
        gap_analysis(Design({"c": c, "old": old}, [("c - old", "c", "old")]), tmp_path / "out", fast())
    same = _with_summary(write_pairs(tmp_path / "same", table_rows(keys, d, 30 - 10 * d)), protocol="gapeval", align="none", harmonize="none")
    notes = gap_analysis(Design({"s": same, "old": old}, [("s - old", "s", "old")]), tmp_path / "out", fast())["notes"]
    assert not any("settings" in n for n in notes)
    bare = write_pairs(tmp_path / "bare", table_rows(keys, d, 30 - 10 * d))  # no summary.json: allowed, said so
    notes = gap_analysis(Design({"s": same, "bare": bare}, [("s - bare", "s", "bare")]), tmp_path / "out", fast())["notes"]
    assert any("'bare': no summary.json" in n for n in notes)


def test_alignment_columns_are_bookkeeping_and_opensr_columns_are_metrics(tmp_path, scenes):
    keys, d, _ = scenes
    extra = {"align_dx": np.full(30, 0.5), "harm_gain_B04": np.full(30, 1.1), "opensr_improvement": d, "opensr_tiles": np.ones(30)}
    cols = COLUMNS + list(extra)
    folder = tmp_path / "r"
    folder.mkdir()
    with (folder / "pairs.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for row in table_rows(keys, d, 30 - 10 * d, **extra):
            w.writerow({"pred_set": "sr", "status": "ok", "config_hash": "h", "pred_sha256": "p", "target_sha256": "t", **row})
    run = read_run("r", folder)
    metrics = run.metrics(None, per_band=True)
    assert "opensr_improvement" in metrics
    assert not {"align_dx", "harm_gain_B04", "opensr_tiles"} & set(metrics)


def test_path_arguments_say_what_is_wrong(tmp_path, scenes, capsys):
    """A file where a results folder is expected (or a folder where a file is) is named as such, exit 1, one error line;
    "does not exist" only for paths that do not exist. ``gapeval merge`` shares the check."""
    keys, d, _ = scenes
    good = write_pairs(tmp_path / "good", table_rows(keys, d, d))
    (tmp_path / "plain").write_text("not a results folder\n")
    (tmp_path / "tabledir" / "pairs.csv").mkdir(parents=True)
    (tmp_path / "design.yaml").mkdir()
    cases = [
        (["gap", "--run", f"a={tmp_path / 'plain'}", "--run", f"b={good}"], f"{tmp_path / 'plain'}: is a file, expected a results folder"),
        (["gap", "--run", f"a={tmp_path / 'tabledir'}", "--run", f"b={good}"], f"{tmp_path / 'tabledir' / 'pairs.csv'}: is a folder, expected the pairs.csv file"),
        (["gap", "--run", f"a={tmp_path / 'tabledir' / 'pairs.csv'}", "--run", f"b={good}"], f"{tmp_path / 'tabledir' / 'pairs.csv'}: is a folder"),
        (["gap", "--design", str(tmp_path / "design.yaml")], f"{tmp_path / 'design.yaml'}: is a folder, expected a design YAML file"),
        (["gap", "--run", f"a={tmp_path / 'nowhere'}", "--run", f"b={good}"], f"{tmp_path / 'nowhere'}: does not exist"),
        (["merge", str(tmp_path / "plain")], f"{tmp_path / 'plain'}: is a file, expected a results folder"),
        (["merge", str(tmp_path / "tabledir")], f"{tmp_path / 'tabledir' / 'pairs.csv'}: is a folder, expected the pairs.csv file"),
        (["merge", str(tmp_path / "nowhere")], f"{tmp_path / 'nowhere'}: does not exist"),
    ]
    for argv, expected in cases:
        out = ["--out", str(tmp_path / "out")] + (["--no-images"] if argv[0] == "gap" else [])
        assert cli.main(argv + out) == 1, argv
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if f"gapeval {argv[0]}: error:" in line]
        assert len(errors) == 1 and expected in errors[0], (argv, err)
        assert ("does not exist" in err) == expected.endswith("does not exist"), err
        assert "Traceback" not in err
    assert not (tmp_path / "out" / "gap.json").exists()
    assert cli.main(["gap", "--run", f"a={good / 'pairs.csv'}", "--run", f"b={good}", "--out", str(tmp_path / "ok"), "--no-images"]) == 0
