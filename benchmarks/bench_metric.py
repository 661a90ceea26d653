"""LPIPS-Sat forward and forward+backward on CPU, side by side with the bare backbone and the ``lpips`` package.

Cells: 64, 256 and 512 px, batch 1 and 8, in one run. Contenders of a cell run one after the other:

* ``lpips-sat``: the metric (``LPIPSSat.random(width_div=1)``: a full-size random ResNet-18, the architecture and
  therefore the speed of the shipped metric, with the default weights' input normalisation, distance form and
  registration: :func:`bench_form`) on 4-band reflectance.
* ``backbone-cl``: the same backbone alone on both prepared images, in the channels-last layout the metric uses:
  the physical limit of this design. ``backbone``: the same in torchvision's default layout.
* ``lpips-vgg`` / ``lpips-alex``: ``lpips.LPIPS(pretrained=False, pnet_rand=True)`` (random weights, nothing is
  downloaded) on the R, G, B bands of the same images.
* forward+backward (the metric as a loss, gradient w.r.t. the prediction only): ``lpips-sat``; ``lpips-sat-1pass``
  (both images in one concatenated pass, back-propagated through both: the behaviour before the split path);
  ``backbone-cl`` (prediction forward+backward, target forward without a graph: the limit); the lpips networks.
"""

from __future__ import annotations

import copy
import os
from functools import lru_cache
from typing import Any

import pytest
import torch
from conftest import fmt_ms, fmt_ratio, measure, patches, rounds_for, summary

from lpips_sat import LPIPSSat
from lpips_sat.metric import normalize_channels, stack_channels_last

SIZES, BATCHES = (64, 256, 512), (1, 8)
FWD = ("lpips-sat", "backbone-cl", "backbone", "lpips-alex", "lpips-vgg")
FWDBWD = ("lpips-sat", "lpips-sat-1pass", "backbone-cl", "lpips-alex", "lpips-vgg")
#: Cells left out unless --bench-full (each would cost 30-60 s of a shared 2-core machine).
QUICK_SKIP = {("fwd", 512, 8, "lpips-vgg"), ("fwdbwd", 256, 8, "lpips-vgg"), ("fwdbwd", 512, 1, "lpips-vgg"),
              ("fwdbwd", 512, 8, "lpips-vgg"), ("fwdbwd", 512, 8, "lpips-sat-1pass")}
CASES = [(mode, s, b, c) for mode, names in (("fwd", FWD), ("fwdbwd", FWDBWD)) for s in SIZES for b in BATCHES for c in names]
OVERHEAD_CELLS = ((64, 8), (256, 1), (256, 8), (512, 1))


def bench_form() -> dict[str, Any]:
    """The input normalisation and distance form of the weights being benchmarked: the shipped default, or
    ``BENCH_WEIGHTS=NAME`` (e.g. ``lpips-sat-s2-rn18-v2``, whose per-image band standardisation costs more than v1's
    fixed one, or ``lpips-sat-s2-rn18-v3``, which adds a texture term per tap).

    Weights whose metadata says ``register: translation`` (v5 and later) make the benchmarked metric register too
    (``register="translation", max_shift=`` the weights' value): the global shift between the two images is estimated
    (smoothing, half-spectrum FFTs, two least-squares steps) and, where there is one to remove, both images are
    resampled halfway (separable Lanczos convolutions); the backbone sees full-size images, as the ``backbone-cl``
    limit does. ``benchmarks/bench_register.py`` measures that cost side by side. An empty ``BENCH_WEIGHTS`` means the
    default."""
    from lpips_sat.register import max_shift_of
    from lpips_sat.registry import DEFAULT_NAME, get_entry

    entry = get_entry(os.environ.get("BENCH_WEIGHTS") or DEFAULT_NAME)
    extra = entry.extra
    form: dict[str, Any] = {"input_norm": str(extra.get("input_norm", "global")), "texture": extra.get("distance_form") == "lpips+texture"}
    max_shift = max_shift_of(dict(extra), entry.name)
    if max_shift > 0:
        form.update(register="translation", max_shift=max_shift)
    return form


bench_form.__test__ = False  # a helper, not a benchmark (its name matches python_functions = bench_*)


@lru_cache(maxsize=1)
def nets() -> dict[str, Any]:
    """The metric, its backbone in torchvision's default layout, and the two lpips networks (all frozen, eval)."""
    import lpips

    metric = LPIPSSat.random(width_div=1, **bench_form())
    bare = copy.deepcopy(metric.backbone).to(memory_format=torch.contiguous_format)
    out = {"metric": metric, "bare": bare}
    for net in ("vgg", "alex"):
        model = lpips.LPIPS(pretrained=False, net=net, pnet_rand=True, verbose=False).eval()
        out[net] = model.requires_grad_(False)
    return out


