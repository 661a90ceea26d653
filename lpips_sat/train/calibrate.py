"""2AFC calibration of the LPIPS-Sat heads (Zhang et al. 2018, sec. 3.3) on synthetic, unambiguous judgments.

A judgment is a triplet (ref, a, b) with the probability ``p`` that ``a`` is closer to ``ref``. Synthetic
judgments come from real imagery and :mod:`lpips_sat.train.distortions`:

* *cross*: a = a nuisance (any severity), b = a damage (severity >= 0.35): ``p = 1``;
* *within*: a, b = one family at severities s1 < s2 - 0.3: ``p = 1``.

Because the distance is linear in the heads, ``d = sum_c w_c mean_hw (f_ref - f_x)_c^2``, every triplet is
featurised once into per-channel mean squared differences; the heads (``w >= 0``) and the small ranking network
``G(d0, d1, d0 - d1, d0/d1, d1/d0)`` are then trained with BCE in seconds. The head L2 strength is chosen by
leave-one-family-out cross-validation *within the training families*; held-out families and scenes are only
used for the final report.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lpips_sat.atomic import make_folder, remove_stale_temporaries
from lpips_sat.backbones import TAPS, ResNetTaps, load_strict
from lpips_sat.errors import InputError, WeightsError
from lpips_sat.hub import save_folder
from lpips_sat.metric import STD_FLOOR, input_floor, normalize_channels, standardize_per_image, texture_differences
from lpips_sat.options import nonnegative_float, nonnegative_int, number, open_fraction, positive_int
from lpips_sat.register import max_shift_of
from lpips_sat.register import register as register_pair
from lpips_sat.registry import load_weights, save_weights, sha256_file
from lpips_sat.train.data import PS_OVER_S2, CropSampler, PairSampler, Source, area_average, load_source, reference_scenes, split_rows
from lpips_sat.train.distortions import FAMILIES, MARGIN, PROTOCOLS, TRAIN_FAMILIES, apply, crop_margin, super_resolve

log = logging.getLogger(__name__)

PATCH = 64


@dataclass
class Triplets:
    """Featurised judgments: per-channel squared differences and baseline distances of (ref, a) and (ref, b)."""

    d0: torch.Tensor  # (N, sum C)
    d1: torch.Tensor
    p: torch.Tensor  # (N,) probability that a is closer
    fam_a: list[str] = field(default_factory=list)
    fam_b: list[str] = field(default_factory=list)
    base0: dict[str, torch.Tensor] = field(default_factory=dict)
    base1: dict[str, torch.Tensor] = field(default_factory=dict)

    def subset(self, mask: torch.Tensor) -> Triplets:
        idx = torch.nonzero(mask).flatten().tolist()
        return Triplets(self.d0[idx], self.d1[idx], self.p[idx], [self.fam_a[i] for i in idx], [self.fam_b[i] for i in idx],
                        {k: v[idx] for k, v in self.base0.items()}, {k: v[idx] for k, v in self.base1.items()})

    @staticmethod
    def cat(items: Sequence[Triplets]) -> Triplets:
        return Triplets(torch.cat([t.d0 for t in items]), torch.cat([t.d1 for t in items]), torch.cat([t.p for t in items]),
                        sum((t.fam_a for t in items), []), sum((t.fam_b for t in items), []),
                        {k: torch.cat([t.base0[k] for t in items]) for k in items[0].base0},
                        {k: torch.cat([t.base1[k] for t in items]) for k in items[0].base1})


def save_judgments(path: Path, sets: dict[str, dict[str, Triplets]], backbone_sha256: str) -> None:
    """Cache featurised judgments (safetensors; family names in the metadata) so head fitting can be re-run."""
    from safetensors.torch import save_file

    tensors, meta = {}, {}
    for set_name, by_feat in sets.items():
        for feat, t in by_feat.items():
            key = f"{set_name}|{feat}"
            tensors.update({f"{key}|d0": t.d0, f"{key}|d1": t.d1, f"{key}|p": t.p})
            tensors.update({f"{key}|b0|{k}": v for k, v in t.base0.items()})
            tensors.update({f"{key}|b1|{k}": v for k, v in t.base1.items()})
            meta[key] = json.dumps([t.fam_a, t.fam_b])
    tmp = path.with_suffix(".tmp")
    meta["__backbone_sha256__"] = backbone_sha256
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
    tmp.replace(path)


def load_judgments(path: Path, backbone_sha256: str) -> dict[str, dict[str, Triplets]]:
    """Inverse of :func:`save_judgments`; refuses a cache made with another backbone."""
    from safetensors import safe_open

    out: dict[str, dict[str, Triplets]] = {}
    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata())
        if meta.pop("__backbone_sha256__", None) != backbone_sha256:
            raise InputError(f"{path} was featurised with another backbone; drop --reuse-judgments")
        for key, fams in meta.items():
            set_name, feat = key.split("|")
            fam_a, fam_b = json.loads(fams)
            b0 = {k.split("|")[-1]: fh.get_tensor(k) for k in fh.keys() if k.startswith(f"{key}|b0|")}
            b1 = {k.split("|")[-1]: fh.get_tensor(k) for k in fh.keys() if k.startswith(f"{key}|b1|")}
            out.setdefault(set_name, {})[feat] = Triplets(fh.get_tensor(f"{key}|d0"), fh.get_tensor(f"{key}|d1"), fh.get_tensor(f"{key}|p"), fam_a, fam_b, b0, b1)
    return out


class Featurizer:
    """Backbone + normalisation turning images into per-channel mean squared tap differences.

    With ``texture=True`` (the v3 distance form) each row also holds, after the ``sum C`` LPIPS columns, the ``sum C``
    per-channel texture differences ``(mu_a - mu_b)^2 + (sigma_a - sigma_b)^2`` (:func:`lpips_sat.metric.texture_distance`).
    With ``register > 0`` (the v5 form) each image and the reference are registered by
    :func:`lpips_sat.register.register` (shifts of at most ``register`` px, both images move halfway), as in the metric.
    """

    def __init__(self, backbone: ResNetTaps, mean: Sequence[float], std: Sequence[float], input_norm: str = "global",
                 floor: float = STD_FLOOR, texture: bool = False, register: float = 0.0) -> None:
        self.backbone = backbone.eval()
        self.mean = torch.tensor(list(mean)).reshape(1, -1, 1, 1)
        self.std = torch.tensor(list(std)).reshape(1, -1, 1, 1)
        self.input_norm = input_norm
        self.floor = floor
        self.texture = texture
        self.register = register

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return standardize_per_image(x, self.floor) if self.input_norm == "per-image" else (x - self.mean) / self.std

    @torch.inference_mode()
    def _taps(self, z: torch.Tensor) -> list[torch.Tensor]:
        return [normalize_channels(f) for f in self.backbone(z)]

    @torch.inference_mode()
    def taps(self, x: torch.Tensor) -> list[torch.Tensor] | tuple[torch.Tensor, None]:
        """Taps of a reference image, for reuse by :meth:`diffs`; when registering, its normalised image instead (the
        registration moves the reference too, so its taps depend on the other image)."""
        z = self._normalise(x)
        if not self.register:
            return self._taps(z)
        return z, None

    @torch.inference_mode()
    def diffs(self, ref: torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor, None], x: torch.Tensor) -> torch.Tensor:
        """Per-channel mean squared tap differences; ``ref`` may be its precomputed :meth:`taps`."""
        fr = self.taps(ref) if isinstance(ref, torch.Tensor) else ref
        zx = self._normalise(x)
        if self.register:  # both images move (halfway), so the reference's taps are made per pair
            zx, zr, _ = register_pair(zx, fr[0], self.register)
            fr = self._taps(zr)
        fx = self._taps(zx)
        cols = [(a - b).pow(2).mean(dim=(2, 3)) for a, b in zip(fr, fx)]
        if self.texture:
            cols += [texture_differences(a, b) for a, b in zip(fr, fx)]
        return torch.cat(cols, dim=1)


def baseline_distances(ref: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Pixel-metric *distances* (lower = closer): MSE (ranks as PSNR), 1 - SSIM, 1 - MS-SSIM, SAM, L1 (torchmetrics).

    MS-SSIM: 3 scales with a 7-px Gaussian window and the first three weights of Wang et al. (2003),
    renormalised, because 64-px patches are too small for the standard 5 scales of an 11-px window.
    """
    try:
        from torchmetrics.functional.image import (
            multiscale_structural_similarity_index_measure,
            spectral_angle_mapper,
            structural_similarity_index_measure,
        )
    except ImportError as exc:  # pragma: no cover - optional dependency
        raise ImportError('lpips-sat calibrate scores its pixel-metric baselines with torchmetrics: pip install "lpips-sat[train]"') from exc

    ssim = structural_similarity_index_measure(x.double(), ref.double(), data_range=1.0, reduction="none")
    betas = (0.0448, 0.2856, 0.3001)
    betas = tuple(b / sum(betas) for b in betas)
    # MS-SSIM's contrast-structure products are raised to fractional powers: clamp at 0 (negative on anti-correlated
    # patches would give NaN)
    msssim = multiscale_structural_similarity_index_measure(x.double().clamp_min(0), ref.double().clamp_min(0), data_range=1.0, kernel_size=7,
                                                           betas=betas, reduction="none", normalize="relu")
    sam = spectral_angle_mapper(x.double().clamp_min(1e-6), ref.double().clamp_min(1e-6), reduction="none")
    return {"psnr": (x - ref).pow(2).mean(dim=(1, 2, 3)), "ssim": 1 - ssim.float(), "msssim": 1 - msssim.float(), "sam": sam.reshape(x.shape[0], -1).mean(1).float() if sam.ndim > 1 else sam.float(),
            "l1": (x - ref).abs().mean(dim=(1, 2, 3))}


