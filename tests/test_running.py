"""lpips_sat.running.LPIPSSatMetric: the running mean equals one call on all samples; torchmetrics conventions
(MetricCollection, DDP sync over 2 gloo processes, plot); the torchmetrics-free fallback; import weight."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from lpips_sat import LPIPSSat
from lpips_sat.errors import LPIPSSatError
from lpips_sat.running import HAVE_TORCHMETRICS, LPIPSSatMetric

ROOT = Path(__file__).resolve().parents[1]
needs_torchmetrics = pytest.mark.skipif(not HAVE_TORCHMETRICS, reason="torchmetrics not installed (lpips-sat[metrics])")


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
    assert float(a.compute()) == pytest.approx(float(metric(s1, h1).double().mean()), rel=1e-6)  # (torchmetrics caches this)
    a.merge(b)
    assert a.count == 5
    assert float(a.compute()) == pytest.approx(float(metric(torch.cat([s1, s2]), torch.cat([h1, h2])).double().mean()), rel=1e-6)
    a.reset()
    assert a.count == 0 and float(a.total) == 0.0


def test_update_keeps_no_graph_and_forward_is_differentiable(metric) -> None:
    running = LPIPSSatMetric(metric)
    sr, hr = _data(3, 3)
    sr.requires_grad_(True)
    assert running.update(sr, hr) is None  # torchmetrics' contract
    assert running.total.dtype == torch.float64 and not running.total.requires_grad
    batch = running(sr, hr)
    batch.backward()
    expected = torch.autograd.grad(metric(sr, hr).double().mean(), sr)[0]  # the same mean, differentiated directly
    assert torch.allclose(sr.grad, expected, rtol=1e-4, atol=1e-9)
    assert running.count == 6 and not running.total.requires_grad  # the accumulated state holds no graph


def test_a_refused_batch_keeps_the_accumulated_state(metric) -> None:
    from lpips_sat.errors import InputError

    running = LPIPSSatMetric(metric)
    sr, hr = _data(4, 6)
    running(sr[:2], hr[:2])
    running.update(sr[2:3], hr[2:3])
    bad = sr[3:].clone()
    bad[0, 0, 0, 0] = float("nan")
    for call in (running, running.update):
        with pytest.raises(InputError, match="NaN"):
            call(bad, hr[3:])
    assert running.count == 3
    assert float(running.compute()) == pytest.approx(float(metric(sr[:3], hr[:3]).double().mean()), rel=1e-6)
    x = sr[3:].clone().requires_grad_(True)
    running(x, hr[3:]).backward()  # forward still works (and is differentiable) after the refusal
    assert x.grad is not None and running.count == 4


def test_builds_its_own_metric_from_keywords(tmp_path) -> None:
    with pytest.raises(LPIPSSatError):  # unknown weights name: the constructor passes it to LPIPSSat
        LPIPSSatMetric(weights="no-such-weights")


@needs_torchmetrics
def test_is_a_torchmetrics_metric_in_a_collection(metric) -> None:
    from torchmetrics import MeanSquaredError, Metric, MetricCollection

    running = LPIPSSatMetric(metric)
    assert isinstance(running, Metric)
    assert (running.higher_is_better, running.is_differentiable, running.full_state_update, running.lower_better) == (False, True, False, True)
    assert running.score_range == metric.score_range
    collection = MetricCollection({"lpips_sat": running, "mse": MeanSquaredError()})
    sr, hr = _data(5, 5)
    collection.update(sr[:2], hr[:2])
    collection.update(sr[2:], hr[2:])
    out = collection.compute()
    assert float(out["lpips_sat"]) == pytest.approx(float(metric(sr, hr).double().mean()), rel=1e-6)
    assert float(out["mse"]) == pytest.approx(float((sr - hr).pow(2).mean()), rel=1e-5)
    collection.reset()
    assert running.count == 0


@needs_torchmetrics
def test_plot_draws_the_values(metric) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    running = LPIPSSatMetric(metric)
    values = []
    for seed in range(3):
        running.update(*_data(2, seed))
        values.append(running.compute())
    fig, ax = running.plot(values)
    ys = ax.lines[0].get_ydata()
    assert [float(v) for v in ys] == pytest.approx([float(v) for v in values])
    assert ax.get_ylim()[0] <= 0.0  # plot_lower_bound: a distance is never negative
    import matplotlib.pyplot as plt

    plt.close(fig)


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    """One rank: score its own slice of 5 pairs, then compute() (which all-reduces the sum and count)."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        running = LPIPSSatMetric(LPIPSSat.random(seed=4))
        sr, hr = _data(5, 11)
        mine = slice(0, 3) if rank == 0 else slice(3, 5)  # uneven shards: 3 and 2 samples
        running.update(sr[mine], hr[mine])
        value = float(running.compute())
        Path(out, f"rank{rank}.json").write_text(json.dumps({"mean": value, "local_count": running.count}))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned interpreters each import torch and torchmetrics: ~10 s idle, more on a loaded machine
@needs_torchmetrics
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_ddp_two_gloo_processes_sync_to_the_single_process_mean(tmp_path, metric) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    sr, hr = _data(5, 11)
    single = float(metric(sr, hr).double().mean())
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["local_count"] for r in results] == [3, 2]  # the states are unsynced again after compute()
    for r in results:
        assert r["mean"] == pytest.approx(single, rel=1e-6)
    # the mean of the two ranks' own means (3 and 2 samples) differs: the sync really sums, not averages
    d = metric(sr, hr).double()
    assert abs((float(d[:3].mean()) + float(d[3:].mean())) / 2 - single) > 1e-6


def _run_python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_import_stays_light_and_the_fallback_without_torchmetrics_has_the_same_contract() -> None:
    done = _run_python("""
        import sys
        import lpips_sat
        heavy = [m for m in ("torchmetrics", "huggingface_hub", "matplotlib", "gapeval") if m in sys.modules]
        assert not heavy, heavy  # the metric package itself imports none of the extras
        sys.modules["torchmetrics"] = None  # from here on `import torchmetrics` raises ImportError
        import torch
        from lpips_sat import LPIPSSat
        from lpips_sat.errors import LPIPSSatError
        from lpips_sat.running import HAVE_TORCHMETRICS, LPIPSSatMetric
        assert not HAVE_TORCHMETRICS
        m = LPIPSSat.random(seed=4)
        g = torch.Generator().manual_seed(0)
        hr = torch.rand(5, 4, 32, 32, generator=g) * 0.3
        sr = (hr + 0.03 * torch.randn(hr.shape, generator=g)).clamp(0, 1).requires_grad_(True)
        r = LPIPSSatMetric(m, keep_values=True)
        assert r.update(sr[:2], hr[:2]) is None and not r.total.requires_grad
        batch = r(sr[2:], hr[2:])
        batch.backward()
        direct = m(sr, hr)
        grad = torch.autograd.grad(direct[2:].double().mean(), sr)[0]
        assert torch.allclose(sr.grad, grad, rtol=1e-4, atol=1e-9)
        assert abs(float(batch) - float(direct[2:].double().mean())) < 1e-6
        assert abs(float(r.compute()) - float(direct.double().mean())) < 1e-6 and r.count == 5
        assert torch.allclose(r.values(), direct.detach(), rtol=1e-5)
        for call in (lambda: r.plot(), lambda: LPIPSSatMetric(m, sync_on_compute=False)):
            try:
                call()
                raise SystemExit("expected LPIPSSatError")
            except LPIPSSatError as exc:
                assert "lpips-sat[metrics]" in str(exc)
        r.reset()
        assert r.count == 0 and r.values().numel() == 0
        print("ok")
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
