"""Self-supervised pretraining of the LPIPS-Sat backbone on Sentinel-2 (and aerial) imagery.

Recipe (SimCLR-style InfoNCE, Chen et al. 2020, with metric-aware views):

* two views of one place differ only by *nuisances*: crop offset of up to ``--jitter`` px, the nuisance
  families of :mod:`lpips_sat.train.distortions` (sub-pixel shift, warp, gain/offset, spectral mixing, mild
  noise); both views share flips/rot90 (orientation is content, not a nuisance);
* never blur or texture damage as a positive: instead, with ``--hard-negatives`` > 0, a damaged copy of the
  anchor (training damage families only) is an extra *negative*, so the features must see the damage;
* NT-Xent loss on a 2-layer projection of the pooled last stage, temperature ``--temperature``.

Held-out families (of ``--protocol``) and the bottom ``--holdout`` fraction of every raster are never seen.
State is checkpointed every ``--checkpoint-every`` steps and resumed with ``--resume``.

v2 options (off by default, so the v1 recipe is reproduced unchanged):

* ``--input-norm per-image``: every image is standardised per band (:func:`lpips_sat.metric.standardize_per_image`)
  before the backbone, so gain/offset differences are removed by construction;
* ``--init``: warm start from a shipped or saved LPIPS-Sat weights file (the backbone part, loaded strictly);
* ``--pairs``: a folder of co-registered acquisitions of one place (NAIP years): a ``--pair-fraction`` of the
  anchors take their two views from two different years (real sensor, season and registration differences),
  keeping only crops whose band-mean correlation is above ``--pair-min-corr`` (land-cover change is no nuisance);
* ``--rank-weight``: a metric-aware term on the hard-negative anchors: the LPIPS distance (all-ones heads, sum of
  taps) of (clean, nuisance view) must stay below that of (clean, damaged copy) by a log-ratio margin
  ``--rank-margin`` (softplus hinge); the damage family is drawn per sample;
* ``--rank-register MAX_SHIFT``: the ranking term compares registered triplets (:func:`register_triplets`), as the
  v5 distance does, so the backbone is not asked to make a shift it will never see cost little.
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
from lpips_sat.backbones import TAPS, ResNetTaps, load_strict
from lpips_sat.bands import DEFAULT_BANDS
from lpips_sat.hub import save_folder
from lpips_sat.metric import INPUT_NORMS, STD_FLOOR, normalize_channels, standardize_per_image, texture_distance
from lpips_sat.options import fraction, nonnegative_float, nonnegative_int, number, open_fraction, positive_float, positive_int
from lpips_sat.register import applied_shift, estimate_shift, exposed, translate
from lpips_sat.registry import get_entry, load_weights, save_weights, weights_dir
from lpips_sat.train.checkpoint import load_state, save_state
from lpips_sat.train.data import CropSampler, PairSampler, Source, load_source, split_rows
from lpips_sat.train.distortions import FAMILIES, MARGIN, PROTOCOLS, TRAIN_FAMILIES, apply, crop_margin, super_resolve

log = logging.getLogger(__name__)

NUISANCES = tuple(f for f in TRAIN_FAMILIES if FAMILIES[f].kind == "nuisance")
DAMAGES = tuple(f for f in TRAIN_FAMILIES if FAMILIES[f].kind == "damage")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", action="append", required=True, metavar="DIR[:BANDS[:SCALE]]",
                   help="GeoTIFF folder; BANDS a preset (default s2-l1c-13), SCALE divisor to reflectance (default 10000) or 'moments'")
    p.add_argument("--out", default="runs/pretrain", help="output folder (checkpoint, loss curve, backbone.safetensors)")
    p.add_argument("--arch", default="resnet18", choices=["resnet18", "resnet34", "resnet50"])
    p.add_argument("--steps", type=nonnegative_int, default=1500, help="0: write the --init backbone unchanged (with this recipe's metadata)")
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
    p.add_argument("--time-schedule", action="store_true",
                   help="cosine schedule over max(step / steps, elapsed / time budget): anneals fully when time, not steps, runs out")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--protocol", default="v1", choices=sorted(PROTOCOLS), help="family split: which nuisances/damages training may use")
    p.add_argument("--input-norm", default="global", choices=INPUT_NORMS, help="global: (x - mean)/std of the data; per-image: per image and band")
    p.add_argument("--input-floor", type=positive_float, default=STD_FLOOR,
                   help="per-image: floor (reflectance) under each band's std, so flat patches do not amplify sensor noise")
    p.add_argument("--init", help="warm start: LPIPS-Sat weights (registry name or .safetensors) whose backbone is loaded strictly")
    p.add_argument("--pairs", metavar="DIR[:BANDS[:SCALE]]", help="folder of co-registered acquisitions of one place (same grid up to sub-pixel)")
    p.add_argument("--pair-fraction", type=fraction, default=0.25, help="fraction of anchors whose views come from two acquisitions")
    p.add_argument("--pair-min-corr", type=number(float, -1, 1), default=0.8, help="minimum band-mean correlation of the two acquisitions' crops")
    p.add_argument("--rank-weight", type=nonnegative_float, default=0.0, help="weight of the metric-aware ranking term (0: off)")
    p.add_argument("--rank-margin", type=nonnegative_float, default=0.5, help="log-ratio margin of the ranking term")
    p.add_argument("--rank-form", default="lpips", choices=["lpips", "lpips+texture"],
                   help="lpips+texture: the ranking term also holds for the texture term (v3 distance form), each a log-ratio hinge")
    p.add_argument("--sr-triplets", type=nonnegative_int, default=0,
                   help="SR-scale ranking triplets per step: SR of a plain x2/x4 input must stay closer than SR of a realistic one "
                        "(sensor-MTF blur 1-3 HR px, LR noise up to 0.004), so blur keeps its magnitude (0: off; needs --rank-weight)")
    p.add_argument("--sr-margin", type=nonnegative_float, default=0.2, help="log-ratio margin of the SR-scale ranking term")
    p.add_argument("--rank-register", type=nonnegative_float, default=0.0, metavar="MAX_SHIFT",
                   help="the ranking term sees each triplet as the v5 distance does: the closer and the further image registered "
                        "onto the clean one (translation up to MAX_SHIFT px removed, lpips_sat.register) before the backbone (0: off)")
    p.add_argument("--width-div", type=positive_int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--stop-at", type=nonnegative_int, default=0, help=argparse.SUPPRESS)  # simulate an interruption (tests)


class Projector(nn.Module):
    def __init__(self, dim_in: int, dim_out: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim_in, dim_in), nn.BatchNorm1d(dim_in), nn.ReLU(inplace=True), nn.Linear(dim_in, dim_out))

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(feat.mean(dim=(2, 3))), dim=1)


def _nuisance(v: torch.Tensor, nuisances: tuple[str, ...], k: int, g: torch.Generator) -> torch.Tensor:
    for name in (nuisances[int(i)] for i in torch.randperm(len(nuisances), generator=g)[:k]):
        v = apply(name, v, torch.rand(v.shape[0], generator=g), g)
    return v


def make_views_v2(sampler: CropSampler, pairs: PairSampler | None, batch: int, crop: int, jitter: int, hard: float,
                  pair_fraction: float, nuisances: tuple[str, ...], damages: tuple[str, ...], g: torch.Generator):
    """Views for v2: (view1, view2) InfoNCE pairs and (clean, nuisance, damaged) triplets of the first anchors.

    Anchors from ``pairs`` take view2 and the triplet's nuisance member from the other acquisition. Damage
    families are drawn per sample, severity 0.35-1 (the calibration's "clearly damaged" range).
    """
    ctx_size = crop + 2 * MARGIN + jitter
    n_pair = int(round(pair_fraction * batch)) if pairs is not None else 0
    ctx_a = sampler.sample(batch - n_pair, ctx_size)
    ctx_b = ctx_a
    if n_pair:
        pa, pb = pairs.sample(n_pair, ctx_size)
        ctx_a, ctx_b = torch.cat([pa, ctx_a]), torch.cat([pb, ctx_a])
    k = int(torch.randint(0, 4, (1,), generator=g))
    ctx_a, ctx_b = torch.rot90(ctx_a, k, (2, 3)), torch.rot90(ctx_b, k, (2, 3))
    if torch.rand(1, generator=g) < 0.5:
        ctx_a, ctx_b = torch.flip(ctx_a, (3,)), torch.flip(ctx_b, (3,))
    views = []
    for ctx in (ctx_a, ctx_b):
        oy, ox = (int(v) for v in torch.randint(0, jitter + 1, (2,), generator=g))
        v = ctx[..., oy : oy + crop + 2 * MARGIN, ox : ox + crop + 2 * MARGIN]
        views.append(crop_margin(_nuisance(v, nuisances, 2, g)))
    n_hard = int(round(hard * batch))
    if not n_hard:
        return views[0], views[1], None
    c0 = jitter // 2
    centre = lambda t: t[:n_hard, :, c0 : c0 + crop + 2 * MARGIN, c0 : c0 + crop + 2 * MARGIN]
    base_a, base_b = centre(ctx_a), centre(ctx_b)
    clean = crop_margin(base_a)
    nuis = crop_margin(_nuisance(base_b, nuisances, 1, g))
    damaged = torch.empty_like(clean)
    for i in range(n_hard):
        name = damages[int(torch.randint(0, len(damages), (1,), generator=g))]
        damaged[i] = crop_margin(apply(name, base_a[i : i + 1], 0.35 + 0.65 * float(torch.rand(1, generator=g)), g))[0]
    return views[0], views[1], (clean, nuis, damaged)


def make_sr_triplets(sampler: CropSampler, n: int, crop: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(reference, SR of a plain input, SR of a realistic input) for ``n`` crops: the first half reduced x2, the rest x4;
    realistic = a sensor-MTF blur of 1-3 HR px before the reduction and LR noise of 0-0.004 reflectance
    (:func:`lpips_sat.train.distortions.super_resolve`; the judgments of ``calibrate --n-sr``)."""
    ref = sampler.sample(n, crop)
    sigma = 1.0 + 2.0 * torch.rand(n, generator=g)
    noise = 0.004 * torch.rand(n, generator=g)
    plain, real = torch.empty_like(ref), torch.empty_like(ref)
    for part, f in ((slice(0, n // 2), 2), (slice(n // 2, n), 4)):
        plain[part] = super_resolve(ref[part], f)
        real[part] = super_resolve(ref[part], f, sigma[part], noise[part], g)
    return ref, plain, real


def register_triplets(trip: tuple[torch.Tensor, torch.Tensor, torch.Tensor], max_shift: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(clean, closer, further) with the closer and further images registered onto the clean one: the applied part of
    the estimated shift (:func:`lpips_sat.register.applied_shift`) removed by Lanczos resampling, the strip a shift
    exposes taking the clean image's pixels. One-sided (the clean anchor serves both pairs); the metric moves both
    images halfway, which measured the same on the real check (v5 model card)."""
    clean, *others = trip
    h, w = clean.shape[-2:]
    out = []
    for x in others:
        shift = applied_shift(estimate_shift(x, clean, max_shift))
        out.append(torch.where(exposed(shift, h, w), clean, translate(x, shift)))
    return clean, out[0], out[1]


def ranking(feats: list[torch.Tensor], m: int, margin: float, form: str) -> tuple[torch.Tensor, float]:
    """Ranking loss and accuracy of ``m`` triplets laid out as rows (anchors, closer, further) of channel-normalised taps."""
    a, pos, neg = slice(0, m), slice(m, 2 * m), slice(2 * m, 3 * m)
    d_pos, d_neg = lpips_distance(feats, a, pos), lpips_distance(feats, a, neg)
    r = rank_loss(d_pos, d_neg, margin)
    if form == "lpips+texture":
        r = r + rank_loss(texture_term(feats, a, pos), texture_term(feats, a, neg), margin)
    return r, float((d_pos < d_neg).float().mean())


def lpips_distance(feats: list[torch.Tensor], a: slice, b: slice) -> torch.Tensor:
    """Uncalibrated LPIPS distance (all-ones heads, sum over taps) between rows ``a`` and ``b`` of channel-normalised taps."""
    total = 0.0
    for f in feats:
        total = total + (f[a] - f[b]).pow(2).sum(1).mean(dim=(1, 2))
    return total


def texture_term(feats: list[torch.Tensor], a: slice, b: slice) -> torch.Tensor:
    """Uncalibrated texture term (all-ones texture heads, sum over taps; :func:`lpips_sat.metric.texture_distance`) between
    rows ``a`` and ``b`` of channel-normalised taps."""
    total = 0.0
    for f in feats:
        total = total + texture_distance(f[a], f[b], torch.ones(1, f.shape[1]))
    return total


def rank_loss(d_pos: torch.Tensor, d_neg: torch.Tensor, margin: float, sharpness: float = 4.0) -> torch.Tensor:
    """Softplus hinge on log distances: ``log d_pos + margin`` should stay below ``log d_neg``."""
    z = torch.log(d_pos + 1e-6) - torch.log(d_neg + 1e-6) + margin
    return F.softplus(sharpness * z).mean() / sharpness


def _load_init(text: str, backbone: ResNetTaps) -> None:
    path = Path(text)
    if not path.is_file():
        entry = get_entry(text)
        path = weights_dir() / str(entry.file)
    tensors, _ = load_weights(path)
    load_strict(backbone, {k[len("backbone."):]: v for k, v in tensors.items() if k.startswith("backbone.")}, str(path))


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
    pairs = None
    if args.pairs:
        stacks = []
        for im in load_source(Source.parse(args.pairs)):
            train, _ = split_rows(im.data, args.holdout)
            stacks.append(train)
            provenance.append({"file": im.name, "sha256": im.sha256, "rows_used": int(train.shape[1]), "source": args.pairs + " (pairs)"})
        pairs = PairSampler(stacks, args.pair_min_corr, args.seed)
    if args.input_norm == "per-image":
        mean, std = [0.0] * len(DEFAULT_BANDS), [1.0] * len(DEFAULT_BANDS)
    else:
        stacked = np.concatenate([im.reshape(4, -1) for im in images], axis=1)
        mean, std = stacked.mean(1).tolist(), stacked.std(1).tolist()
        del stacked
    sampler = CropSampler(images, args.crop, args.seed)
    torch.manual_seed(args.seed)
    backbone = ResNetTaps(args.arch, in_chans=len(DEFAULT_BANDS), width_div=args.width_div)
    if args.init:
        _load_init(args.init, backbone)
    protocol = PROTOCOLS[args.protocol]["train"]
    nuisances = tuple(f for f in protocol if FAMILIES[f].kind == "nuisance")
    damages = tuple(f for f in protocol if FAMILIES[f].kind == "damage")
    v2 = args.protocol != "v1" or args.input_norm != "global" or bool(args.pairs) or args.rank_weight > 0
    use_sr = args.sr_triplets > 0 and args.rank_weight > 0  # the SR-scale triplets are a ranking term
    projector = Projector(backbone.channels[-1])
    params = list(backbone.parameters()) + list(projector.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    mean_t, std_t = torch.tensor(mean).reshape(1, -1, 1, 1), torch.tensor(std).reshape(1, -1, 1, 1)
    ckpt = out / "checkpoint.safetensors"
    step, elapsed0 = 0, 0.0
    if args.resume and ckpt.exists():
        info = load_state(ckpt, {"backbone": backbone, "projector": projector}, opt)
        step, elapsed0 = info["step"], float(info.get("elapsed", 0.0))
        log.info("resumed at step %d", step)
    recipe = {k: v for k, v in vars(args).items() if not k.startswith("_") and k not in ("resume", "threads", "checkpoint_every", "stop_at")}
    start = time.time()
    losses = out / "loss.csv"
    if step == 0:
        header = "step,loss,lr,seconds" + (",infonce,rank,rank_acc" if v2 else "") + (",sr_rank,sr_acc" if v2 and use_sr else "")
        losses.write_text(header + "\n")
    backbone.train()
    projector.train()
    while step < args.steps:
        progress = step / args.steps
        if args.time_schedule and args.time_budget:
            progress = max(progress, (elapsed0 + time.time() - start) / (args.time_budget * 60))
            if progress >= 1.0:
                break
        lr = args.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))) * min(1.0, (step + 1) / 50)
        for group in opt.param_groups:
            group["lr"] = lr
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        sampler.rng = np.random.default_rng([args.seed, step])
        extra = ""
        if not v2:
            v1, v2_, neg = make_views(sampler, args.batch, args.crop, args.jitter, args.hard_negatives, g)
            batch = torch.cat([v1, v2_] + ([neg] if neg is not None else []))
            z = projector(backbone((batch - mean_t) / std_t)[-1])
            n = v1.shape[0]
            loss = nt_xent(z[:n], z[n : 2 * n], z[2 * n :] if neg is not None else None, args.temperature)
        else:
            v1, v2_, trip = make_views_v2(sampler, pairs, args.batch, args.crop, args.jitter, args.hard_negatives,
                                          args.pair_fraction, nuisances, damages, g)
            if trip is not None and args.rank_register > 0:
                trip = register_triplets(trip, args.rank_register)
            sr = make_sr_triplets(sampler, args.sr_triplets, args.crop, g) if use_sr else None
            batch = torch.cat([v1, v2_] + (list(trip) if trip is not None else []) + (list(sr) if sr is not None else []))
            x = standardize_per_image(batch, args.input_floor) if args.input_norm == "per-image" else (batch - mean_t) / std_t
            taps = backbone(x)
            z = projector(taps[-1])
            n = v1.shape[0]
            m = trip[0].shape[0] if trip is not None else 0
            o = 2 * n
            info = nt_xent(z[:n], z[n:o], z[o + 2 * m : o + 3 * m] if m else None, args.temperature)
            loss, r, acc = info, torch.zeros(()), float("nan")
            if m and args.rank_weight > 0:
                # the triplet rows (clean, nuisance, damaged), channel-normalised once for both terms
                r, acc = ranking([normalize_channels(t[o : o + 3 * m]) for t in taps], m, args.rank_margin, args.rank_form)
                loss = info + args.rank_weight * r
            extra = f",{info.item():.5f},{r.item():.5f},{acc:.4f}"
            if sr is not None:
                k, o2 = args.sr_triplets, o + 3 * m
                r_sr, acc_sr = ranking([normalize_channels(t[o2 : o2 + 3 * k]) for t in taps], k, args.sr_margin, args.rank_form)
                loss = loss + args.rank_weight * r_sr
                extra += f",{r_sr.item():.5f},{acc_sr:.4f}"
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        with open(losses, "a") as fh:
            fh.write(f"{step},{loss.item():.5f},{lr:.6g},{time.time() - start:.1f}{extra}\n")
        if step % args.checkpoint_every == 0 or step == args.steps:
            save_state(ckpt, {"backbone": backbone, "projector": projector}, opt, {"step": step, "elapsed": elapsed0 + time.time() - start})
            log.info("step %d loss %.4f", step, loss.item())
        if args.stop_at and step >= args.stop_at:
            save_state(ckpt, {"backbone": backbone, "projector": projector}, opt, {"step": step, "elapsed": elapsed0 + time.time() - start})
            return 0
        if args.time_budget and not args.time_schedule and time.time() - start > args.time_budget * 60:
            save_state(ckpt, {"backbone": backbone, "projector": projector}, opt, {"step": step, "elapsed": elapsed0 + time.time() - start})
            log.warning("time budget reached at step %d; resume with --resume", step)
            break
    backbone.eval()
    meta = {"arch": args.arch, "bands": json.dumps(list(DEFAULT_BANDS)), "mean": json.dumps(mean), "std": json.dumps(std),
            "width_div": str(args.width_div), "recipe": json.dumps(recipe), "steps_done": str(step), "data": json.dumps(provenance),
            "input_norm": args.input_norm}
    if args.input_norm == "per-image" and args.input_floor != STD_FLOOR:
        meta["input_floor"] = repr(args.input_floor)
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
