"""v3 distance form: the DISTS-style texture term with its own heads, and the per-image std floor in the metadata."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from image_helpers import smooth_reflectance

from lpips_sat import LPIPSSat
from lpips_sat.errors import WeightsError
from lpips_sat.metric import input_floor, normalize_channels, texture_distance

_img = smooth_reflectance


def test_texture_distance_matches_numpy_and_ignores_where_texture_is():
    g = torch.Generator().manual_seed(0)
    fa, fb = torch.rand(3, 6, 9, 11, generator=g), torch.rand(3, 6, 9, 11, generator=g)
    w = torch.rand(1, 6, generator=g)
    a, b = fa.double().numpy(), fb.double().numpy()
    dm = a.mean(axis=(2, 3)) - b.mean(axis=(2, 3))
    ds = a.std(axis=(2, 3)) - b.std(axis=(2, 3))
    expected = ((dm**2 + ds**2) * w.double().numpy()).sum(1)
    assert np.allclose(texture_distance(fa, fb, w).numpy(), expected, rtol=1e-4)
    # any spatial permutation of the features (a shift, a shuffle) leaves the texture term at zero
    perm = torch.randperm(9 * 11, generator=g)
    shuffled = fa.flatten(2)[..., perm].reshape(fa.shape)
    assert float(texture_distance(fa, shuffled, w).abs().max()) < 1e-6


def test_texture_term_bound_holds_for_disjoint_features():
    # unit-norm non-negative features on disjoint channels: the worst case of the score_range bound
    fa = torch.zeros(1, 4, 5, 5)
    fb = torch.zeros(1, 4, 5, 5)
    fa[:, 0], fb[:, 1] = 1.0, 1.0
    w = torch.ones(1, 4)
    assert float(texture_distance(normalize_channels(fa), normalize_channels(fb), w)) <= 2.0 + 1e-6


def test_texture_heads_add_to_the_distance_and_to_each_layer():
    x, y = _img(1), _img(1) + 0.01 * torch.randn(2, 4, 48, 48, generator=torch.Generator().manual_seed(3))
    plain = LPIPSSat.random(seed=4, input_norm="per-image")
    tex = LPIPSSat.random(seed=4, input_norm="per-image", texture=True)
    with torch.inference_mode():
        d_plain, d_tex = plain(x, y), tex(x, y)
        total, parts = tex(x, y, per_layer=True)
        fa, fb = tex.features(x), tex.features(y)
        expected = d_plain + sum(texture_distance(a, b, h) for a, b, h in zip(fa, fb, tex.texture_heads))
        spatial = tex(x, y, spatial=True)
    assert torch.allclose(d_tex, expected, rtol=1e-5)
    assert torch.allclose(torch.stack(parts).sum(0), total)
    assert torch.allclose(spatial.mean(dim=(1, 2, 3)), d_tex, rtol=1e-4)  # the spread texture term keeps the map's mean
    assert float(tex(x, x).abs().max()) == 0.0
    assert float(d_tex.max()) <= tex.score_range[1]
    assert tex.score_range[1] > plain.score_range[1]


def test_texture_metric_is_differentiable_and_round_trips(tmp_path):
    m = LPIPSSat.random(seed=5, input_norm="per-image", texture=True)
    x = _img(2, n=1)
    y = (x + 0.02).requires_grad_(True)
    m(y, x).sum().backward()
    assert torch.isfinite(y.grad).all() and float(y.grad.abs().sum()) > 0
    folder = m.save_pretrained(tmp_path / "m")
    again = LPIPSSat.from_pretrained(folder)
    with torch.inference_mode():
        assert torch.equal(again(x, x + 0.03), m(x, x + 0.03))


def test_partial_or_negative_texture_heads_are_refused(tmp_path):
    from lpips_sat.registry import save_weights

    m = LPIPSSat.random(seed=6, input_norm="per-image", texture=True)
    tensors, meta = m.export()
    meta = {**meta, "taps": "[]"}
    partial = {k: v for k, v in tensors.items() if k != "texture_heads.3.weight"}
    save_weights(tmp_path / "partial.safetensors", partial, meta)
    with pytest.raises(WeightsError, match="texture_heads.3.weight"):
        LPIPSSat(tmp_path / "partial.safetensors")
    negative = dict(tensors)
    negative["texture_heads.0.weight"] = -negative["texture_heads.0.weight"]
    save_weights(tmp_path / "negative.safetensors", negative, meta)
    with pytest.raises(WeightsError, match="non-negative"):
        LPIPSSat(tmp_path / "negative.safetensors")


@pytest.mark.parametrize("text,ok", [(None, 1e-3), ("0.01", 0.01), ("0", None), ("-1", None), ("nan", None), ("abc", None)])
def test_input_floor_metadata(text, ok):
    meta = {} if text is None else {"input_floor": text}
    if ok is None:
        with pytest.raises(WeightsError, match="input_floor"):
            input_floor(meta, "w.safetensors")
    else:
        assert input_floor(meta) == ok


def test_shipped_v3_loads_by_name_with_texture_heads_and_ignores_gain():
    from lpips_sat.registry import get_entry
    from lpips_sat.train.distortions import gaussian_blur

    try:
        get_entry("lpips-sat-s2-rn18-v3")
    except Exception:
        pytest.skip("v3 weights not shipped in this checkout")
    v3 = LPIPSSat("lpips-sat-s2-rn18-v3")
    assert v3.input_norm == "per-image" and v3.texture_heads is not None and v3.metadata["distance_form"] == "lpips+texture"
    x = _img(7, size=64)
    with torch.inference_mode():
        d_gain, d_blur = v3(x, x * 1.1), v3(x, gaussian_blur(x, 1.0))
        total, parts = v3(x, gaussian_blur(x, 1.0), per_layer=True)
    assert float(d_gain.max()) < 1e-3 * float(d_blur.min())  # a band-common gain is a nuisance by construction
    assert torch.allclose(torch.stack(parts).sum(0), total)
    assert float(d_blur.max()) <= v3.score_range[1]


def test_texture_gradients_are_finite_on_a_flat_image_and_under_autocast():
    m = LPIPSSat.random(seed=8, input_norm="per-image", texture=True)
    flat = torch.full((1, 4, 32, 32), 0.1, requires_grad=True)
    m(flat, _img(5, n=1, size=32)).sum().backward()
    assert torch.isfinite(flat.grad).all()
    x = _img(6, n=1, size=32)
    y = x + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))  # (a pure offset would be invisible)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d = m(x, y)
    assert torch.isfinite(d).all() and float(d) > 0
