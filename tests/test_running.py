"""lpips_sat.running.LPIPSSatMetric: the running mean equals one call on all samples; state handling."""

from __future__ import annotations

import pytest
import torch

from lpips_sat import LPIPSSat
from lpips_sat.errors import LPIPSSatError
from lpips_sat.running import LPIPSSatMetric


@pytest.fixture(scope="module")
def metric() -> LPIPSSat:
    return LPIPSSat.random(seed=4)


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hr = torch.rand(n, 4, 32, 32, generator=g) * 0.3
    return (hr + 0.03 * torch.randn(hr.shape, generator=g)).clamp(0, 1), hr


def test_running_mean_equals_single_call_over_uneven_batches(metric) -> None:
    sr, hr = _data(7, 0)
    running = LPIPSSatMetric(metric, keep_values=True)
    batch_means = [running(sr[i:i + 3], hr[i:i + 3]) for i in range(0, 7, 3)]  # 3, 3, 1 samples
    direct = metric(sr, hr)
    assert running.count == 7
    assert float(running.compute()) == pytest.approx(float(direct.double().mean()), rel=1e-6)
    assert torch.allclose(running.values(), direct, rtol=1e-5)
    assert float(batch_means[-1]) == pytest.approx(float(direct[6]), rel=1e-5)  # forward returns the batch mean
    # mean of batch means would weight the last single sample 3x: the running mean must not do that
    assert abs(float(torch.stack(batch_means).mean()) - float(direct.mean())) > 0


def test_reset_merge_and_errors(metric) -> None:
    a, b = LPIPSSatMetric(metric), LPIPSSatMetric(metric)
    with pytest.raises(LPIPSSatError, match="before any update"):
        a.compute()
    with pytest.raises(LPIPSSatError, match="keep_values"):
        a.values()
    s1, h1 = _data(2, 1)
    s2, h2 = _data(3, 2)
    a.update(s1, h1)
    b.update(s2, h2)
    a.merge(b)
    assert a.count == 5
    assert float(a.compute()) == pytest.approx(float(metric(torch.cat([s1, s2]), torch.cat([h1, h2])).double().mean()), rel=1e-6)
    a.reset()
    assert a.count == 0 and float(a.total) == 0.0


def test_state_is_buffers_and_updates_need_no_grad(metric) -> None:
    running = LPIPSSatMetric(metric)
    names = dict(running.named_buffers())
    assert "total" in names and "n" in names and names["total"].dtype == torch.float64
    sr, hr = _data(2, 3)
    sr.requires_grad_(True)
    d = running.update(sr, hr)
    assert not d.requires_grad


def test_builds_its_own_metric_from_keywords(tmp_path) -> None:
    with pytest.raises(LPIPSSatError):  # unknown weights name: the constructor passes it to LPIPSSat
        LPIPSSatMetric(weights="no-such-weights")
