"""v2 training pieces: protocols, new families, L2A offset loading, cross-acquisition pairs, v2 pretraining at toy size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from image_helpers import crop_naip

from lpips_sat.train import pretrain
from lpips_sat.train.distortions import FAMILIES, PROTOCOLS, apply
from lpips_sat.train.realcheck import DAMAGES, acquisition_pairs, area_average


def test_protocols_are_disjoint_and_hold_out_both_kinds():
    for name, proto in PROTOCOLS.items():
        assert set(proto["train"]).isdisjoint(proto["heldout"]), name
        assert set(proto["train"]) | set(proto["heldout"]) <= set(FAMILIES)
        assert {FAMILIES[f].kind for f in proto["heldout"]} == {"nuisance", "damage"}
    # v2 trains on the kinds v1 missed (issue 16)
    assert {"pixelate", "posterize", "stripes", "blocking"} <= set(PROTOCOLS["v2"]["train"])


@pytest.mark.parametrize("factor,severity", [(2, 0.0), (3, 0.5), (4, 0.9)])
def test_pixelate_keeps_an_image_made_of_its_own_blocks(factor: int, severity: float):
    small = torch.rand(1, 4, 5, 5)
    x = small.repeat_interleave(factor, -2).repeat_interleave(factor, -1)  # 5*factor px, whole blocks
    y = apply("pixelate", x, severity, torch.Generator().manual_seed(0))
    assert torch.allclose(x, y, atol=1e-6)


def test_median_matches_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = torch.rand(1, 2, 20, 20)
    y = apply("median", x, 0.0, torch.Generator())[0].numpy()
    ref = np.stack([ndimage.median_filter(x[0, c].numpy(), size=3, mode="mirror") for c in range(2)])
    assert np.allclose(y, ref)


def test_jpeg_quantisation_is_coarser_at_higher_severity_and_keeps_the_mean():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 4, 32, 32) * 0.3
    lo, hi = apply("jpeg", x, 0.0, g), apply("jpeg", x, 1.0, g)
    assert (lo - x).abs().mean() < (hi - x).abs().mean()
    assert torch.allclose(hi.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=2e-3)  # DC terms are quantised finely


def test_area_average_equals_block_means():
    x = np.arange(2 * 6 * 4, dtype=np.float32).reshape(2, 6, 4)
    y = area_average(x, 2)
    assert y.shape == (2, 3, 2)
    assert y[1, 2, 1] == x[1, 4:6, 2:4].mean()


def test_acquisition_pairs_keep_identical_and_drop_unrelated_content():
    rng = np.random.default_rng(0)
    a = rng.random((4, 64, 64)).astype(np.float32)
    b = rng.random((4, 64, 64)).astype(np.float32)
    ref, other, which = acquisition_pairs([a, a * 1.1, b], patch=32, stride=32, min_corr=0.8)
    assert len(ref) == 4 and set(which) == {(0, 1)}  # 4 patches of the identical-content pair, none with b
    assert torch.allclose(other, ref * 1.1)


def test_realcheck_damages_change_the_image():
    x = torch.rand(2, 4, 48, 48) * 0.3
    g = torch.Generator().manual_seed(0)
    for name, fn in DAMAGES.items():
        y = fn(x, g)
        assert y.shape == x.shape and float((y - x).abs().mean()) > 0, name


def test_l2a_offset_is_removed(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    from lpips_sat.train.data import Source, load_source

    dn = np.full((7, 8, 8), 1500, np.uint16)
    path = tmp_path / "l2a.tif"
    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=7, dtype="uint16") as dst:
        dst.write(dn)
    im = load_source(Source.parse(f"{path}:s2-l2a-7scl:10000:1000"))[0]
    assert np.allclose(im.data, 0.05)  # (1500 - 1000) / 10000


def test_v2_pretraining_with_pairs_and_ranking_writes_a_per_image_backbone(tmp_path):
    folder = crop_naip(tmp_path / "naip", 2, 100, 100, 128)
    out = tmp_path / "pt"
    rc = pretrain.main(["--data", f"{folder}:naip:moments", "--pairs", f"{folder}:naip:moments", "--pair-min-corr", "0.0",
                        "--protocol", "v2", "--input-norm", "per-image", "--rank-weight", "1", "--out", str(out), "--steps", "2",
                        "--batch", "4", "--crop", "32", "--jitter", "4", "--width-div", "8", "--threads", "1"])
    assert rc == 0
    from lpips_sat.registry import load_weights

    _, meta = load_weights(out / "backbone.safetensors")
    assert meta["input_norm"] == "per-image" and json.loads(meta["mean"]) == [0.0] * 4
    rows = (out / "loss.csv").read_text().splitlines()
    assert rows[0].endswith("infonce,rank,rank_acc") and len(rows) == 3
    assert all(np.isfinite(float(v)) for v in rows[-1].split(",")[:6])
