"""Self-supervised pretraining of the LPIPS-Sat backbone on Sentinel-2 (and aerial) imagery.

Recipe (SimCLR-style InfoNCE, Chen et al. 2020, with metric-aware views):

* two views of one place differ only by *nuisances*: crop offset of up to ``--jitter`` px, the nuisance
  families of :mod:`lpips_sat.train.distortions` (sub-pixel shift, warp, gain/offset, spectral mixing, mild
  noise); both views share flips/rot90 (orientation is content, not a nuisance);
* never blur or texture damage as a positive: instead, with ``--hard-negatives`` > 0, a damaged copy of the
  anchor (training damage families only) is an extra *negative*, so the features must see the damage;
* NT-Xent loss on a 2-layer projection of the pooled last stage, temperature ``--temperature``.

Held-out families (:data:`HELDOUT_FAMILIES`) and the bottom ``--holdout`` fraction of every raster are never seen.
State is checkpointed every ``--checkpoint-every`` steps and resumed with ``--resume``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lpips_sat.atomic import make_folder, remove_stale_temporaries
from lpips_sat.backbones import TAPS, ResNetTaps
from lpips_sat.bands import DEFAULT_BANDS
from lpips_sat.options import fraction, nonnegative_float, nonnegative_int, number, open_fraction, positive_float, positive_int
from lpips_sat.hub import save_folder
from lpips_sat.registry import save_weights
from lpips_sat.train.checkpoint import load_state, save_state
from lpips_sat.train.data import CropSampler, Source, load_source, split_rows
from lpips_sat.train.distortions import FAMILIES, MARGIN, TRAIN_FAMILIES, apply, crop_margin

log = logging.getLogger(__name__)

NUISANCES = tuple(f for f in TRAIN_FAMILIES if FAMILIES[f].kind == "nuisance")
DAMAGES = tuple(f for f in TRAIN_FAMILIES if FAMILIES[f].kind == "damage")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", action="append", required=True, metavar="DIR[:BANDS[:SCALE]]",
                   help="GeoTIFF folder; BANDS a preset (default s2-l1c-13), SCALE divisor to reflectance (default 10000) or 'moments'")
    p.add_argument("--out", default="runs/pretrain", help="output folder (checkpoint, loss curve, backbone.safetensors)")
    p.add_argument("--arch", default="resnet18", choices=["resnet18", "resnet34", "resnet50"])
    p.add_argument("--steps", type=positive_int, default=1500)
    p.add_argument("--batch", type=number(int, 2), default=48)
    p.add_argument("--crop", type=number(int, 32), default=64)
    p.add_argument("--jitter", type=nonnegative_int, default=8, help="max crop offset between the two views (px)")
    p.add_argument("--lr", type=positive_float, default=2e-3)
    p.add_argument("--weight-decay", type=nonnegative_float, default=1e-4)
    p.add_argument("--temperature", type=positive_float, default=0.2)
    p.add_argument("--hard-negatives", type=fraction, default=0.5, help="fraction of anchors given a damaged copy as extra negative")
    p.add_argument("--holdout", type=open_fraction, default=0.25, help="bottom fraction of every raster reserved for validation")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--threads", type=nonnegative_int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--checkpoint-every", type=positive_int, default=25)
    p.add_argument("--time-budget", type=nonnegative_float, default=0.0, help="stop (and save) after this many minutes; 0 = no limit")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--width-div", type=positive_int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--stop-at", type=nonnegative_int, default=0, help=argparse.SUPPRESS)  # simulate an interruption (tests)


class Projector(nn.Module):
    def __init__(self, dim_in: int, dim_out: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim_in, dim_in), nn.BatchNorm1d(dim_in), nn.ReLU(inplace=True), nn.Linear(dim_in, dim_out))

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(feat.mean(dim=(2, 3))), dim=1)


def make_views(sampler: CropSampler, batch: int, crop: int, jitter: int, hard: float, g: torch.Generator):
    """Sample contexts and return (view1, view2, damaged) batches of (N, 4, crop, crop) reflectance."""
    ctx_size = crop + 2 * MARGIN + jitter
    ctx = sampler.sample(batch, ctx_size)
    k = int(torch.randint(0, 4, (1,), generator=g))
    ctx = torch.rot90(ctx, k, (2, 3))
    if torch.rand(1, generator=g) < 0.5:
        ctx = torch.flip(ctx, (3,))
    views = []
    for _ in range(2):
        oy, ox = (int(v) for v in torch.randint(0, jitter + 1, (2,), generator=g))
        v = ctx[..., oy : oy + crop + 2 * MARGIN, ox : ox + crop + 2 * MARGIN]
        for name in (NUISANCES[int(i)] for i in torch.randperm(len(NUISANCES), generator=g)[:2]):
            v = apply(name, v, torch.rand(batch, generator=g), g)
        views.append(crop_margin(v))
    n_hard = int(round(hard * batch))
    damaged = None
    if n_hard:
        base = ctx[:n_hard, :, jitter // 2 : jitter // 2 + crop + 2 * MARGIN, jitter // 2 : jitter // 2 + crop + 2 * MARGIN]
        name = DAMAGES[int(torch.randint(0, len(DAMAGES), (1,), generator=g))]
        damaged = crop_margin(apply(name, base, 0.3 + 0.7 * torch.rand(n_hard, generator=g), g))
    return views[0], views[1], damaged


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, zneg: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE: each z1[i] must pick z2[i] among z2 (and the hard negatives), and vice versa."""
    keys2 = z2 if zneg is None else torch.cat([z2, zneg])
    keys1 = z1 if zneg is None else torch.cat([z1, zneg])
    labels = torch.arange(z1.shape[0])
    return 0.5 * (F.cross_entropy(z1 @ keys2.T / temperature, labels) + F.cross_entropy(z2 @ keys1.T / temperature, labels))


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    out = make_folder(args.out, "--out")
    remove_stale_temporaries(out)
    images, provenance = [], []
    for text in args.data:
        for im in load_source(Source.parse(text)):
            train, _ = split_rows(im.data, args.holdout)
            images.append(train)
            provenance.append({"file": im.name, "sha256": im.sha256, "rows_used": int(train.shape[1]), "source": text})
    stacked = np.concatenate([im.reshape(4, -1) for im in images], axis=1)
    mean, std = stacked.mean(1).tolist(), stacked.std(1).tolist()
    del stacked
    sampler = CropSampler(images, args.crop, args.seed)
    torch.manual_seed(args.seed)
    backbone = ResNetTaps(args.arch, in_chans=len(DEFAULT_BANDS), width_div=args.width_div)
    projector = Projector(backbone.channels[-1])
    params = list(backbone.parameters()) + list(projector.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    mean_t, std_t = torch.tensor(mean).reshape(1, -1, 1, 1), torch.tensor(std).reshape(1, -1, 1, 1)
    ckpt = out / "checkpoint.safetensors"
    step = 0
    if args.resume and ckpt.exists():
        step = load_state(ckpt, {"backbone": backbone, "projector": projector}, opt)["step"]
        log.info("resumed at step %d", step)
    recipe = {k: v for k, v in vars(args).items() if not k.startswith("_") and k not in ("resume", "threads", "time_budget", "checkpoint_every", "stop_at")}
    start = time.time()
    losses = out / "loss.csv"
    if step == 0:
        losses.write_text("step,loss,lr,seconds\n")
    backbone.train()
    projector.train()
    while step < args.steps:
        lr = args.lr * 0.5 * (1 + math.cos(math.pi * step / args.steps)) * min(1.0, (step + 1) / 50)
        for group in opt.param_groups:
            group["lr"] = lr
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        sampler.rng = np.random.default_rng([args.seed, step])
        v1, v2, neg = make_views(sampler, args.batch, args.crop, args.jitter, args.hard_negatives, g)
        batch = torch.cat([v1, v2] + ([neg] if neg is not None else []))
        z = projector(backbone((batch - mean_t) / std_t)[-1])
        n = v1.shape[0]
        loss = nt_xent(z[:n], z[n : 2 * n], z[2 * n :] if neg is not None else None, args.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        with open(losses, "a") as fh:
            fh.write(f"{step},{loss.item():.5f},{lr:.6g},{time.time() - start:.1f}\n")
        if step % args.checkpoint_every == 0 or step == args.steps:
            save_state(ckpt, {"backbone": backbone, "projector": projector}, opt, {"step": step})
            log.info("step %d loss %.4f", step, loss.item())
        if args.stop_at and step >= args.stop_at:
            save_state(ckpt, {"backbone": backbone, "projector": projector}, opt, {"step": step})
            return 0
        if args.time_budget and time.time() - start > args.time_budget * 60:
            save_state(ckpt, {"backbone": backbone, "projector": projector}, opt, {"step": step})
            log.warning("time budget reached at step %d; resume with --resume", step)
            break
    backbone.eval()
    meta = {"arch": args.arch, "bands": json.dumps(list(DEFAULT_BANDS)), "mean": json.dumps(mean), "std": json.dumps(std),
            "width_div": str(args.width_div), "recipe": json.dumps(recipe), "steps_done": str(step), "data": json.dumps(provenance)}
    sha = save_weights(out / "backbone.safetensors", {f"backbone.{k}": v for k, v in backbone.state_dict().items()}, meta, dtype=torch.float32)
    print(f"backbone written to {out / 'backbone.safetensors'} (sha256 {sha}, {step} steps)")
    # the same backbone with all-ones heads (uncalibrated LPIPS) as a hub model folder: LPIPSSat.from_pretrained(out / "model")
    ones = {f"heads.{i}.weight": torch.ones(1, c, 1, 1) for i, c in enumerate(backbone.channels)}
    folder = save_folder(out / "model", {**{f"backbone.{k}": v for k, v in backbone.state_dict().items()}, **ones},
                         {**meta, "name": out.name, "taps": json.dumps(list(TAPS)), "description": "LPIPS-Sat backbone after pretraining, uncalibrated (all-ones heads)"})
    print(f"model folder (uncalibrated, all-ones heads): {folder}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m lpips_sat.train.pretrain`` (same options as ``lpips-sat pretrain``)."""
    import sys

    from lpips_sat.train import module_main

    return module_main(sys.modules[__name__], "lpips-sat pretrain", argv)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