@lru_cache(maxsize=8)
def inputs(size: int, batch: int) -> dict[str, torch.Tensor]:
    """Real S2 crops (``hr``), a degraded copy (``sr``), their prepared forms and 3-band [-1, 1] versions for lpips."""
    from conftest import degrade

    metric = nets()["metric"]
    hr = patches(size, batch, seed=size + batch)
    sr = degrade(hr)
    with torch.no_grad():
        a, b = metric.prepare(sr), metric.prepare(hr)
    both = torch.cat([a, b])
    rgb = lambda x: (x[:, :3] / 0.3).clamp(0, 1) * 2 - 1
    return {"sr": sr, "hr": hr, "a": a, "b": b, "both": both, "both_cl": both.contiguous(memory_format=torch.channels_last),
            "sr3": rgb(sr), "hr3": rgb(hr)}


def _fwd(name: str, x: dict[str, torch.Tensor]):
    n = nets()
    m = n["metric"]
    fns = {
        "lpips-sat": lambda: m(x["sr"], x["hr"]),
        "backbone-cl": lambda: m.backbone(x["both_cl"]),
        "backbone": lambda: n["bare"](x["both"]),
        "lpips-alex": lambda: n["alex"](x["sr3"], x["hr3"]),
        "lpips-vgg": lambda: n["vgg"](x["sr3"], x["hr3"]),
    }
    f = fns[name]

    def run() -> None:
        with torch.inference_mode():
            f()
    return run


def _fwdbwd(name: str, x: dict[str, torch.Tensor]):
    n = nets()
    m = n["metric"]

    def lpips_sat() -> None:
        m(x["sr"].detach().requires_grad_(True), x["hr"]).sum().backward()

    def one_pass() -> None:  # both images need a graph -> the single concatenated pass, back-propagated through both
        m(x["sr"].detach().requires_grad_(True), x["hr"].detach().requires_grad_(True)).sum().backward()

    def limit() -> None:
        a = x["a"].detach().requires_grad_(True).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            m.backbone(x["b"].contiguous(memory_format=torch.channels_last))
        sum(f.mean() for f in m.backbone(a)).backward()

    def lp(net: str):
        return lambda: n[net](x["sr3"].detach().requires_grad_(True), x["hr3"]).sum().backward()

    return {"lpips-sat": lpips_sat, "lpips-sat-1pass": one_pass, "backbone-cl": limit, "lpips-alex": lp("alex"), "lpips-vgg": lp("vgg")}[name]


def _check_split_gradient(x: dict[str, torch.Tensor]) -> None:
    """The split (loss) path must give the one-pass path's distances and gradients (to float32 rounding)."""
    m = nets()["metric"]
    s1 = x["sr"].detach().requires_grad_(True)
    d1 = m(s1, x["hr"])
    d1.sum().backward()
    s2, h2 = x["sr"].detach().requires_grad_(True), x["hr"].detach().requires_grad_(True)
    d2 = m(s2, h2)
    d2.sum().backward()
    assert torch.allclose(d1, d2, rtol=1e-5), "split and one-pass distances differ"
    err = (s1.grad - s2.grad).abs()  # batch 1 vs 2 convolutions round differently: measured 1e-5 relative (L2), 7e-6 of the max
    assert float(err.norm() / s2.grad.norm()) < 1e-4 and float(err.max() / s2.grad.abs().max()) < 1e-4, "split and one-pass gradients differ"


@pytest.mark.parametrize("mode,size,batch,name", CASES, ids=[f"{m}-{s}px-b{b}-{c}" for m, s, b, c in CASES])
def bench_metric(benchmark: Any, full: bool, mode: str, size: int, batch: int, name: str) -> None:
    if not full and (mode, size, batch, name) in QUICK_SKIP:
        pytest.skip("costly comparator cell; run with --bench-full")
    x = inputs(size, batch)
    heavy = name == "lpips-vgg" or mode == "fwdbwd"
    rounds, warmup = rounds_for(2 * batch * size * size, heavy)
    if full:
        rounds += 2
    if mode == "fwdbwd" and name == "lpips-sat" and size == 64:
        _check_split_gradient(x)
    fn = _fwd(name, x) if mode == "fwd" else _fwdbwd(name, x)
    measure(benchmark, fn, group=f"metric-{mode}-{size}px-b{batch}", label=name, rounds=rounds, warmup=warmup,
            pixels=2 * batch * size * size)


OVERHEAD_PARTS = ("prepare x2", "cat + channels-last copy", "normalise taps", "distance")


@pytest.mark.parametrize("size,batch", OVERHEAD_CELLS, ids=[f"{s}px-b{b}" for s, b in OVERHEAD_CELLS])
@pytest.mark.parametrize("part", OVERHEAD_PARTS)
def bench_overhead_part(benchmark: Any, part: str, size: int, batch: int) -> None:
    """Everything LPIPS-Sat does besides the backbone, timed alone (cheap, so many rounds and precise)."""
    m = nets()["metric"]
    x = inputs(size, batch)
    with torch.inference_mode():
        taps = m.backbone(x["both_cl"])
        feats = [normalize_channels(f) for f in taps]
    fa, fb = [f[:batch] for f in feats], [f[batch:] for f in feats]
    fresh: list[list[torch.Tensor]] = []

    def new_taps() -> None:  # untimed: fresh raw taps, which LPIPSSat.features normalises in place
        with torch.inference_mode():
            fresh[:] = [[t.clone() for t in taps]]
    fns = {
        "prepare x2": lambda: (m.prepare(x["sr"]), m.prepare(x["hr"])),
        "cat + channels-last copy": lambda: stack_channels_last(x["a"], x["b"]),
        "normalise taps": lambda: [normalize_channels(f, inplace=True) for f in fresh[0]],
        "distance": lambda: m.distance(fa, fb),
    }
    f = fns[part]

    def run() -> None:
        with torch.inference_mode():
            f()
    measure(benchmark, run, group=f"overhead-{size}px-b{batch}", label=part, rounds=9, warmup=2,
            setup=new_taps if part == "normalise taps" else None)


