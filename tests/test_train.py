"""Pretraining and calibration end to end at toy size on real Sentinel-2 pixels; resume; head fitting."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lpips_sat import LPIPSSat
from lpips_sat.registry import load_weights
from lpips_sat.train import calibrate, pretrain
from lpips_sat.train.calibrate import Triplets, fit_heads, twoafc

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="module")
def s2_folder(tmp_path_factory) -> Path:
    rasterio = pytest.importorskip("rasterio")
    src = SHARED / "s2" / "s2_l1c_virginia_13band_10m.tif"
    if not src.exists():
        pytest.skip("shared Sentinel-2 stack not found")
    from rasterio.windows import Window

    out = tmp_path_factory.mktemp("s2")
    with rasterio.open(src) as ds:
        win = Window(400, 300, 192, 192)
        data = ds.read(window=win)
        profile = ds.profile | {"width": 192, "height": 192, "transform": ds.window_transform(win), "tiled": False}
        profile.pop("blockxsize", None), profile.pop("blockysize", None)
    with rasterio.open(out / "crop.tif", "w", **profile) as dst:
        dst.write(data)
    return out


def _pretrain(folder: Path, out: Path, steps: int, resume: bool = False, stop_at: int = 0) -> int:
    args = ["--data", str(folder), "--out", str(out), "--steps", str(steps), "--stop-at", str(stop_at), "--batch", "4", "--crop", "32", "--jitter", "4",
            "--checkpoint-every", "1", "--width-div", "8", "--threads", "1"] + (["--resume"] if resume else [])
    return pretrain.main(args)


def test_pretrain_resume_equals_uninterrupted(s2_folder, tmp_path):
    assert _pretrain(s2_folder, tmp_path / "a", 4) == 0
    # interrupted after 2 steps, then resumed to 4
    assert _pretrain(s2_folder, tmp_path / "b", 4, stop_at=2) == 0
    assert not (tmp_path / "b" / "backbone.safetensors").exists()
    assert _pretrain(s2_folder, tmp_path / "b", 4, resume=True) == 0
    wa, ma = load_weights(tmp_path / "a" / "backbone.safetensors")
    wb, _ = load_weights(tmp_path / "b" / "backbone.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k
    loss = (tmp_path / "b" / "loss.csv").read_text().strip().splitlines()
    assert len(loss) == 5  # header + 4 steps, none lost on resume
    assert json.loads(ma["data"])[0]["sha256"]  # data provenance recorded
    assert len(json.loads(ma["mean"])) == 4
    # the hub-layout folder holds the same backbone with all-ones heads (an uncalibrated LPIPS metric)
    folder = tmp_path / "a" / "model"
    assert json.loads((folder / "config.json").read_text())["heads"] == "ones"
    wf, _ = load_weights(folder / "model.safetensors")
    assert all(torch.equal(wf[k], wa[k]) for k in wa) and all(bool((wf[k] == 1).all()) for k in wf if k.startswith("heads."))
    x = torch.rand(1, 4, 32, 32) * 0.2
    assert float(LPIPSSat.from_pretrained(folder)(x, x)) == 0.0


def test_calibrate_end_to_end_produces_loadable_weights(s2_folder, tmp_path):
    _pretrain(s2_folder, tmp_path / "pt", 2)
    rc = calibrate.main(["--backbone", str(tmp_path / "pt" / "backbone.safetensors"), "--data", str(s2_folder), "--out", str(tmp_path / "cal"),
                         "--n-train", "48", "--n-val", "16", "--iters", "20", "--l2", "0", "0.1", "--threads", "1", "--holdout", "0.5"])
    assert rc == 0
    report = json.loads((tmp_path / "cal" / "report.json").read_text())
    split = report["splits"]["heldout_region/heldout_families"]
    assert set(split["2afc"]) >= {"LPIPS-Sat", "PSNR", "SSIM", "SAM", "L1", "LPIPS-Sat uncalibrated (ones)"}
    assert all(0.0 <= v <= 1.0 for v in split["2afc"].values())
    m = LPIPSSat(tmp_path / "cal" / "lpips-sat-s2-rn18.safetensors")
    x = torch.rand(1, 4, 64, 64) * 0.2
    assert float(m(x, x)) == 0.0
    assert report["fp16_max_abs_diff"] < 1e-2
    assert report["properties"]["identity_max"] == 0.0
    # the model folder (hub layout) is the fp32 weights: identical distances
    folder = LPIPSSat.from_pretrained(report["model_folder"])
    fp32 = LPIPSSat(tmp_path / "cal" / "lpips-sat-s2-rn18.fp32.safetensors")
    y = (x + 0.05 * torch.rand(1, 4, 64, 64)).clamp(0, 1)
    assert torch.equal(folder(x, y), fp32(x, y)) and float(fp32(x, y)) > 0
    paired = split["paired_untrained"]
    assert paired["diff"] == pytest.approx(split["2afc"]["LPIPS-Sat"] - split["2afc"]["untrained backbone, calibrated heads"], abs=1e-6)
    # another draw of the untrained baseline on the same judgments (the cached ones): LPIPS-Sat's column is unchanged
    rc = calibrate.main(["--backbone", str(tmp_path / "pt" / "backbone.safetensors"), "--data", str(s2_folder), "--out", str(tmp_path / "cal"),
                         "--n-train", "48", "--n-val", "16", "--iters", "20", "--l2", "0", "0.1", "--threads", "1", "--holdout", "0.5",
                         "--untrained-seed", "1", "--reuse-judgments"])
    assert rc == 0
    other = json.loads((tmp_path / "cal" / "report.json").read_text())
    assert (report["untrained_seed"], other["untrained_seed"]) == (0, 1)
    assert all(other["splits"][n]["2afc"]["LPIPS-Sat"] == s["2afc"]["LPIPS-Sat"] for n, s in report["splits"].items())
    assert len(list((tmp_path / "cal" / "cache").glob("*.safetensors"))) == 4  # backbone, seed-0 and seed-1 untrained, pixel baselines


def test_fit_heads_learns_which_channels_matter():
    """Only channel 0 carries the judgment; channel 1 is anti-correlated noise. Heads must weight channel 0."""
    g = torch.Generator().manual_seed(0)
    n = 400
    signal0, signal1 = torch.rand(n, generator=g), torch.rand(n, generator=g) + 0.5
    noise0, noise1 = torch.rand(n, generator=g) * 3, torch.rand(n, generator=g) * 3
    closer = torch.stack([signal0, noise1], 1)  # closer on channel 0 (signal0 < signal1); channel 1 is noise
    further = torch.stack([signal1, noise0], 1)
    swap = (torch.rand(n, generator=g) < 0.5)[:, None]  # present the closer one first or second at random
    d0, d1 = torch.where(swap, further, closer), torch.where(swap, closer, further)
    t = Triplets(d0, d1, (~swap[:, 0]).float(), ["x"] * n, ["y"] * n)
    w = fit_heads(t, iters=400, lr=0.05)
    assert (w >= 0).all()
    assert w[0] > 3 * w[1]
    assert twoafc(d0 @ w, d1 @ w, t.p) > 0.85  # the ideal is P(signal0 < signal1) = 0.875
    assert twoafc(d0 @ torch.ones(2), d1 @ torch.ones(2), t.p) < 0.8  # uncalibrated is worse


def test_paired_2afc_against_scipy_and_twoafc():
    """Paired comparison of two metrics: the mean credit difference is the difference of their 2AFC scores, and the
    McNemar p-value is scipy's exact two-sided binomial test of the discordant judgments."""
    stats = pytest.importorskip("scipy.stats")
    from lpips_sat.train.calibrate import paired_2afc

    g = torch.Generator().manual_seed(3)
    n = 200
    p = (torch.rand(n, generator=g) < 0.5).float()
    p[:20] = 0.7  # a few soft judgments: fractional credit, never discordant
    a0, a1, b0, b1 = (torch.rand(n, generator=g) for _ in range(4))
    r = paired_2afc(a0, a1, b0, b1, p)
    assert r["diff"] == pytest.approx(twoafc(a0, a1, p) - twoafc(b0, b1, p), abs=1e-6)  # twoafc averages in float32
    right_a = torch.where(a0 < a1, p, 1 - p) == 1
    right_b = torch.where(b0 < b1, p, 1 - p) == 1
    assert (r["a_only"], r["b_only"]) == (int((right_a & ~right_b).sum()), int((right_b & ~right_a).sum()))
    assert r["p_mcnemar"] == pytest.approx(stats.binomtest(r["a_only"], r["a_only"] + r["b_only"], 0.5).pvalue, rel=1e-9)
    same = paired_2afc(a0, a1, a0, a1, p)
    assert (same["diff"], same["a_only"], same["b_only"], same["p_mcnemar"]) == (0.0, 0, 0, 1.0)


