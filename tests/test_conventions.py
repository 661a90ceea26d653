"""Conventions of neighbouring libraries on LPIPSSat: lpips' ``normalize=`` input ranges, pyiqa's ``lower_better``
and ``score_range`` (an upper bound derived from the head weights)."""

from __future__ import annotations

import pytest
import torch

from lpips_sat import InputError, LPIPSSat


@pytest.fixture(scope="module")
def tiny() -> LPIPSSat:
    return LPIPSSat.random(seed=11)


def _reflectance(n: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hr = torch.rand(n, 4, 32, 32, generator=g) * 0.6
    return (hr + 0.05 * torch.randn(hr.shape, generator=g)).clamp(0, 1), hr


def test_unit_interval_inputs_are_reflectance_as_is(tiny) -> None:
    sr, hr = _reflectance()
    unit = LPIPSSat.random(seed=11, normalize=True)
    assert torch.equal(unit(sr, hr), tiny(sr, hr))  # [0, 1] values *are* reflectance 0..1: nothing is rescaled


def test_symmetric_inputs_map_back_to_reflectance(tiny) -> None:
    sr, hr = _reflectance(seed=1)
    sym = LPIPSSat.random(seed=11, normalize=False)
    assert torch.allclose(sym(sr * 2 - 1, hr * 2 - 1), tiny(sr, hr), rtol=1e-5, atol=1e-7)
    # lpips' own relation between its two conventions: normalize=True on x equals normalize=False on 2x - 1
    unit = LPIPSSat.random(seed=11, normalize=True)
    assert torch.allclose(unit(sr, hr), sym(2 * sr - 1, 2 * hr - 1), rtol=1e-5, atol=1e-7)


def test_gradient_follows_the_affine_map(tiny) -> None:
    sr, hr = _reflectance(seed=2)
    sym = LPIPSSat.random(seed=11, normalize=False)
    x = (sr * 2 - 1).requires_grad_(True)
    sym(x, hr * 2 - 1).sum().backward()
    r = sr.clone().requires_grad_(True)
    tiny(r, hr).sum().backward()
    assert torch.allclose(x.grad, 0.5 * r.grad, rtol=1e-4, atol=1e-6 * float(r.grad.abs().max()))  # d reflectance / dx = 1/2


def test_values_outside_the_declared_interval_are_refused_not_clipped() -> None:
    sr, hr = _reflectance(seed=3)
    unit, sym = LPIPSSat.random(normalize=True), LPIPSSat.random(normalize=False)
    with pytest.raises(InputError, match=r"outside \[0, 1\].*normalize=True"):
        unit(sr + 0.5, hr)  # e.g. reflectance 1.5 of a bright cloud passed as [0, 1] data
    with pytest.raises(InputError, match=r"outside \[0, 1\]"):
        unit(sr * 2 - 1, hr)  # [-1, 1] data declared as [0, 1]
    with pytest.raises(InputError, match=r"outside \[-1, 1\].*normalize=False"):
        sym(sr * 3 - 1, hr * 2 - 1)
    with pytest.raises(InputError, match="cannot be combined"):
        LPIPSSat.random(normalize=True, input_range="dn")
    with pytest.raises(InputError, match="normalize must be"):
        LPIPSSat.random(normalize="0-1")


def test_lower_better_and_score_range_bound_every_distance(tiny) -> None:
    assert LPIPSSat.lower_better is True and tiny.lower_better is True
    lo, hi = tiny.score_range
    assert lo == 0.0 and hi == pytest.approx(2 * sum(float(h.max()) for h in tiny.heads))
    # the bound's premise: every tap is non-negative (post-ReLU), so unit vectors differ by at most sqrt(2)
    feats = tiny.features(_reflectance()[0])
    assert all(float(f.min()) >= 0.0 for f in feats)
    g = torch.Generator().manual_seed(5)
    far_a = torch.rand(8, 4, 64, 64, generator=g) * 1.5  # unrelated noise vs flat fields: as far apart as inputs get
    far_b = torch.zeros(8, 4, 64, 64) + torch.linspace(0, 1.5, 8)[:, None, None, None]
    d = tiny(far_a, far_b)
    dmap = tiny(far_a, far_b, spatial=True)
    assert float(d.min()) >= 0.0 and float(d.max()) <= hi
    assert float(dmap.min()) >= 0.0 and float(dmap.max()) <= hi + 1e-6


def test_shipped_score_range() -> None:
    metric = LPIPSSat()
    lo, hi = metric.score_range
    assert lo == 0.0 and 1.0 < hi < 100.0  # README distances of SR outputs are 1.5 to 3.9


def test_functional_form_takes_normalize() -> None:
    from lpips_sat import lpips_sat

    sr, hr = _reflectance(2, seed=6)
    assert torch.allclose(lpips_sat(sr * 2 - 1, hr * 2 - 1, normalize=False), lpips_sat(sr, hr), rtol=1e-5, atol=1e-7)
