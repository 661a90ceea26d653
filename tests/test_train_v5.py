"""The shipped v5 weights: v4's backbone with registration in the distance (``register: translation``)."""

from __future__ import annotations

import pytest
import torch
from image_helpers import SHARED

from lpips_sat import LPIPSSat
from lpips_sat.registry import get_entry
from lpips_sat.train.data import CropSampler, Source, load_source
from lpips_sat.train.distortions import MARGIN, apply, crop_margin

V4, V5 = "lpips-sat-s2-rn18-v4", "lpips-sat-s2-rn18-v5"
ACCRA = SHARED / "s2_world" / "s2_l2a_accra_T30NZM_20240407_10m.tif"


def _shipped() -> None:
    try:
        get_entry(V5)
    except Exception:
        pytest.skip("v5 weights not shipped in this checkout")


def test_v5_is_v4s_backbone_with_registration() -> None:
    """The model card says v5 reuses v4's backbone unchanged and only adds the registration (and refitted heads)."""
    _shipped()
    v4, v5 = LPIPSSat(V4), LPIPSSat(V5)
    assert v5.registers and v5.max_shift == 3.0 and not v4.registers
    assert v5.input_norm == v4.input_norm == "per-image" and v5.texture_heads is not None
    s4, s5 = v4.backbone.state_dict(), v5.backbone.state_dict()
    assert list(s4) == list(s5) and all(torch.equal(s4[k], s5[k]) for k in s4)
    assert not LPIPSSat(V5, register="none").registers


@pytest.fixture(scope="module")
def accra() -> torch.Tensor:
    """(32, 4, 80, 80) context crops of the Accra S2 L2A scene (Ghana): held out of v5's pretraining and calibration."""
    if not ACCRA.exists():
        pytest.skip("shared Accra scene not found")
    im = load_source(Source.parse(f"{ACCRA}:s2-l2a-7scl:10000:1000"))[0].data
    return CropSampler([im], 64 + 2 * MARGIN, 7).sample(32)


@pytest.mark.parametrize(("family", "v5_at_least"), [("jpeg", 0.9), ("seams", 0.6)])
def test_v5_calls_a_2px_misregistration_closer_than_held_out_damage(accra, family: str, v5_at_least: float) -> None:
    """Issue 16's weak family: a 2 px shift (a nuisance) against damages held out of every training step (severity
    0.5 of 0-1). v4 called the shifted copy the further one for nearly all seams and most JPEG judgments here; v5 removes
    the shift first."""
    _shipped()
    g = torch.Generator().manual_seed(0)
    ref, shifted = crop_margin(accra), crop_margin(apply("shift", accra, 1.0, g))
    damaged = crop_margin(apply(family, accra, 0.5, torch.Generator().manual_seed(1)))
    with torch.inference_mode():
        right = {name: float((m(shifted, ref) < m(damaged, ref)).float().mean()) for name, m in (("v4", LPIPSSat(V4)), ("v5", LPIPSSat(V5)))}
    assert right["v5"] >= v5_at_least and right["v5"] > right["v4"], right


def test_v5_reports_the_shift_it_removed(accra) -> None:
    _shipped()
    ref = crop_margin(accra[:8])
    truth = torch.tensor([[1.5, -0.5]]).expand(8, 2)
    from lpips_sat.train.distortions import fourier_shift

    moved = crop_margin(fourier_shift(accra[:8], truth[:, 0].contiguous(), truth[:, 1].contiguous()))
    v5 = LPIPSSat(V5)
    with torch.inference_mode():
        d, shift = v5(moved, ref, registration=True)
        d_plain = LPIPSSat(V5, register="none")(moved, ref)
    assert (shift - truth).abs().max() < 0.1
    # what remains is mostly the ringing of the test's own circular Fourier shift, largest on low-texture patches
    assert float(d.median()) < 0.2 * float(d_plain.median()) and torch.all(d < d_plain)