def test_twoafc_counts_ties_as_half():
    d = torch.tensor([1.0, 2.0, 3.0])
    assert twoafc(d, torch.tensor([2.0, 1.0, 3.0]), torch.tensor([1.0, 1.0, 1.0])) == pytest.approx(0.5)
    assert twoafc(d, d + 1, torch.tensor([0.8, 0.8, 0.8])) == pytest.approx(0.8)


def test_user_judgments_csv(tmp_path):
    """A user's CSV of (ref, a, b, p_a_closer) becomes featurised judgments; bad rows are named."""
    from lpips_sat.backbones import ResNetTaps
    from lpips_sat.errors import InputError
    from lpips_sat.train.calibrate import Featurizer, read_judgments_csv

    rng = np.random.default_rng(0)
    ref = (rng.random((4, 40, 40)) * 0.3).astype(np.float32)
    np.save(tmp_path / "ref.npy", ref)
    np.save(tmp_path / "near.npy", ref + 0.001)
    np.save(tmp_path / "far.npy", ref[:, ::-1].copy())
    (tmp_path / "j.csv").write_text("ref,a,b,p_a_closer\nref.npy,near.npy,far.npy,0.9\nref.npy,far.npy,near.npy,0.2\n")
    feat = Featurizer(ResNetTaps("resnet18", 4, width_div=8), [0.1] * 4, [0.1] * 4)
    t = read_judgments_csv(tmp_path / "j.csv", feat)
    assert t.p.tolist() == pytest.approx([0.9, 0.2])
    assert t.d0.shape == t.d1.shape == (2, sum(ResNetTaps("resnet18", 4, width_div=8).channels))
    assert float(t.d0[0].sum()) < float(t.d1[0].sum())  # near is nearer than far in feature space
    assert torch.allclose(t.d0[0], t.d1[1]) and torch.allclose(t.d1[0], t.d0[1])
    (tmp_path / "bad.csv").write_text("ref,a,b,p_a_closer\nref.npy,near.npy,far.npy,1.5\n")
    with pytest.raises(InputError, match=r"bad.csv:2: p_a_closer"):
        read_judgments_csv(tmp_path / "bad.csv", feat)
    (tmp_path / "hdr.csv").write_text("x,y\n1,2\n")
    with pytest.raises(InputError, match="columns"):
        read_judgments_csv(tmp_path / "hdr.csv", feat)