def make_judgments(sampler: CropSampler, n: int, nuisances: Sequence[str], damages: Sequence[str], within: Sequence[str],
                   featurizers: dict[str, Featurizer], seed: int, chunk: int = 64, cross_fraction: float = 0.6,
                   baselines: bool = True) -> dict[str, Triplets]:
    """Generate ``n`` synthetic judgments and featurise them with every featurizer (same images for all).

    ``baselines=False`` skips the pixel-metric distances (most of the time: MS-SSIM/SSIM in float64), for a run that
    reads them from an earlier run's cache of the same judgments."""
    g = torch.Generator().manual_seed(seed)
    sampler.rng = np.random.default_rng(seed)

    def draw(m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str], list[str]]:
        ctx = sampler.sample(m, PATCH + 2 * MARGIN)
        a_list, b_list, fa, fb = [], [], [], []
        for i in range(m):
            one = ctx[i : i + 1]
            if torch.rand(1, generator=g) < cross_fraction:
                na = nuisances[int(torch.randint(0, len(nuisances), (1,), generator=g))]
                nb = damages[int(torch.randint(0, len(damages), (1,), generator=g))]
                sa, sb = float(torch.rand(1, generator=g)), 0.35 + 0.65 * float(torch.rand(1, generator=g))
            else:
                na = nb = within[int(torch.randint(0, len(within), (1,), generator=g))]
                sa = 0.6 * float(torch.rand(1, generator=g))
                sb = sa + 0.3 + (0.7 - sa) * float(torch.rand(1, generator=g))
            a_list.append(crop_margin(apply(na, one, sa, g)))
            b_list.append(crop_margin(apply(nb, one, sb, g)))
            fa.append(na)
            fb.append(nb)
        return crop_margin(ctx), torch.cat(a_list), torch.cat(b_list), fa, fb

    return _featurised_judgments(n, chunk, draw, g, featurizers, baselines)


Draw = Callable[[int], tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str], list[str]]]


def _featurised_judgments(n: int, chunk: int, draw: Draw, g: torch.Generator, featurizers: dict[str, Featurizer],
                          baselines: bool) -> dict[str, Triplets]:
    """``n`` judgments "a closer than b", ``draw(m)`` giving ``(ref, a, b, families of a, families of b)`` per chunk of
    at most ``chunk``; a and b are swapped at random (``p`` = 1 when not swapped) and featurised with every featurizer."""
    out: dict[str, list[Triplets]] = {k: [] for k in featurizers}
    done = 0
    while done < n:
        m = min(chunk, n - done)
        ref, a, b, fa, fb = draw(m)
        swap = torch.rand(m, generator=g) < 0.5
        a2, b2 = torch.where(swap[:, None, None, None], b, a), torch.where(swap[:, None, None, None], a, b)
        fam_a = [fb[i] if swap[i] else fa[i] for i in range(m)]
        fam_b = [fa[i] if swap[i] else fb[i] for i in range(m)]
        p = (~swap).float()
        base0, base1 = (baseline_distances(ref, a2), baseline_distances(ref, b2)) if baselines else ({}, {})
        for name, feat in featurizers.items():
            fr = feat.taps(ref)
            out[name].append(Triplets(feat.diffs(fr, a2), feat.diffs(fr, b2), p, fam_a, fam_b, base0, base1))
        done += m
    return {k: Triplets.cat(v) for k, v in out.items()}