def _report(seed: int, ours: dict[str, float], untrained: dict[str, float]) -> dict:
    return {"untrained_seed": seed, "splits": {n: {"2afc": {"LPIPS-Sat": ours[n], "untrained backbone, calibrated heads": untrained[n]}} for n in ours}}


def test_untrained_seeds_line(tmp_path) -> None:
    """scripts/exp_untrained_seeds.py: counts the splits where LPIPS-Sat is above every untrained draw (the SR-scale
    splits aside), lists the others by seed, and refuses reports of other judgments or a repeated seed."""
    import importlib.util
    import json
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("exp_untrained_seeds", Path(__file__).parents[1] / "scripts/exp_untrained_seeds.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ours = {"a/heldout_families": 0.982, "b/train_families": 0.97, "a/sr_realistic": 0.98}
    draws = [{"a/heldout_families": 0.988, "b/train_families": 0.96, "a/sr_realistic": 1.0},
             {"a/heldout_families": 0.975, "b/train_families": 0.95, "a/sr_realistic": 1.0}]
    paths = []
    for seed, u in enumerate(draws):
        paths.append(tmp_path / f"r{seed}.json")
        paths[-1].write_text(json.dumps(_report(seed, ours, u)))
    line = mod.summary(mod.load(paths), "v5")
    assert "above all of them on 1 of 2 splits" in line
    assert "`a/heldout_families`: v5 98.2, untrained 98.8, 97.5 (above 1 of 2)" in line
    assert "Mean over those splits: v5 97.6, untrained 97.4, 96.2." in line
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_report(2, {**ours, "b/train_families": 0.5}, draws[0])))
    with pytest.raises(SystemExit, match="other judgments"):
        mod.load([paths[0], bad])
    with pytest.raises(SystemExit, match="repeat"):
        mod.load([paths[0], paths[0]])


def test_register_triplets_moves_the_shifted_member_onto_the_clean_one() -> None:
    """pretrain --rank-register: a shifted nuisance member is moved back onto the clean anchor (its core then matches
    far better), an unshifted damaged member is left exactly as it is (the dead zone), the anchor is untouched."""
    from image_helpers import smooth_reflectance

    from lpips_sat.register import crop
    from lpips_sat.train.distortions import fourier_shift
    from lpips_sat.train.pretrain import register_triplets

    ctx = smooth_reflectance(3, n=2, size=64 + 2 * MARGIN)
    clean = crop_margin(ctx)
    pos = crop_margin(fourier_shift(ctx, torch.tensor([1.5, -0.8]), torch.tensor([-1.0, 2.2])))
    neg = (clean * 1.05).contiguous()
    c2, p2, n2 = register_triplets((clean, pos, neg), 3.0)
    assert torch.equal(c2, clean) and torch.equal(n2, neg)
    before, after = (crop(pos, 4) - crop(clean, 4)).abs().mean(), (crop(p2, 4) - crop(clean, 4)).abs().mean()
    assert after < 0.1 * before


def test_pretraining_with_a_registered_ranking_term_runs_and_records_it(tmp_path) -> None:
    import json

    from image_helpers import crop_naip

    from lpips_sat.registry import load_weights
    from lpips_sat.train import pretrain

    folder = crop_naip(tmp_path / "naip", 2, 100, 100, 128)
    out = tmp_path / "pt"
    rc = pretrain.main(["--data", f"{folder}:naip:moments", "--pairs", f"{folder}:naip:moments", "--pair-min-corr", "0.0",
                        "--protocol", "v4", "--input-norm", "per-image", "--rank-weight", "1", "--rank-register", "3", "--out", str(out),
                        "--steps", "2", "--batch", "4", "--crop", "32", "--jitter", "4", "--width-div", "8", "--threads", "1"])
    assert rc == 0
    _, meta = load_weights(out / "backbone.safetensors")
    assert json.loads(meta["recipe"])["rank_register"] == 3.0
