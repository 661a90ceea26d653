"""v3 training pieces at toy size: real cross-acquisition judgments, the texture distance form in calibration and the
texture ranking term in pretraining."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from image_helpers import crop_naip

from lpips_sat import LPIPSSat
from lpips_sat.train import calibrate, pretrain
from lpips_sat.train.calibrate import ACQUISITION, Featurizer, make_pair_judgments
from lpips_sat.train.data import PairSampler


@pytest.fixture(scope="module")
def naip_pair(tmp_path_factory) -> Path:
    return crop_naip(tmp_path_factory.mktemp("naip"), 2, 300, 300, 200)


def test_pair_judgments_put_the_other_acquisition_on_the_closer_side():
    rng = np.random.default_rng(0)
    a = rng.random((4, 120, 120)).astype(np.float32) * 0.2
    b = a * 1.05  # "another acquisition": the same place with another gain
    sampler = PairSampler([a, b], min_corr=0.5, seed=0)
    m = LPIPSSat.random(seed=1, input_norm="per-image")
    feat = Featurizer(m.backbone, [0.0] * 4, [1.0] * 4, "per-image")
    t = make_pair_judgments({1: sampler}, 20, ["blur", "pixelate"], {"f": feat}, seed=3)["f"]
    assert len(t.p) == 20 and 0 < float(t.p.sum()) < 20  # both orders occur
    for p, fa, fb in zip(t.p.tolist(), t.fam_a, t.fam_b):
        assert (fa == ACQUISITION) == (p == 1.0) and (fb == ACQUISITION) == (p == 0.0)
    # a pure gain is invisible to per-image standardisation: the acquisition side has (near) zero distance
    d_acq = torch.where(t.p == 1, t.d0.sum(1), t.d1.sum(1))
    d_dmg = torch.where(t.p == 1, t.d1.sum(1), t.d0.sum(1))
    assert float(d_acq.max()) < 1e-3 * float(d_dmg.min())


def test_texture_featurizer_columns_match_the_metric():
    m = LPIPSSat.random(seed=2, width_div=8, input_norm="per-image", texture=True)
    ones = LPIPSSat.random(seed=2, width_div=8, input_norm="per-image")
    for h in (*m.heads, *m.texture_heads, *ones.heads):
        h.data.fill_(1.0)
    feat = Featurizer(m.backbone, [0.0] * 4, [1.0] * 4, "per-image", texture=True)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 4, 64, 64, generator=g) * 0.3, torch.rand(2, 4, 64, 64, generator=g) * 0.3
    cols = feat.diffs(x, y)
    n = sum(m.backbone.channels)
    assert cols.shape[1] == 2 * n
    with torch.inference_mode():
        # LPIPS columns are per-channel means: their sum is the all-ones LPIPS distance; all columns give the v3 one
        assert torch.allclose(cols[:, :n].sum(1), ones(x, y), rtol=1e-4)
        assert torch.allclose(cols.sum(1), m(x, y), rtol=1e-4)


def test_calibrate_texture_form_with_real_pairs_end_to_end(naip_pair, tmp_path):
    pt = tmp_path / "pt"
    rc = pretrain.main(["--data", f"{naip_pair}:naip:moments", "--pairs", f"{naip_pair}:naip:moments", "--pair-min-corr", "0.0",
                        "--protocol", "v2", "--input-norm", "per-image", "--input-floor", "0.004", "--rank-weight", "1",
                        "--rank-form", "lpips+texture", "--out", str(pt), "--steps", "2", "--batch", "4", "--crop", "32", "--jitter", "4",
                        "--width-div", "8", "--threads", "1", "--holdout", "0.5"])
    assert rc == 0
    rows = (pt / "loss.csv").read_text().splitlines()
    assert len(rows) == 3 and all(np.isfinite(float(v)) for v in rows[-1].split(",")[:6])
    rc = calibrate.main(["--backbone", str(pt / "backbone.safetensors"), "--data", f"{naip_pair}:naip:moments", "--out", str(tmp_path / "cal"),
                         "--protocol", "v2", "--form", "lpips+texture", "--pairs", f"{naip_pair}:naip:moments", "--n-pairs", "16",
                         "--pair-scales", "1", "--pair-min-corr", "0.0", "--n-train", "32", "--n-val", "16", "--iters", "20",
                         "--l2", "0", "--threads", "1", "--holdout", "0.5", "--name", "toy-v3", "--n-sr", "16"])
    assert rc == 0
    report = json.loads((tmp_path / "cal" / "report.json").read_text())
    assert report["form"] == "lpips+texture" and report["n_pairs"] == 16 and report["n_sr"] == 16 and report["n_train"] == 64
    sr = report["splits"]["heldout_region/sr_realistic"]
    assert sr["n"] == 16 and sr["2afc"]["PSNR"] == 1.0  # MTF blur and LR noise on top of the plain SR: pixel error always grows
    assert "LPIPS-Sat, no SR-scale judgments" in sr["2afc"]
    acq = report["splits"]["heldout_region/acquisition"]
    assert acq["n"] == 16 and ACQUISITION in acq["per_family"]
    assert {"LPIPS-Sat, LPIPS term only", "LPIPS-Sat, synthetic judgments only"} <= set(acq["2afc"])  # each lever measured alone
    # a second backbone on the same judgments: only its features are computed; the pixel baselines come from the cache
    rc = calibrate.main(["--backbone", str(tmp_path / "cal" / "toy-v3.fp32.safetensors"), "--data", f"{naip_pair}:naip:moments",
                         "--out", str(tmp_path / "cal"), "--protocol", "v2", "--form", "lpips+texture", "--pairs", f"{naip_pair}:naip:moments",
                         "--n-pairs", "16", "--pair-scales", "1", "--pair-min-corr", "0.0", "--n-train", "32", "--n-val", "16", "--iters", "20",
                         "--l2", "0", "--threads", "1", "--holdout", "0.5", "--name", "toy-v3b", "--reuse-judgments", "--n-sr", "16"])
    assert rc == 0
    again = json.loads((tmp_path / "cal" / "report.json").read_text())
    for name, split in report["splits"].items():
        assert {k: split["2afc"][k] for k in ("PSNR", "SSIM", "MS-SSIM")} == {k: again["splits"][name]["2afc"][k] for k in ("PSNR", "SSIM", "MS-SSIM")}
    m = LPIPSSat(tmp_path / "cal" / "toy-v3.safetensors")
    assert m.texture_heads is not None and m.input_floor == 0.004
    assert m.metadata["distance_form"] == "lpips+texture"
    x = torch.rand(1, 4, 64, 64) * 0.2
    assert float(m(x, x)) == 0.0


@pytest.mark.parametrize("name,year", [("m_4709963_se_14_1_20170827.tif", 2017), ("scene_2024-08-05.tif", None), ("x_12345678901.tif", None),
                                       ("s2_l2a_accra_T30NZM_20240407_10m.tif", 2024)])
def test_acquisition_year_from_file_names(name, year):
    from lpips_sat.train.realcheck import acquisition_year

    assert acquisition_year(name) == year


def test_cross_acquisition_by_year_gap_groups():
    from lpips_sat.train.realcheck import DAMAGES, cross_acquisition, gap_group

    assert [gap_group(y) for y in (1, 2, 3, 5, 6, 11)] == ["1-2", "1-2", "3-5", "3-5", "6+", "6+"]
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(6, 4, 48, 48, generator=g) * 0.2 + 0.05
    other = torch.cat([ref[:3], torch.rand(3, 4, 48, 48, generator=g)])  # identical, then unrelated noise
    mse = {"mse": lambda a, b: (a - b).pow(2).mean(dim=(1, 2, 3))}
    rows, by_gap = cross_acquisition(mse, ref, other, groups=["1-2"] * 3 + ["6+"] * 3)
    assert set(rows["mse"]) == {*DAMAGES, "all"}
    assert list(by_gap["mse"]) == ["1-2", "6+"]
    assert by_gap["mse"]["1-2"] == 1.0 and by_gap["mse"]["6+"] == 0.0  # identical always closer; random never
    assert abs(rows["mse"]["all"] - 0.5) < 1e-6


def test_noise_on_blur_and_blur_sensitivity_with_a_pixel_metric():
    from lpips_sat.train.realcheck import blur_sensitivity, noise_on_blur

    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 4, 64, 64, generator=g) * 0.2 + 0.05  # fine texture: every blur and every noise costs MSE
    mse = {"mse": lambda a, b: (a - b).pow(2).mean(dim=(1, 2, 3))}
    nob = noise_on_blur(mse, x)["mse"]
    assert nob["noise_closer_fraction"] == 0.0 and nob["median_blurry_plus_noise"] > nob["median_blurry"]
    bs = blur_sensitivity(mse, x)["mse"]
    assert bs["mtf_further"] == 1.0 and bs["mtf_noise_further"] == 1.0 and bs["median_relative_margin"] > 0
    # a metric blind to everything but the image mean sees neither: ties count as "not further"
    mean_only = {"mean": lambda a, b: (a.mean(dim=(1, 2, 3)) - b.mean(dim=(1, 2, 3))).abs().round(decimals=3)}
    assert blur_sensitivity(mean_only, x)["mean"]["mtf_further"] == 0.0