#: Family label of a real cross-acquisition nuisance (two acquisitions of one place, see :func:`make_pair_judgments`).
ACQUISITION = "acquisition"


def make_pair_judgments(stacks: dict[int, PairSampler], n: int, damages: Sequence[str], featurizers: dict[str, Featurizer], seed: int,
                        chunk: int = 64, baselines: bool = True) -> dict[str, Triplets]:
    """``n`` real-nuisance judgments: a = another acquisition of the same place (with the PlanetScope/S2 band ratios),
    b = the reference with a damage (severity 0.35-1), ``p = 1`` that a is closer; a and b are swapped at random.

    ``stacks`` maps an area-averaging factor to a :class:`PairSampler` at that scale (factor 2: 10 m from 5 m NAIP,
    factor 1: 5 m, the SR-output scale), drawn with equal probability per chunk.
    """
    g = torch.Generator().manual_seed(seed)
    ratios = torch.tensor(PS_OVER_S2).reshape(1, -1, 1, 1)
    factors = sorted(stacks)
    for k, sampler in enumerate(stacks.values()):
        sampler.rng = np.random.default_rng([seed, k])

    def draw(m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str], list[str]]:
        sampler = stacks[factors[int(torch.randint(0, len(factors), (1,), generator=g))]]
        ctx_ref, ctx_other = sampler.sample(m, PATCH + 2 * MARGIN)
        ref, other = crop_margin(ctx_ref), crop_margin(ctx_other) * ratios
        dmg, fb = [], []
        for i in range(m):
            name = damages[int(torch.randint(0, len(damages), (1,), generator=g))]
            dmg.append(crop_margin(apply(name, ctx_ref[i : i + 1], 0.35 + 0.65 * float(torch.rand(1, generator=g)), g)))
            fb.append(name)
        return ref, other, torch.cat(dmg), [ACQUISITION] * m, fb

    return _featurised_judgments(n, chunk, draw, g, featurizers, baselines)


#: Family labels of the SR-scale judgments (:func:`make_sr_judgments`).
SR_PLAIN, SR_REALISTIC = "sr_plain", "sr_realistic"


def make_sr_judgments(sampler: CropSampler, n: int, featurizers: dict[str, Featurizer], seed: int, chunk: int = 64,
                      baselines: bool = True) -> dict[str, Triplets]:
    """``n`` SR-scale judgments: SR of a plain input (area x2 or x4, bicubic) is closer to the reference than SR of a
    realistic one (the same after a sensor-MTF blur of sigma 1-3 HR px, with LR noise of 0-0.004 reflectance).

    The realistic output carries two more damages than the plain one, so the judgment is unambiguous; it asks a metric
    to keep the *magnitude* of blur that a domain-gap measurement needs (noise must not buy back the blur).
    """
    g = torch.Generator().manual_seed(seed)
    sampler.rng = np.random.default_rng(seed)

    def draw(m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str], list[str]]:
        ref = sampler.sample(m, PATCH)
        plain, real = [], []
        for i in range(m):
            f = 2 if torch.rand(1, generator=g) < 0.5 else 4
            sigma, noise = 1.0 + 2.0 * float(torch.rand(1, generator=g)), 0.004 * float(torch.rand(1, generator=g))
            plain.append(super_resolve(ref[i : i + 1], f))
            real.append(super_resolve(ref[i : i + 1], f, sigma, noise, g))
        return ref, torch.cat(plain), torch.cat(real), [SR_PLAIN] * m, [SR_REALISTIC] * m

    return _featurised_judgments(n, chunk, draw, g, featurizers, baselines)


def cached_sets(featurizers: dict[str, Featurizer], ids: dict[str, str], path_of: Callable[[str], Path],
                generate: Callable[[dict[str, Featurizer], bool], dict[str, dict[str, Triplets]]], reuse: bool) -> dict[str, dict[str, Triplets]]:
    """Judgment sets ``{set name: {featuriser: Triplets}}`` with a cache file per featuriser id (``path_of(id)``) and one
    for the pixel baselines (``path_of("baselines")``).

    ``generate(featurisers, baselines)`` draws every set and featurises it with the featurisers given; it runs only for
    featurisers without a cache file (all of them unless ``reuse``) or when the baselines are not cached, and skips the
    baselines when they are. Regenerated judgments must match the cached ones (families and order) or the run stops.
    """
    out: dict[str, dict[str, Triplets]] = {}
    for name, fid in ids.items():
        if reuse and path_of(fid).exists():
            out[name] = {k: v["f"] for k, v in load_judgments(path_of(fid), fid).items()}
            log.info("reusing featurised judgments of %s from %s", name, path_of(fid))
    todo = {k: f for k, f in featurizers.items() if k not in out}
    base_path = path_of("baselines")
    need_base = not base_path.exists()
    if todo or need_base:
        gen = todo or dict([next(iter(featurizers.items()))])
        sets = generate(gen, need_base)
        for name in todo:
            save_judgments(path_of(ids[name]), {k: {"f": v[name]} for k, v in sets.items()}, ids[name])
            out[name] = {k: v[name] for k, v in sets.items()}
        if need_base:
            any_name = next(iter(gen))
            save_judgments(base_path, {k: {"f": v[any_name]} for k, v in sets.items()}, "baselines")
    base = {k: v["f"] for k, v in load_judgments(base_path, "baselines").items()}
    for set_name, t in base.items():  # every featuriser's triplets share the images, families and baselines
        for name in featurizers:
            c = out[name][set_name]
            if c.fam_a != t.fam_a or c.fam_b != t.fam_b or not torch.equal(c.p, t.p):
                raise InputError(f"{base_path}: the cached judgments of {set_name} differ from the regenerated ones (other code or data?); "
                                 "drop --reuse-judgments or the cache folder")
            c.fam_a, c.fam_b, c.base0, c.base1, c.p = t.fam_a, t.fam_b, t.base0, t.base1, t.p
    return {set_name: {name: out[name][set_name] for name in featurizers} for set_name in base}


