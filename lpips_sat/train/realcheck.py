"""Real-imagery checks of a metric: a cross-acquisition 2AFC test and the gain-versus-blur response.

**Cross-acquisition check** (the issue-16 proxy for a real S2 <-> PlanetScope pair, built from what exists here):
two acquisitions of one place from the co-registered NAIP stack (different years, cameras and seasons; origins agree
to < 1 px), each harmonised to Sentinel-2 band statistics (per-band moment matching, :data:`S2_MOMENTS`) and
area-averaged to the scale under test (``--scales``: factor 2 gives 10 m from the 5 m files). The other year is also
given the per-band radiometric ratios measured between PlanetScope and S2 on a co-located tile (CONTEXT.md: R 1.20,
G 1.02, B 1.21, NIR 0.96). Only the held-out bottom ``--holdout`` rows are used, and only patches whose band-mean
correlation between the years is at least ``--min-corr`` (so the pair differs by acquisition, not land-cover change).
For each patch, the question is whether the other acquisition is closer to the reference than each damaged copy of
the reference: Gaussian blur sigma 1 px, 3x pixelation, 3x3 median, posterisation (steps of 0.02 reflectance) and
10 % column striping (a random tenth of the columns scaled by 0.9 or 1.1).

**Gain versus blur**: on real held-out Sentinel-2 patches, how often a band-common gain of 0.9 or 1.1 is judged closer
than a sigma = 1 px Gaussian blur, with the median distances.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from lpips_sat.errors import InputError
from lpips_sat.train.data import PS_OVER_S2, CropSampler, Source, area_average, load_source, reference_scenes, split_rows
from lpips_sat.train.distortions import _nearest_updown, gaussian_blur, median, super_resolve

log = logging.getLogger(__name__)


def _stripes10(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    n, c, h, w = x.shape
    pick = torch.rand(n, 1, 1, w, generator=g) < 0.10
    sign = torch.where(torch.rand(n, 1, 1, w, generator=g) < 0.5, -1.0, 1.0)
    return x * (1 + 0.1 * sign * pick.float())


#: The damaged copies of the reference, each a function of (batch, generator).
DAMAGES: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "blur_sigma1": lambda x, g: gaussian_blur(x, 1.0),
    "pixelate_x3": lambda x, g: _nearest_updown(x, 3),
    "median_3x3": lambda x, g: median(x, torch.zeros(x.shape[0]), g),
    "posterize_0.02": lambda x, g: torch.round(x / 0.02) * 0.02,
    "stripes_10pct_columns": _stripes10,
}


def acquisition_pairs(stacks: Sequence[np.ndarray], patch: int, stride: int, min_corr: float) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """(reference, other acquisition) patch pairs: the earlier acquisition is the reference, every pair of acquisitions
    is used, and a patch is kept when the band-mean correlation of its two versions reaches ``min_corr``."""
    h = min(s.shape[1] for s in stacks)
    w = min(s.shape[2] for s in stacks)
    refs, others, which = [], [], []
    for i in range(len(stacks)):
        for j in range(i + 1, len(stacks)):
            for y in range(0, h - patch + 1, stride):
                for x in range(0, w - patch + 1, stride):
                    a = stacks[i][:, y : y + patch, x : x + patch]
                    b = stacks[j][:, y : y + patch, x : x + patch]
                    r = float(np.corrcoef(a.mean(0).ravel(), b.mean(0).ravel())[0, 1])
                    if r >= min_corr:
                        refs.append(a)
                        others.append(b)
                        which.append((i, j))
    if not refs:
        raise InputError(f"no patch pair reaches a band-mean correlation of {min_corr}")
    return torch.from_numpy(np.stack(refs)).float(), torch.from_numpy(np.stack(others)).float(), which


def _metrics(names: Sequence[str], baselines: bool = True) -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    from lpips_sat.metric import LPIPSSat
    from lpips_sat.train.calibrate import baseline_distances

    out: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {}
    for name in names:
        m = LPIPSSat(name)
        out[m.name] = lambda a, b, m=m: m(a, b)
    for base, label in (("psnr", "PSNR"), ("ssim", "SSIM"), ("msssim", "MS-SSIM")) if baselines else ():
        out[label] = lambda a, b, base=base: baseline_distances(a, b)[base]
    return out


#: Year-gap groups of the cross-acquisition check (years between the two acquisitions).
GAP_GROUPS = (("1-2", 1, 2), ("3-5", 3, 5), ("6+", 6, 10**6))


def acquisition_year(name: str) -> int | None:
    """The year of an acquisition from a file name holding its date as YYYYMMDD (NAIP: ``m_..._20170827.tif``)."""
    found = re.findall(r"(?<!\d)((?:19|20)\d{2})[01]\d[0-3]\d(?!\d)", name)
    return int(found[-1]) if found else None


def gap_group(years: int) -> str:
    return next(label for label, lo, hi in GAP_GROUPS if lo <= years <= hi) if years >= 1 else "0"


@torch.inference_mode()
def cross_acquisition(metrics: dict[str, Callable], ref: torch.Tensor, other: torch.Tensor, seed: int = 0, chunk: int = 64,
                      groups: Sequence[str] | None = None) -> tuple[dict, dict]:
    """2AFC: fraction of (patch, damage) cases where the other acquisition is closer than the damaged reference.

    Returns ``(per metric: per damage and "all", per metric: per group "all")``; the second is empty without ``groups``
    (one label per patch, e.g. the year gap of its two acquisitions).
    """
    g = torch.Generator().manual_seed(seed)
    damaged = {k: torch.cat([f(ref[i : i + chunk], g) for i in range(0, len(ref), chunk)]) for k, f in DAMAGES.items()}
    result: dict[str, dict[str, float]] = {}
    by_group: dict[str, dict[str, float]] = {}
    for name, fn in metrics.items():
        d_other = torch.cat([fn(ref[i : i + chunk], other[i : i + chunk]) for i in range(0, len(ref), chunk)])
        row, wins = {}, []
        for k, dmg in damaged.items():
            d_dmg = torch.cat([fn(ref[i : i + chunk], dmg[i : i + chunk]) for i in range(0, len(ref), chunk)])
            win = torch.where(d_other < d_dmg, 1.0, torch.where(d_other > d_dmg, 0.0, 0.5))
            row[k] = float(win.mean())
            wins.append(win)
        row["all"] = float(np.mean([row[k] for k in DAMAGES]))
        result[name] = row
        if groups is not None:
            per_patch = torch.stack(wins).mean(0)
            known = [lab for lab, _, _ in GAP_GROUPS]
            labels = sorted(set(groups) - set(known)) + [lab for lab in known if lab in set(groups)]
            by_group[name] = {lab: float(per_patch[[i for i, x in enumerate(groups) if x == lab]].mean()) for lab in labels}
    return result, by_group


@torch.inference_mode()
def gain_versus_blur(metrics: dict[str, Callable], patches: torch.Tensor) -> dict:
    """Median distance of gains 0.9 / 1.1 and of a sigma = 1 px blur, and how often each gain scores below the blur."""
    out = {}
    blurred = gaussian_blur(patches, 1.0)
    for name, fn in metrics.items():
        d_blur = fn(patches, blurred)
        row = {"median_blur_sigma1": float(d_blur.median())}
        for gain in (0.9, 1.1):
            d = fn(patches, patches * gain)
            row[f"median_gain_{gain}"] = float(d.median())
            row[f"gain_{gain}_below_blur"] = float((d < d_blur).float().mean())
        out[name] = row
    return out


@torch.inference_mode()
def noise_on_blur(metrics: dict[str, Callable], patches: torch.Tensor, seed: int = 0, scale: int = 4, sigma: float = 0.01) -> dict:
    """How often noise added to a blurry SR-like output (area down-sampling by ``scale``, bicubic up-sampling) makes it
    *closer* to the reference: the fraction of patches with d(ref, blurry + noise) < d(ref, blurry), and the medians.

    Not a judgment with a right answer (blur plus noise is two damages, blur alone one), but a property users must know:
    a metric that rewards added noise here can be gamed by an SR model that adds noise to its smooth outputs.
    """
    blurry = super_resolve(patches, scale)
    g = torch.Generator().manual_seed(seed)
    noisy = blurry + sigma * torch.randn(blurry.shape, generator=g)
    out = {}
    for name, fn in metrics.items():
        d_blur, d_noisy = fn(patches, blurry), fn(patches, noisy)
        out[name] = {"median_blurry": float(d_blur.median()), "median_blurry_plus_noise": float(d_noisy.median()),
                     "noise_closer_fraction": float((d_noisy < d_blur).float().mean())}
    return out


@torch.inference_mode()
def blur_sensitivity(metrics: dict[str, Callable], patches: torch.Tensor, seed: int = 0, scale: int = 4, mtf_sigma: float = 2.0,
                     lr_noise: float = 0.002) -> dict:
    """Does a metric see the extra blur of a realistic degradation behind a small LR noise? (the synthetic-to-real gap)

    ``plain``: the reference area-averaged by ``scale`` and bicubically up-sampled (SR of a synthetic input);
    ``mtf``: the same after a Gaussian blur of ``mtf_sigma`` HR px (a sensor MTF; SR of a realistic input);
    ``mtf_noise``: ``mtf`` with Gaussian noise of ``lr_noise`` reflectance on the LR grid. Reported per metric: how often
    ``mtf`` and ``mtf_noise`` are further from the reference than ``plain``, and the median relative margin of ``mtf``.
    """
    plain, mtf = super_resolve(patches, scale), super_resolve(patches, scale, mtf_sigma)
    mtf_noise = super_resolve(patches, scale, mtf_sigma, lr_noise, torch.Generator().manual_seed(seed))
    out = {}
    for name, fn in metrics.items():
        d0, d1, d2 = fn(patches, plain), fn(patches, mtf), fn(patches, mtf_noise)
        out[name] = {"mtf_further": float((d1 > d0).float().mean()), "mtf_noise_further": float((d2 > d0).float().mean()),
                     "median_relative_margin": float(((d1 - d0) / d0.clamp_min(1e-12)).median())}
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", action="append", required=True, help="LPIPS-Sat weights (registry name or file); repeat to compare")
    p.add_argument("--pairs", required=True, metavar="DIR[:BANDS[:SCALE]]", help="co-registered acquisitions of one place (NAIP stack)")
    p.add_argument("--val-npy", action="append", default=[], help="held-out S2 scenes (.npy) for the gain-versus-blur check")
    p.add_argument("--val-scene", action="append", default=[], metavar="PATH[:BANDS[:SCALE[:OFFSET]]]", help="held-out S2 GeoTIFF scenes (same)")
    p.add_argument("--holdout", type=float, default=0.25, help="bottom fraction of rows used (the pretraining held-out region)")
    p.add_argument("--scales", type=int, nargs="+", default=[2, 1], help="area-averaging factors (2: 10 m from 5 m NAIP; 1: 5 m)")
    p.add_argument("--patch", type=int, default=48)
    p.add_argument("--stride", type=int, default=16)
    p.add_argument("--min-corr", type=float, default=0.8)
    p.add_argument("--max-pairs", type=int, default=500, help="random subsample (seeded) of the passing patch pairs per scale")
    p.add_argument("--no-ratios", action="store_true", help="do not apply the PlanetScope/S2 band ratios to the other acquisition")
    p.add_argument("--n-gain", type=int, default=256, help="real patches for the gain-versus-blur check")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--no-baselines", action="store_true", help="score only the --weights (PSNR, SSIM, MS-SSIM left out)")
    p.add_argument("--out", required=True, help="JSON file to write; an existing one made with the same settings gains the new metrics' rows")


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    metrics = _metrics(args.weights, not args.no_baselines)
    images = load_source(Source.parse(args.pairs))
    held = [split_rows(im.data, args.holdout)[1] for im in images]
    years = [acquisition_year(im.name) for im in images]
    report: dict = {"damages": list(DAMAGES), "ratios": None if args.no_ratios else list(PS_OVER_S2), "min_corr": args.min_corr,
                    "patch": args.patch, "stride": args.stride, "holdout": args.holdout, "files": [im.name for im in images], "scales": {},
                    "seed": args.seed, "max_pairs": args.max_pairs}
    for f in args.scales:
        stacks = [area_average(h, f) for h in held]
        ref, other, which = acquisition_pairs(stacks, args.patch, args.stride, args.min_corr)
        n_pass = len(ref)
        if n_pass > args.max_pairs:
            keep = torch.randperm(n_pass, generator=torch.Generator().manual_seed(args.seed))[: args.max_pairs]
            ref, other, which = ref[keep], other[keep], [which[int(i)] for i in keep]
        if not args.no_ratios:
            other = other * torch.tensor(PS_OVER_S2).reshape(1, -1, 1, 1)
        log.info("scale x%d: %d of %d passing patch pairs, %d year pairs", f, len(ref), n_pass, len(set(which)))
        groups = None
        if all(y is not None for y in years):
            groups = [gap_group(abs(years[j] - years[i])) for i, j in which]
        rows, by_gap = cross_acquisition(metrics, ref, other, args.seed, groups=groups)
        report["scales"][f"x{f}"] = {"n_pairs": len(ref), "n_passing": n_pass, "n_year_pairs": len(set(which)), "2afc": rows}
        if groups is not None:
            report["scales"][f"x{f}"].update({"by_gap": by_gap, "n_by_gap": {g: groups.count(g) for g in next(iter(by_gap.values()))}})
    scenes = [s for path in args.val_npy for s in reference_scenes(path)]
    for text in args.val_scene:
        scenes += [im.data for im in load_source(Source.parse(text))]
    if scenes:
        patches = CropSampler(scenes, 64, args.seed).sample(args.n_gain)
        report["gain_versus_blur"] = {"n_patches": args.n_gain, "patch": 64, "results": gain_versus_blur(metrics, patches)}
        report["noise_on_blur"] = {"n_patches": args.n_gain, "patch": 64, "scale": 4, "sigma": 0.01, "results": noise_on_blur(metrics, patches, args.seed)}
        report["blur_sensitivity"] = {"n_patches": args.n_gain, "patch": 64, "scale": 4, "mtf_sigma": 2.0, "lr_noise": 0.002,
                                      "results": blur_sensitivity(metrics, patches, args.seed)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = ("damages", "ratios", "min_corr", "patch", "stride", "holdout", "files")
    if out.exists():  # same settings and seed: the same patches, so rows of other metrics can be merged in
        old = json.loads(out.read_text())
        if all(old.get(k) == report.get(k) for k in settings) and old.get("seed") == args.seed and old.get("max_pairs") == args.max_pairs:
            for scale, s in report["scales"].items():
                if scale in old["scales"]:
                    old["scales"][scale]["2afc"].update(s["2afc"])
                    if "by_gap" in s and "by_gap" in old["scales"][scale]:
                        old["scales"][scale]["by_gap"].update(s["by_gap"])
                else:
                    old["scales"][scale] = s
            for key in ("gain_versus_blur", "noise_on_blur", "blur_sensitivity"):
                if key in report and key in old and old[key]["n_patches"] == report[key]["n_patches"]:
                    old[key]["results"].update(report[key]["results"])
                elif key in report:
                    old[key] = report[key]
            report = old
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(out)
    print(json.dumps(report, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m lpips_sat.train.realcheck``."""
    import sys

    from lpips_sat.train import module_main

    return module_main(sys.modules[__name__], "lpips-sat realcheck", argv)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