def _min(results: dict, group: str, label: str) -> float | None:
    rec = results.get((group, label))
    return rec["min"] if rec else None


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _status(ok: bool, seen: bool) -> str:
    return "met" if ok else ("MISSED" if seen else "not measured in this run")


def _cells(results: dict, mode: str):
    """``(size, batch, group, LPIPS-Sat min time)`` of every measured cell of ``mode``."""
    for s in SIZES:
        for b in BATCHES:
            g = f"metric-{mode}-{s}px-b{b}"
            t = _min(results, g, "lpips-sat")
            if t is not None:
                yield s, b, g, t


@summary
def metric_summary(results: dict) -> list[str]:
    lines = ["## LPIPS-Sat vs the bare backbone and the lpips package (CPU, ratios of minimum times)", ""]
    lines += [("Forward (inference mode). `÷ limit` = LPIPS-Sat time / bare backbone on both images in the metric's channels-last "
              "layout; `÷ tv layout` = the same backbone in torchvision's default layout; `VGG ×`/`Alex ×` = lpips time / LPIPS-Sat time "
              "(how many times faster LPIPS-Sat is)."), "",
              "| size | batch | LPIPS-Sat ms | ÷ limit | ÷ tv layout | VGG × | Alex × |", "|---|---|---|---|---|---|---|"]
    worst, vgg256 = 0.0, []
    for s, b, g, t in _cells(results, "fwd"):
        lim = _div(t, _min(results, g, "backbone-cl"))
        worst = max(worst, lim or 0.0)
        vgg = _div(_min(results, g, "lpips-vgg"), t)
        if s == 256 and vgg is not None:
            vgg256.append(vgg)
        lines.append(f"| {s} | {b} | {fmt_ms(t)} | {fmt_ratio(lim)} | {fmt_ratio(_div(t, _min(results, g, 'backbone')))} | "
                     f"{fmt_ratio(vgg)} | {fmt_ratio(_div(_min(results, g, 'lpips-alex'), t))} |")
    lines += ["", ("Forward + backward (gradient w.r.t. the prediction). `÷ limit` = LPIPS-Sat / (backbone forward+backward on the "
              "prediction + forward on the target); `1-pass ×` = one concatenated pass back-propagated through both images / LPIPS-Sat "
              "(the speed-up of the split loss path)."), "",
              "| size | batch | LPIPS-Sat ms | ÷ limit | 1-pass × | VGG × | Alex × |", "|---|---|---|---|---|---|---|"]
    for s, b, g, t in _cells(results, "fwdbwd"):
        lines.append(f"| {s} | {b} | {fmt_ms(t)} | {fmt_ratio(_div(t, _min(results, g, 'backbone-cl')))} | "
                     f"{fmt_ratio(_div(_min(results, g, 'lpips-sat-1pass'), t))} | {fmt_ratio(_div(_min(results, g, 'lpips-vgg'), t))} | "
                     f"{fmt_ratio(_div(_min(results, g, 'lpips-alex'), t))} |")
    lines += ["", ("Overhead around the backbone, each part timed alone (ms); `1 + parts/limit` is the overhead ratio from these "
              "precise small timings (the direct ratio above is noisier)."), "",
              "| size | batch | " + " | ".join(OVERHEAD_PARTS) + " | sum | limit ms | 1 + parts/limit |", "|---" * (len(OVERHEAD_PARTS) + 5) + "|"]
    for s, b in OVERHEAD_CELLS:
        parts = [_min(results, f"overhead-{s}px-b{b}", p) for p in OVERHEAD_PARTS]
        if any(p is None for p in parts):
            continue
        lim = _min(results, f"metric-fwd-{s}px-b{b}", "backbone-cl")
        total = sum(parts)
        lines.append(f"| {s} | {b} | " + " | ".join(fmt_ms(p) for p in parts) + f" | {fmt_ms(total)} | {fmt_ms(lim)} | "
                     f"{fmt_ratio(1 + total / lim) if lim else '-'} |")
    lines += ["", f"Target LPIPS-Sat ≤ 1.15x the limit (forward): worst cell {worst:.2f}x -> {_status(worst <= 1.15, worst > 0)}.",
              (f"Target ≥ 2x faster than lpips-VGG at 256 px: {', '.join(f'{v:.2f}x' for v in vgg256) or '-'} -> "
               f"{_status(bool(vgg256) and min(vgg256) >= 2, bool(vgg256))}.")]
    return lines