def sr_sets(n_train: int, n_val: int, train_sampler: CropSampler, val_samplers: dict[str, CropSampler], featurizers: dict[str, Featurizer],
            ids: dict[str, str], cache: Callable[[str], Path], seed: int) -> dict[str, dict[str, Triplets]]:
    """SR-scale judgment sets (``train`` and ``SPLIT/sr_realistic``) per featuriser, cached per featuriser id by ``cache(id)``."""

    def generate(gen: dict[str, Featurizer], baselines: bool) -> dict[str, dict[str, Triplets]]:
        log.info("generating %d + %d x %d SR-scale judgments (featurisers: %s)", n_train, len(val_samplers), n_val, list(gen))
        sets = {"train": make_sr_judgments(train_sampler, n_train, gen, seed, baselines=baselines)}
        for k, (split, sampler) in enumerate(val_samplers.items()):
            sets[f"{split}/sr_realistic"] = make_sr_judgments(sampler, n_val, gen, seed + 1 + k, baselines=baselines)
        return sets

    return cached_sets(featurizers, ids, cache, generate, reuse=True)


def pair_samplers(text: str, holdout: float, part: int, factors: Sequence[int], min_corr: float, seed: int) -> dict[int, PairSampler]:
    """:class:`PairSampler` per area-averaging factor over the training (``part=0``) or held-out (1) rows of a stack."""
    rows = [split_rows(im.data, holdout)[part] for im in load_source(Source.parse(text))]
    return {f: PairSampler([area_average(r, f) for r in rows], min_corr, seed + f) for f in factors}


