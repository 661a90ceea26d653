"""``gapeval train sr3``: pairing checks, exact resume, and the trained checkpoint running through ``gapeval infer``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from infer_helpers import TRANSFORM, read, s2_dn, write_tif
from safetensors.torch import load_file

from gapeval.cli import main
from gapeval.infer.train import TrainConfig, draw_batch, find_pairs, state_file, train

STATE_FILE = state_file("sr3")
from lpips_sat.errors import InputError

RGBN = ("B04", "B03", "B02", "B08")
TINY = {"lr_scale": 10000.0, "hr_scale": 10000.0, "width": 16, "channel_mult": (1, 2), "layers_per_block": 1, "attention_levels": (1,), "norm_groups": 8, "patch": 8, "batch": 2, "save_every": 2}


@pytest.fixture
def pairs(tmp_path: Path) -> tuple[Path, Path]:
    lr, hr = tmp_path / "lr", tmp_path / "hr"
    lr.mkdir()
    hr.mkdir()
    for i in range(2):
        big = s2_dn(size=64, seed=i)
        write_tif(hr / f"p{i}.tif", big, transform=TRANSFORM @ TRANSFORM.scale(0.25), descriptions=RGBN)
        small = big.reshape(4, 16, 4, 16, 4).mean(axis=(2, 4))
        write_tif(lr / f"p{i}.tif", small, descriptions=RGBN)
    return lr, hr


def test_resume_continues_exactly(pairs: tuple[Path, Path], tmp_path: Path) -> None:
    lr, hr = pairs
    straight = train(TrainConfig(lr, hr, tmp_path / "a", steps=4, **TINY))
    train(TrainConfig(lr, hr, tmp_path / "b", steps=2, **TINY))
    state = load_file(str(tmp_path / "b" / STATE_FILE))
    assert any(k.startswith("opt.") for k in state)
    resumed = train(TrainConfig(lr, hr, tmp_path / "b", steps=4, **TINY))
    a, b = load_file(str(straight)), load_file(str(resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = (tmp_path / "b" / "train_log.csv").read_text().splitlines()
    assert log[0] == "step,loss" and [int(r.split(",")[0]) for r in log[1:]] == [1, 2, 3, 4]
    with pytest.raises(InputError, match="other settings"):
        train(TrainConfig(lr, hr, tmp_path / "b", steps=6, **{**TINY, "width": 32}))


def test_batches_are_aligned_and_deterministic(pairs: tuple[Path, Path], tmp_path: Path) -> None:
    cfg = TrainConfig(*pairs, tmp_path / "o", steps=1, **TINY)
    ps = find_pairs(cfg)
    lr1, hr1 = draw_batch(ps, cfg, 3)
    lr2, hr2 = draw_batch(ps, cfg, 3)
    assert torch.equal(lr1, lr2) and torch.equal(hr1, hr2) and lr1.shape == (2, 4, 8, 8) and hr1.shape == (2, 4, 32, 32)
    # LR patches are 4x4 block means of the HR patches (how the pairs were made), whatever the flip/rotation drawn
    pooled = hr1.reshape(2, 4, 8, 4, 8, 4).mean(dim=(3, 5))
    assert torch.allclose(pooled, lr1, atol=1e-4)
    assert not torch.equal(draw_batch(ps, cfg, 4)[0], lr1)


def test_pair_checks(tmp_path: Path, pairs: tuple[Path, Path]) -> None:
    lr, hr = pairs
    write_tif(hr / "p0.tif", s2_dn(size=60), transform=TRANSFORM @ TRANSFORM.scale(0.25), descriptions=RGBN)
    with pytest.raises(InputError, match="is not 4 x the size"):
        find_pairs(TrainConfig(lr, hr, tmp_path / "o", **TINY))
    write_tif(hr / "p0.tif", s2_dn(size=64), transform=TRANSFORM @ TRANSFORM.scale(0.25) @ TRANSFORM.translation(3, 0), descriptions=RGBN)
    with pytest.raises(InputError, match="co-register"):
        find_pairs(TrainConfig(lr, hr, tmp_path / "o", **TINY))
    empty = tmp_path / "empty_hr"
    empty.mkdir()
    write_tif(empty / "other.tif", s2_dn(size=64), descriptions=RGBN)
    with pytest.raises(InputError, match="No file stem"):
        find_pairs(TrainConfig(lr, empty, tmp_path / "o", **TINY))


def test_cli_train_then_infer(pairs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    lr, hr = pairs
    ck = tmp_path / "ck"
    args = ["train", "sr3", "--lr", str(lr), "--hr", str(hr), "--out", str(ck), "--steps", "2", "--batch", "2", "--patch", "8", "--width", "16",
            "--channel-mult", "1,2", "--layers-per-block", "1", "--attention-levels", "1", "--norm-groups", "8", "--device", "cpu",
            "--lr-scale", "10000", "--hr-scale", "10000"]
    assert main(args) == 0 and "wrote" in capsys.readouterr().out
    out = tmp_path / "sr"
    assert main(["infer", "--model", "sr3", "--input", str(lr / "p0.tif"), "--out", str(out), "--checkpoint", str(ck / "sr3.safetensors"),
                 "--steps", "2", "--tile", "16", "--overlap", "0", "--device", "cpu", "--sampler", "ddpm", "--scale", "10000"]) == 0
    data, tags, transform, *_ = read(out / "p0.tif")
    assert data.shape == (4, 64, 64) and tags["sampler"] == "ddpm" and np.isfinite(data).all()
    assert transform == TRANSFORM @ TRANSFORM.scale(0.25)
    assert main(["train", "sr3", "--lr", str(tmp_path / "nope"), "--hr", str(hr), "--out", str(ck)]) == 1


RESSHIFT = {**TINY, "model": "resshift", "attention_levels": (1,), "network": {"window_size": 4, "num_head_channels": 8, "swin_embed_dim": 16}, "schedule": {"steps": 4, "kappa": 1.0}}


def test_resshift_trains_resumes_exactly_and_runs_through_infer(pairs: tuple[Path, Path], tmp_path: Path) -> None:
    """The shared loop with the residual-shifting loss: exact resume, a pixel-space checkpoint that `gapeval infer` loads."""
    lr, hr = pairs
    seen: list[int] = []
    straight = train(TrainConfig(lr, hr, tmp_path / "a", steps=4, val_every=2, **RESSHIFT), validate=lambda t: {"v": float(t.step)})
    train(TrainConfig(lr, hr, tmp_path / "b", steps=2, val_every=2, **RESSHIFT), validate=lambda t: {"v": float(t.step)})
    resumed = train(TrainConfig(lr, hr, tmp_path / "b", steps=4, val_every=2, **RESSHIFT), validate=lambda t: seen.append(t.step) or {"v": float(t.step)})
    a, b = load_file(str(straight)), load_file(str(resumed))
    assert straight.name == "resshift.safetensors" and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any(k.startswith("vqvae.") for k in a) and seen == [4]
    assert (tmp_path / "b" / "val_log.csv").read_text().splitlines() == ["step,v", "0,0", "2,2", "4,4"]
    out = tmp_path / "sr"
    assert main(["infer", "--model", "resshift", "--input", str(lr / "p0.tif"), "--out", str(out), "--checkpoint", str(straight),
                 "--steps", "4", "--tile", "16", "--overlap", "0", "--device", "cpu", "--scale", "10000"]) == 0
    data, tags, transform, *_ = read(out / "p0.tif")
    assert data.shape == (4, 64, 64) and np.isfinite(data).all() and tags["sampler"] == "resshift"
    assert transform == TRANSFORM @ TRANSFORM.scale(0.25)


def test_resshift_loss_is_zero_for_a_perfect_x0_predictor(pairs: tuple[Path, Path], tmp_path: Path) -> None:
    """Independent check of the residual-shifting loss: a network that returns x0 exactly has zero loss, one that returns
    y0 (the upsampled LR) has loss mean((y0 - x0)^2)."""
    import torch.nn.functional as F

    from gapeval.infer.train import Trainer, family

    trainer = Trainer(TrainConfig(*pairs, tmp_path / "o", steps=1, **RESSHIFT))
    x0, y_lr = torch.rand(2, 4, 32, 32) * 2 - 1, torch.rand(2, 4, 8, 8) * 2 - 1
    y0 = F.interpolate(y_lr, scale_factor=4, mode="bicubic", align_corners=False)
    fam = family("resshift")
    g = torch.Generator().manual_seed(0)
    assert fam.loss(lambda x, t, lq: x0, x0, y_lr, g, trainer).item() == 0.0
    assert fam.loss(lambda x, t, lq: lq, x0, y_lr, g, trainer).item() == pytest.approx(float(((y0 - x0) ** 2).mean()), rel=1e-6)


def test_sr3_schedule_overrides_reach_the_sampler(pairs: tuple[Path, Path], tmp_path: Path) -> None:
    """A partial schedule is completed with the defaults; clip_sample in it makes the sampler clip x0 (off by default)."""
    from gapeval.infer.base import SamplingOptions
    from gapeval.infer.registry import load_adapter
    from gapeval.infer.sr3 import DEFAULT_SCHEDULE

    cfg = TrainConfig(*pairs, tmp_path / "c", steps=1, schedule={"clip_sample": True}, **TINY)
    assert cfg.schedule == {**DEFAULT_SCHEDULE, "clip_sample": True}
    clipped = load_adapter("sr3", str(train(cfg)), SamplingOptions(steps=2))[0]
    plain = load_adapter("sr3", str(train(TrainConfig(*pairs, tmp_path / "p", steps=1, **TINY))), SamplingOptions(steps=2))[0]
    assert clipped.scheduler.config.clip_sample is True and plain.scheduler.config.clip_sample is False


def test_logs_survive_an_interruption_while_the_checkpoint_is_written(pairs: tuple[Path, Path], tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed between the state file and the model file: the resumed run still has one loss row per step."""
    import gapeval.infer.train as tr

    train(TrainConfig(*pairs, tmp_path / "o", steps=2, **TINY))
    real, calls = tr.save_safetensors, []

    def flaky(path, tensors, meta):
        calls.append(Path(path).name)
        if len(calls) == 2:  # the state of step 4 is on disk, the model file is not
            raise KeyboardInterrupt
        return real(path, tensors, meta)

    monkeypatch.setattr(tr, "save_safetensors", flaky)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(*pairs, tmp_path / "o", steps=4, **TINY))
    monkeypatch.setattr(tr, "save_safetensors", real)
    train(TrainConfig(*pairs, tmp_path / "o", steps=6, **TINY))
    rows = (tmp_path / "o" / "train_log.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == [1, 2, 3, 4, 5, 6]