class RankNet(nn.Module):
    """The LPIPS ranking network: maps (d0, d1) to the probability that ``b`` (d1) is judged closer."""

    def __init__(self, hidden: int = 32, eps: float = 0.1) -> None:
        super().__init__()
        self.eps = eps
        self.net = nn.Sequential(nn.Linear(5, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def forward(self, d0: torch.Tensor, d1: torch.Tensor) -> torch.Tensor:
        x = torch.stack([d0, d1, d0 - d1, d0 / (d1 + self.eps), d1 / (d0 + self.eps)], dim=1)
        return self.net(x).squeeze(1)


def fit_heads(t: Triplets, *, l2: float = 0.0, iters: int = 1500, lr: float = 1e-2, seed: int = 0,
              groups: Sequence[int] | None = None) -> torch.Tensor:
    """Train non-negative heads on ``t`` (BCE through :class:`RankNet`); returns the (sum C,) channel weights.

    With ``groups`` (channels per tap), one weight per tap is learnt and shared by its channels: 5 parameters
    instead of ~1000, the low-variance choice when judgments are few or families must transfer. ``l2`` pulls
    the weights towards their mean (a uniform head) in relative units.
    """
    torch.manual_seed(seed)
    scale = float(torch.cat([t.d0, t.d1]).sum(1).mean())
    if groups is not None:
        expand = torch.repeat_interleave(torch.eye(len(groups)), torch.tensor(list(groups)), dim=0)  # (sum C, taps)
    else:
        expand = None
    n = len(groups) if groups is not None else t.d0.shape[1]
    w = nn.Parameter(torch.full((n,), 1.0 / max(scale, 1e-12)))
    rank = RankNet()
    opt = torch.optim.Adam([w, *rank.parameters()], lr=lr, betas=(0.5, 0.999))
    target = 1 - t.p  # probability that b is closer
    w0 = w.detach().clone()
    for _ in range(iters):
        full = expand @ w if expand is not None else w
        loss = F.binary_cross_entropy_with_logits(rank(t.d0 @ full, t.d1 @ full), target)
        if l2:
            loss = loss + l2 * ((w - w0.mean()) / w0.mean()).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            w.clamp_(min=0.0)
    return (expand @ w if expand is not None else w).detach()


def lever_heads(t: Triplets, best: dict, *, seed: int, iters: int, n_lpips: int | None) -> dict[str, torch.Tensor]:
    """Heads refitted with one lever removed (same form, L2 and recipe), so the report measures each lever alone.

    * ``LPIPS term only``: the texture columns dropped (``n_lpips`` = number of LPIPS columns; texture form only);
    * ``synthetic judgments only``: the real cross-acquisition judgments dropped (when there are any).
    """
    out: dict[str, torch.Tensor] = {}
    groups = best["groups"]
    if n_lpips is not None:
        lp = Triplets(t.d0[:, :n_lpips], t.d1[:, :n_lpips], t.p, t.fam_a, t.fam_b, t.base0, t.base1)
        w = fit_heads(lp, l2=best["l2"], groups=groups[: len(groups) // 2] if groups else None, seed=seed, iters=iters)
        out["LPIPS-Sat, LPIPS term only"] = torch.cat([w, torch.zeros(t.d0.shape[1] - n_lpips)])
    real = involves(t, [ACQUISITION])
    if bool(real.any()):
        out["LPIPS-Sat, synthetic judgments only"] = fit_heads(t.subset(~real), l2=best["l2"], groups=groups, seed=seed, iters=iters)
    sr = involves(t, [SR_REALISTIC])
    if bool(sr.any()):
        out["LPIPS-Sat, no SR-scale judgments"] = fit_heads(t.subset(~sr), l2=best["l2"], groups=groups, seed=seed, iters=iters)
    return out


def twoafc(d0: torch.Tensor, d1: torch.Tensor, p: torch.Tensor) -> float:
    """2AFC agreement: ``p`` if d0 < d1, ``1 - p`` if d0 > d1, 0.5 on ties (Zhang et al. 2018)."""
    return float(_agreement(d0, d1, p).mean())


def _agreement(d0: torch.Tensor, d1: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Per-judgment 2AFC credit of :func:`twoafc`."""
    return torch.where(d0 < d1, p, torch.where(d0 > d1, 1 - p, torch.full_like(p, 0.5)))


def paired_2afc(a0: torch.Tensor, a1: torch.Tensor, b0: torch.Tensor, b1: torch.Tensor, p: torch.Tensor) -> dict[str, float]:
    """Two metrics' 2AFC on the same judgments, paired: the mean difference of per-judgment credit (a - b) with its
    standard error, the judgments only ``a`` gets right and only ``b`` gets right (credit 1 against 0), and the exact
    two-sided McNemar p-value on those (a binomial test of the discordant pairs; McNemar 1947)."""
    from math import comb

    diff = _agreement(a0, a1, p).double() - _agreement(b0, b1, p).double()
    n = len(diff)
    only_a, only_b = int((diff == 1).sum()), int((diff == -1).sum())
    k, m = min(only_a, only_b), only_a + only_b
    p_value = min(1.0, 2 * sum(comb(m, i) for i in range(k + 1)) / 2**m) if m else 1.0
    se = float(diff.std(correction=1) / n**0.5) if n > 1 else float("nan")
    return {"diff": float(diff.mean()) if n else 0.0, "se": se, "a_only": only_a, "b_only": only_b, "p_mcnemar": p_value}


def involves(t: Triplets, families: Sequence[str]) -> torch.Tensor:
    fam = set(families)
    return torch.tensor([a in fam or b in fam for a, b in zip(t.fam_a, t.fam_b)])


def choose_heads(t: Triplets, candidates: Sequence[float], channels: Sequence[int], seed: int, iters: int,
                 train_families: Sequence[str] = TRAIN_FAMILIES, judgment_groups: bool = False) -> tuple[dict, dict[str, float]]:
    """Pick head form (per channel / per tap) and L2 by leave-one-group-out CV: each damage family of the training
    families is one group; with ``judgment_groups`` the real cross-acquisition and the SR-scale judgments present in
    ``t`` are one group each too, so the choice also has to generalise to a kind of judgment it did not see."""
    damages = [f for f in train_families if FAMILIES[f].kind == "damage"]
    if judgment_groups:
        damages += [k for k in (ACQUISITION, SR_REALISTIC) if bool(involves(t, [k]).any())]
    options = [{"groups": None, "l2": l2} for l2 in candidates] + [{"groups": list(channels), "l2": 0.0}]
    scores = {}
    for opt in options:
        accs = []
        for fam in damages:
            held = involves(t, [fam])
            w = fit_heads(t.subset(~held), l2=opt["l2"], groups=opt["groups"], seed=seed, iters=iters)
            v = t.subset(held)
            accs.append(twoafc(v.d0 @ w, v.d1 @ w, v.p))
        key = f"{'per_tap' if opt['groups'] else 'per_channel'}/l2={opt['l2']}"
        scores[key] = float(np.mean(accs))
        log.info("%s leave-one-family-out 2AFC %.4f", key, scores[key])
    best = max(options, key=lambda o: scores[f"{'per_tap' if o['groups'] else 'per_channel'}/l2={o['l2']}"])
    return best, scores


def load_backbone(path: str | Path) -> tuple[ResNetTaps, list[float], list[float], dict]:
    """Load a backbone file written by ``lpips-sat pretrain`` (or a full LPIPS-Sat weights file)."""
    tensors, meta = load_weights(path)
    bands = json.loads(meta["bands"])
    backbone = ResNetTaps(meta["arch"], in_chans=len(bands), width_div=int(meta.get("width_div", "1")))
    load_strict(backbone, {k[len("backbone."):]: v for k, v in tensors.items() if k.startswith("backbone.")}, str(path))
    return backbone, json.loads(meta["mean"]), json.loads(meta["std"]), meta


def split_heads(w: torch.Tensor, channels: Sequence[int]) -> list[torch.Tensor]:
    out, start = [], 0
    for c in channels:
        out.append(w[start : start + c].reshape(1, c, 1, 1))
        start += c
    return out


def read_judgments_csv(path: str | Path, featurizer: Featurizer) -> Triplets:
    """User judgments: CSV with columns ref, a, b, p_a_closer (image paths relative to the CSV, reflectance)."""
    from lpips_sat.raster import read_raster

    path = Path(path)
    rows = list(csv.DictReader(open(path, newline="")))
    need = {"ref", "a", "b", "p_a_closer"}
    if not rows or not need <= set(rows[0]):
        raise InputError(f"{path}: expected a header with columns {sorted(need)}")
    items = []
    for i, row in enumerate(rows, start=2):
        imgs = []
        for key in ("ref", "a", "b"):
            r = read_raster(path.parent / row[key])
            if not r.valid.all():
                raise InputError(f"{path}:{i}: {row[key]} has nodata/NaN pixels")
            imgs.append(torch.from_numpy(r.data)[None])
        if not (imgs[0].shape == imgs[1].shape == imgs[2].shape):
            raise InputError(f"{path}:{i}: ref, a and b differ in shape")
        p = float(row["p_a_closer"])
        if not 0 <= p <= 1:
            raise InputError(f"{path}:{i}: p_a_closer must lie in [0, 1], got {p}")
        items.append(Triplets(featurizer.diffs(imgs[0], imgs[1]), featurizer.diffs(imgs[0], imgs[2]), torch.tensor([p]), ["user"], ["user"],
                              baseline_distances(imgs[0], imgs[1]), baseline_distances(imgs[0], imgs[2])))
    return Triplets.cat(items)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", required=True, help="backbone .safetensors from `lpips-sat pretrain` (or full weights)")
    p.add_argument("--data", action="append", required=True, metavar="DIR[:BANDS[:SCALE[:OFFSET]]]", help="training imagery (see pretrain)")
    p.add_argument("--val-npy", action="append", default=[], help="held-out scenes as (time, rows, cols, 13) reflectance .npy")
    p.add_argument("--val-scene", action="append", default=[], metavar="PATH[:BANDS[:SCALE[:OFFSET]]]",
                   help="a whole held-out GeoTIFF scene (its own split, named after the file)")
    p.add_argument("--judgments", help="optional CSV of your own judgments: ref,a,b,p_a_closer")
    p.add_argument("--out", default="runs/calibrate")
    p.add_argument("--n-train", type=positive_int, default=6000)
    p.add_argument("--n-val", type=positive_int, default=1500)
    p.add_argument("--holdout", type=open_fraction, default=0.25)
    p.add_argument("--l2", type=nonnegative_float, nargs="+", default=[0.0, 0.01, 0.1, 1.0], help="candidate head L2 strengths (chosen by CV)")
    p.add_argument("--iters", type=positive_int, default=1500)
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--untrained-seed", type=nonnegative_int, default=None,
                   help="initialisation seed of the untrained-backbone baseline (default: --seed); the judgments stay those of --seed")
    p.add_argument("--name", default="lpips-sat-s2-rn18")
    p.add_argument("--protocol", default="v1", choices=sorted(PROTOCOLS), help="family split (distortions.PROTOCOLS)")
    p.add_argument("--compare", action="append", default=[], metavar="WEIGHTS",
                   help="shipped LPIPS-Sat weights (name or file) scored side by side with their own heads")
    p.add_argument("--threads", type=nonnegative_int, default=0)
    p.add_argument("--pairs", metavar="DIR[:BANDS[:SCALE]]",
                   help="co-registered acquisitions of one place (NAIP years): real cross-acquisition nuisance judgments "
                        "(training rows for training, held-out rows for the heldout_region/acquisition split)")
    p.add_argument("--n-pairs", type=nonnegative_int, default=0, help="training judgments from --pairs (added to --n-train)")
    p.add_argument("--pair-scales", type=positive_int, nargs="+", default=[2, 1],
                   help="area-averaging factors of the --pairs stack (2: 10 m from 5 m NAIP; 1: 5 m, the SR-output scale)")
    p.add_argument("--pair-min-corr", type=number(float, -1, 1), default=0.8,
                   help="minimum band-mean correlation of a real pair's two crops (land-cover change is no nuisance)")
    p.add_argument("--n-sr", type=nonnegative_int, default=0,
                   help="SR-scale training judgments (SR of a plain x2/x4 input closer than SR of a realistic one: MTF blur and LR "
                        "noise); --n-sr-val of them (default --n-val) per held-out split too")
    p.add_argument("--n-sr-val", type=nonnegative_int, default=0, help="SR-scale judgments per held-out split (0: --n-val)")
    p.add_argument("--form", default="lpips", choices=["lpips", "lpips+texture"],
                   help="distance form: lpips (v1, v2) or lpips+texture (v3: a DISTS-style texture term per tap, its own heads)")
    p.add_argument("--cv-groups", default="families", choices=["families", "all"],
                   help="groups left out in turn by the head-choosing CV: the training damage families (v1-v3), or those plus "
                        "the real-pair and SR-scale judgments when present (all)")
    p.add_argument("--register", type=nonnegative_float, default=0.0, metavar="MAX_SHIFT",
                   help="distance form with registration (v5): remove the estimated translation between each image and the "
                        "reference (at most MAX_SHIFT px; both move halfway) before the backbone; 0: none (v1-v4)")
    p.add_argument("--reuse-judgments", action="store_true",
                   help="reuse featurised judgments cached in OUT/cache (per featuriser and protocol) instead of regenerating")


@dataclass
class _Compared:
    """A shipped metric scored side by side: its featurizer and its own calibrated heads."""

    name: str
    featurizer: Featurizer
    heads: torch.Tensor


def _load_compared(text: str) -> _Compared:
    from lpips_sat.registry import get_entry, weights_dir

    path = Path(text)
    name = path.name
    if not path.is_file():
        entry = get_entry(text)
        path, name = weights_dir() / str(entry.file), entry.name
    backbone, mean, std, meta = load_backbone(path)
    tensors, _ = load_weights(path)
    texture = "texture_heads.0.weight" in tensors
    keys = [f"heads.{i}.weight" for i in range(len(TAPS))] + ([f"texture_heads.{i}.weight" for i in range(len(TAPS))] if texture else [])
    heads = torch.cat([tensors[k].flatten() for k in keys])
    try:
        register = max_shift_of(meta, name)
    except ValueError as exc:
        raise WeightsError(str(exc)) from exc
    return _Compared(name, Featurizer(backbone, mean, std, meta.get("input_norm", "global"), input_floor(meta, name), texture, register), heads)


def _split_specs(protocol: str) -> dict[str, tuple[list[str], list[str], list[str], list[str], list[str]]]:
    """Judgment sets per split kind: name -> (nuisances, damages, within, held_nuisances, held_damages)."""
    train = PROTOCOLS[protocol]["train"]
    nuis = [f for f in train if FAMILIES[f].kind == "nuisance"]
    dams = [f for f in train if FAMILIES[f].kind == "damage"]
    specs = {"train_families": (nuis, dams, list(train), [], [])}
    for tag, proto in (("heldout_families", protocol), ("v1_heldout_families", "v1")):
        if tag == "v1_heldout_families" and protocol == "v1":
            continue
        held = PROTOCOLS[proto]["heldout"]
        seen = [f for f in FAMILIES if f in PROTOCOLS[proto]["train"] or f in held]
        specs[tag] = ([f for f in seen if FAMILIES[f].kind == "nuisance"], [f for f in seen if FAMILIES[f].kind == "damage"], [],
                      [f for f in held if FAMILIES[f].kind == "nuisance"], [f for f in held if FAMILIES[f].kind == "damage"])
    return specs


def _cache_key(args: argparse.Namespace, feat_id: str) -> str:
    import hashlib

    cfg = [feat_id, args.protocol, args.n_train, args.n_val, args.seed, args.holdout, args.data, args.val_npy, args.val_scene, PATCH]
    if args.pairs:
        cfg += [args.pairs, args.n_pairs, args.pair_scales, args.pair_min_corr]
    cfg = json.dumps(cfg)
    return hashlib.sha256(cfg.encode()).hexdigest()[:16]


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    out = make_folder(args.out, "--out")
    remove_stale_temporaries(out)
    backbone, mean, std, bmeta = load_backbone(args.backbone)
    input_norm = bmeta.get("input_norm", "global")
    floor = input_floor(bmeta, str(args.backbone))
    torch.manual_seed(args.seed)
    random_backbone = ResNetTaps(backbone.arch, in_chans=backbone.in_chans, width_div=backbone.width_div)
    untrained_seed = args.seed if args.untrained_seed is None else args.untrained_seed
    if untrained_seed != args.seed:  # another draw of the baseline; the global generator continues as with --seed alone
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(untrained_seed)
            random_backbone = ResNetTaps(backbone.arch, in_chans=backbone.in_chans, width_div=backbone.width_div)
    texture = args.form == "lpips+texture"
    featurizers = {"lpips_sat": Featurizer(backbone, mean, std, input_norm, floor, texture, args.register),
                   "random_backbone": Featurizer(random_backbone, mean, std, input_norm, floor, texture, args.register)}
    form_tag = (f"-floor{floor:g}" if floor != STD_FLOOR else "") + ("-texture" if texture else "") + (f"-register{args.register:g}" if args.register else "")
    feat_ids = {"lpips_sat": sha256_file(args.backbone) + form_tag, "random_backbone": f"random-{backbone.arch}-{untrained_seed}-{input_norm}" + form_tag}
    compared = [_load_compared(c) for c in args.compare]
    for c in compared:
        featurizers[f"compare:{c.name}"] = c.featurizer
        feat_ids[f"compare:{c.name}"] = f"compare:{c.name}"
    train_imgs, val_imgs = [], []
    for text in args.data:
        for im in load_source(Source.parse(text)):
            tr, va = split_rows(im.data, args.holdout)
            train_imgs.append(tr)
            val_imgs.append(va)
    splits = {"heldout_region": CropSampler(val_imgs, PATCH + 2 * MARGIN, args.seed + 1)}
    scenes = [s for path in args.val_npy for s in reference_scenes(path)]
    if scenes:
        splits["heldout_scenes"] = CropSampler(scenes, PATCH + 2 * MARGIN, args.seed + 2)
    for k, text in enumerate(args.val_scene):
        for im in load_source(Source.parse(text)):
            splits[f"heldout_scene_{Path(im.name).stem}"] = CropSampler([im.data], PATCH + 2 * MARGIN, args.seed + 3 + k)
    specs = _split_specs(args.protocol)
    train_families = list(PROTOCOLS[args.protocol]["train"])
    nuis, dams = specs["train_families"][0], specs["train_families"][1]

    cache_dir = out / "cache"
    cache_dir.mkdir(exist_ok=True)

    def generate(gen: dict[str, Featurizer], baselines: bool) -> dict[str, dict[str, Triplets]]:
        sets: dict[str, dict[str, Triplets]] = {}
        log.info("generating %d training judgments (featurisers: %s)", args.n_train, list(gen))
        sets["train"] = make_judgments(CropSampler(train_imgs, PATCH + 2 * MARGIN, args.seed), args.n_train, nuis, dams, train_families, gen, args.seed, baselines=baselines)
        if args.pairs:
            log.info("generating %d real cross-acquisition judgments from %s", args.n_pairs, args.pairs)
            if args.n_pairs:
                real = make_pair_judgments(pair_samplers(args.pairs, args.holdout, 0, args.pair_scales, args.pair_min_corr, args.seed),
                                           args.n_pairs, dams, gen, args.seed + 40, baselines=baselines)
                sets["train"] = {k: Triplets.cat([sets["train"][k], real[k]]) for k in gen}
            known = set(train_families) | set(PROTOCOLS[args.protocol]["heldout"])  # every damage family of the protocol
            every = [f for f in FAMILIES if FAMILIES[f].kind == "damage" and f in known]
            sets["heldout_region/acquisition"] = make_pair_judgments(
                pair_samplers(args.pairs, args.holdout, 1, args.pair_scales, args.pair_min_corr, args.seed + 100), args.n_val, every, gen, args.seed + 50, baselines=baselines)
        for split, sampler in splits.items():
            for kind, (n_, d_, w_, hn, hd) in specs.items():
                log.info("generating validation judgments on %s/%s", split, kind)
                if kind == "train_families":
                    sets[f"{split}/{kind}"] = make_judgments(sampler, args.n_val, n_, d_, w_, gen, args.seed + 10, baselines=baselines)
                else:  # every judgment involves at least one held-out family
                    a = make_judgments(sampler, args.n_val // 2, n_, hd, hd, gen, args.seed + 20, baselines=baselines)
                    b = make_judgments(sampler, args.n_val // 2, hn, d_, hn, gen, args.seed + 30, baselines=baselines)
                    sets[f"{split}/{kind}"] = {k: Triplets.cat([a[k], b[k]]) for k in a}
        return sets

    sets = cached_sets(featurizers, feat_ids, lambda fid: cache_dir / f"{_cache_key(args, fid)}.safetensors", generate, args.reuse_judgments)
    train = sets["train"]
    val_sets = {k: v for k, v in sets.items() if k != "train"}
    if args.n_sr:
        sr = sr_sets(args.n_sr, args.n_sr_val or args.n_val, CropSampler(train_imgs, PATCH, args.seed + 60), splits, featurizers, feat_ids,
                     lambda fid: cache_dir / f"{_cache_key(args, fid)}-sr{args.n_sr}-{args.n_sr_val}.safetensors", args.seed + 60)
        train = {name: Triplets.cat([train[name], sr["train"][name]]) for name in featurizers}
        val_sets.update({k: v for k, v in sr.items() if k != "train"})
    if args.judgments:
        user = read_judgments_csv(args.judgments, featurizers["lpips_sat"])
        train["lpips_sat"] = Triplets.cat([train["lpips_sat"], user])
    groups = list(backbone.channels) * (2 if texture else 1)  # per-tap option: one weight per tap and term
    best, cv = choose_heads(train["lpips_sat"], args.l2, groups, args.seed, min(args.iters, 600), train_families, args.cv_groups == "all")
    best_l2 = best["l2"]
    heads = fit_heads(train["lpips_sat"], l2=best_l2, groups=best["groups"], seed=args.seed, iters=args.iters)
    rand_heads = fit_heads(train["random_backbone"], l2=best_l2, groups=best["groups"], seed=args.seed, iters=args.iters)
    ones = torch.ones_like(heads)
    levers = lever_heads(train["lpips_sat"], best, seed=args.seed, iters=args.iters, n_lpips=sum(backbone.channels) if texture else None)
    held = PROTOCOLS[args.protocol]["heldout"]
    report: dict = {"untrained_seed": untrained_seed, "l2": best_l2, "head_form": "per_tap" if best["groups"] else "per_channel", "l2_cv": cv, "n_train": len(train["lpips_sat"].p),
                    "protocol": args.protocol, "heldout_families": list(held), "train_families": train_families, "input_norm": input_norm,
                    "form": args.form, "n_pairs": args.n_pairs if args.pairs else 0, "n_sr": args.n_sr, "cv_groups": args.cv_groups,
                    "register": args.register,
                    "compared": [c.name for c in compared], "splits": {}}

    def scores(t: Triplets, name: str) -> dict[str, float]:
        row = {"LPIPS-Sat": twoafc(t.d0 @ heads, t.d1 @ heads, t.p), "LPIPS-Sat uncalibrated (ones)": twoafc(t.d0 @ ones, t.d1 @ ones, t.p)}
        for c in compared:
            ct = val[f"compare:{c.name}"]
            row[c.name] = twoafc(ct.d0 @ c.heads, ct.d1 @ c.heads, ct.p)
        rt = val["random_backbone"]
        for label, h in levers.items():
            row[label] = twoafc(t.d0 @ h, t.d1 @ h, t.p)
        row["untrained backbone, calibrated heads"] = twoafc(rt.d0 @ rand_heads, rt.d1 @ rand_heads, rt.p)
        row["untrained backbone, ones"] = twoafc(rt.d0 @ ones, rt.d1 @ ones, rt.p)
        for b in ("psnr", "ssim", "msssim", "sam", "l1"):
            row[{"msssim": "MS-SSIM"}.get(b, b.upper())] = twoafc(t.base0[b], t.base1[b], t.p)
        return row

    for name, tri in val_sets.items():
        t = tri["lpips_sat"]
        val = tri
        row = scores(t, name)
        per_family = {}
        for fam in sorted(set(t.fam_a) | set(t.fam_b)):
            m = involves(t, [fam])
            sub = {k: v.subset(m) for k, v in tri.items()}
            val = sub
            per_family[fam] = {"n": int(m.sum()), **scores(sub["lpips_sat"], name)}
        val = tri
        rt = tri["random_backbone"]
        paired = paired_2afc(t.d0 @ heads, t.d1 @ heads, rt.d0 @ rand_heads, rt.d1 @ rand_heads, t.p)
        report["splits"][name] = {"n": len(t.p), "2afc": row, "per_family": per_family, "paired_untrained": paired}
        log.info("%s: %s", name, {k: round(v, 3) for k, v in row.items()})
    tr = train["lpips_sat"]
    report["train_2afc"] = twoafc(tr.d0 @ heads, tr.d1 @ heads, tr.p)
    head_list = split_heads(heads, groups)
    meta = {k: v for k, v in bmeta.items() if k in ("arch", "bands", "mean", "std", "width_div", "recipe", "data", "steps_done", "input_norm", "input_floor")}
    sources = "the shipped Sentinel-2 L1C stack (CC0, Copernicus) and NAIP (public domain)"
    licence = "weights: CC-BY-4.0; contains modified Copernicus Sentinel data 2016"
    if args.protocol != "v1":
        sources = "Sentinel-2 L1C/L2A scenes of shared/data (Copernicus; 2016, 2017, 2024) and NAIP (public domain)"
        licence = "weights: CC-BY-4.0; contains modified Copernicus Sentinel data 2016, 2017, 2024"
    meta.update({"name": args.name, "taps": json.dumps(list(TAPS)),
                 "normalisation": f"reflectance (DN/10000), then per image and band (x - mean) / sqrt(var + {floor:g}^2)" if input_norm == "per-image"
                 else "reflectance (DN/10000), then (x - mean) / std per band",
                 "calibration": json.dumps({"l2": best_l2, "head_form": report["head_form"], "n_train": report["n_train"], "seed": args.seed,
                                            "protocol": args.protocol, "heldout_families": list(held), "form": args.form,
                                            "n_pairs": args.n_pairs if args.pairs else 0, "n_sr": args.n_sr,
                                            **({"cv_groups": args.cv_groups} if args.cv_groups != "families" else {})}),
                 "source": f"lpips-sat: trained on {sources}", "licence": licence,
                 "ssl_method": "SimCLR-style InfoNCE with nuisance views and damage hard negatives"
                 + ("; real cross-acquisition positives and a metric ranking term" if args.protocol != "v1" else "")
                 + ("; SR-scale ranking triplets (SR of a plain input closer than SR of a realistic one)"
                    if json.loads(bmeta.get("recipe", "{}")).get("sr_triplets") else ""),
                 "description": "LPIPS-Sat ResNet-18, 4 bands B04,B03,B02,B08, reflectance input"
                 + (", per-image band standardisation (gain/offset tolerant)" if input_norm == "per-image" else "")
                 + (", LPIPS + DISTS-style texture term per tap" if texture else "")
                 + (f", translation up to {args.register:g} px registered before the distance" if args.register else "")})
    if texture:
        meta["distance_form"] = args.form
    if args.register:
        meta.update({"register": "translation", "max_shift": f"{args.register:g}"})
    tensors = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    tensors.update({f"heads.{i}.weight": h for i, h in enumerate(head_list[: len(TAPS)])})
    tensors.update({f"texture_heads.{i}.weight": h.reshape(1, -1) for i, h in enumerate(head_list[len(TAPS) :])})
    full32 = out / f"{args.name}.fp32.safetensors"
    save_weights(full32, tensors, meta, dtype=torch.float32)
    sha16 = save_weights(out / f"{args.name}.safetensors", tensors, meta, dtype=torch.float16)
    report["fp16_max_abs_diff"] = _fp16_check(full32, out / f"{args.name}.safetensors", val_imgs)
    report["properties"] = property_checks(full32, val_imgs + scenes)
    report["sha256_fp16"] = sha16
    report["sha256_fp32"] = sha256_file(full32)
    report["model_folder"] = str(save_folder(out / args.name, tensors, meta))  # hub layout: LPIPSSat.from_pretrained / push_to_hub
    report["backbone_sha256"] = sha256_file(args.backbone)
    report["seconds"] = time.time() - t0
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v["2afc"] for k, v in report["splits"].items()}, indent=2))
    print(f"weights: {out / (args.name + '.safetensors')} (fp16, sha256 {sha16}); fp16 vs fp32 max |diff| {report['fp16_max_abs_diff']:.2e}")
    print(f"model folder (config, model card, fp32 weights): {report['model_folder']}; load with LPIPSSat.from_pretrained, upload with push_to_hub")
    return 0


def _fp16_check(path32: Path, path16: Path, images: Sequence[np.ndarray], n: int = 32) -> float:
    """Largest absolute distance difference between the fp32 and fp16-stored weights on real patch pairs."""
    from lpips_sat.metric import LPIPSSat

    m32, m16 = LPIPSSat(path32), LPIPSSat(path16)
    ctx = CropSampler(images, PATCH + 2 * MARGIN, 123).sample(n)
    g = torch.Generator().manual_seed(0)
    x, y = crop_margin(ctx), crop_margin(apply("blur", ctx, 0.5, g))
    with torch.inference_mode():
        return float((m32(x, y) - m16(x, y)).abs().max())


def property_checks(weights: Path, images: Sequence[np.ndarray], n: int = 64) -> dict[str, float]:
    """On real held-out patches: identity, symmetry, and how often a 1-px shift scores below a sigma=1.5 blur."""
    from lpips_sat.metric import LPIPSSat
    from lpips_sat.train.distortions import fourier_shift, gaussian_blur

    m = LPIPSSat(weights)
    ctx = CropSampler(images, PATCH + 2 * MARGIN, 7).sample(n)
    ref = crop_margin(ctx)
    shifted = crop_margin(fourier_shift(ctx, torch.zeros(n), torch.ones(n)))
    blurred = crop_margin(gaussian_blur(ctx, 1.5))
    other = torch.roll(ref, 1, 0)
    with torch.inference_mode():
        d_id, d_shift, d_blur = m(ref, ref), m(ref, shifted), m(ref, blurred)
        d_ab, d_ba = m(ref, other), m(other, ref)
    return {"n_patches": n, "identity_max": float(d_id.abs().max()), "symmetry_max_abs_diff": float((d_ab - d_ba).abs().max()),
            "shift1px_below_blur1.5_fraction": float((d_shift < d_blur).float().mean()),
            "median_shift1px": float(d_shift.median()), "median_blur1.5": float(d_blur.median())}


def main(argv: list[str] | None = None) -> int:
    """``python -m lpips_sat.train.calibrate`` (same options as ``lpips-sat calibrate``)."""
    import sys

    from lpips_sat.train import module_main

    return module_main(sys.modules[__name__], "lpips-sat calibrate", argv)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
