"""The cost of registration (``LPIPSSat(register="translation")``, the v5 form) on CPU, side by side in one run.

Cells: 64 and 256 px, batch 8, forward in inference mode. Contenders of a cell run one after the other on the same
images (real Sentinel-2 crops as ``hr``; ``sr`` = the crops moved by a different sub-pixel shift of up to 2.5 px
each, then degraded as in ``bench_metric``, so the Lanczos kernel has the size a realistic misregistration gives):

* ``register``: ``LPIPSSat.random(width_div=1)`` (full-size random ResNet-18, the default weights' input
  normalisation and distance form) with ``register="translation"`` and the default weights' ``max_shift`` (else 3):
  shift estimate (FFTs of both images, upsampled-DFT refinement), separable Lanczos-3 translation of ``sr``, then
  the backbone on both full-size images.
* ``none``: the same metric (same seed, same weights) with ``register="none"``: the backbone on the full images.
* ``backbone-cl``: the bare backbone on both full-size prepared images in channels-last layout (the limit of the
  unregistered design, as in ``bench_metric``).
* ``registration``: :func:`lpips_sat.register.register` alone on the two prepared images (estimate + translate +
  fill of the exposed strip): the added work, timed by itself.

The ratio ``register ÷ none`` is the price of registering (the backbone sees the same number of pixels either way).
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

import pytest
import torch
from conftest import degrade, fmt_ms, fmt_ratio, measure, patches, rounds_for, summary

from lpips_sat import LPIPSSat
from lpips_sat.register import DEFAULT_MAX_SHIFT, max_shift_of, register
from lpips_sat.train.distortions import fourier_shift

SIZES, BATCH = (64, 256), 8
CONTENDERS = ("register", "none", "backbone-cl", "registration")
CASES = [(s, c) for s in SIZES for c in CONTENDERS]


def _form() -> tuple[dict[str, Any], float]:
    """The default (or ``BENCH_WEIGHTS``) weights' input normalisation and distance form, and their ``max_shift``
    (:data:`~lpips_sat.register.DEFAULT_MAX_SHIFT` for weights that do not register)."""
    from lpips_sat.registry import DEFAULT_NAME, get_entry

    entry = get_entry(os.environ.get("BENCH_WEIGHTS", DEFAULT_NAME))
    extra = entry.extra
    form = {"input_norm": str(extra.get("input_norm", "global")), "texture": extra.get("distance_form") == "lpips+texture"}
    return form, max_shift_of(dict(extra), entry.name) or DEFAULT_MAX_SHIFT


@lru_cache(maxsize=1)
def nets() -> dict[str, LPIPSSat]:
    """The registering metric and the same weights without registration."""
    form, max_shift = _form()
    reg = LPIPSSat.random(width_div=1, register="translation", max_shift=max_shift, **form)
    plain = LPIPSSat.random(width_div=1, register="none", **form)
    assert reg.registers and not plain.registers
    ref = plain.backbone.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in reg.backbone.state_dict().items()), "the two metrics must share weights"
    return {"register": reg, "none": plain}


@lru_cache(maxsize=2)
def inputs(size: int) -> dict[str, torch.Tensor]:
    """Real S2 crops (``hr``), shifted and degraded copies (``sr``) and their prepared forms."""
    hr = patches(size, BATCH, seed=size + BATCH)
    g = torch.Generator().manual_seed(size)
    shift = torch.rand(BATCH, 2, generator=g) * 5 - 2.5
    sr = degrade(fourier_shift(hr, shift[:, 0], shift[:, 1]).clamp_min(0.0))
    m = nets()["none"]
    with torch.no_grad():
        a, b = m.prepare(sr), m.prepare(hr)
    return {"sr": sr, "hr": hr, "a": a, "b": b, "both_cl": torch.cat([a, b]).contiguous(memory_format=torch.channels_last), "shift": shift}


def _check(x: dict[str, torch.Tensor]) -> None:
    """The registering metric must find the shifts and see far less of them than the plain one (a wrong set-up would
    time a registration that does nothing)."""
    n = nets()
    with torch.inference_mode():
        d_reg, est = n["register"](x["sr"], x["hr"], registration=True)
        d_plain = n["none"](x["sr"], x["hr"])
    assert float((est - x["shift"]).abs().max()) < 0.25, "registration did not recover the benchmark's shifts"
    assert bool((d_reg < d_plain).all()), "registration did not lower the distance of shifted images"


@pytest.mark.parametrize("size,name", CASES, ids=[f"{s}px-b{BATCH}-{c}" for s, c in CASES])
def bench_register(benchmark: Any, full: bool, size: int, name: str) -> None:
    x = inputs(size)
    n = nets()
    if name == "register":
        _check(x)
    max_shift = n["register"].max_shift
    fns = {
        "register": lambda: n["register"](x["sr"], x["hr"]),
        "none": lambda: n["none"](x["sr"], x["hr"]),
        "backbone-cl": lambda: n["none"].backbone(x["both_cl"]),
        "registration": lambda: register(x["a"], x["b"], max_shift),
    }
    f = fns[name]

    def run() -> None:
        with torch.inference_mode():
            f()
    rounds, warmup = rounds_for(2 * BATCH * size * size) if name != "registration" else (9, 2)
    if full:
        rounds += 2
    measure(benchmark, run, group=f"register-fwd-{size}px-b{BATCH}", label=name, rounds=rounds, warmup=warmup,
            pixels=2 * BATCH * size * size, max_shift=max_shift)


def _min(results: dict, group: str, label: str) -> float | None:
    rec = results.get((group, label))
    return rec["min"] if rec else None


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


@summary
def register_summary(results: dict) -> list[str]:
    lines = ["## Registration (register=\"translation\") vs the same metric without it and the bare backbone (CPU, forward, ratios of minimum times)", "",
             ("`reg ÷ none` = registering metric / the same metric with register=\"none\" (the price of registering); `÷ limit` = "
              "metric / bare backbone on both full-size images (channels-last); `registration` = estimate + translate alone, "
              "and its share of the unregistered metric's time."), "",
             "| size | batch | register ms | none ms | limit ms | registration ms | reg ÷ none | reg ÷ limit | none ÷ limit | registration ÷ none |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    seen = False
    for s in SIZES:
        g = f"register-fwd-{s}px-b{BATCH}"
        t = {c: _min(results, g, c) for c in CONTENDERS}
        if all(v is None for v in t.values()):
            continue
        seen = True
        lines.append(f"| {s} | {BATCH} | {fmt_ms(t['register'])} | {fmt_ms(t['none'])} | {fmt_ms(t['backbone-cl'])} | "
                     f"{fmt_ms(t['registration'])} | {fmt_ratio(_div(t['register'], t['none']))} | "
                     f"{fmt_ratio(_div(t['register'], t['backbone-cl']))} | {fmt_ratio(_div(t['none'], t['backbone-cl']))} | "
                     f"{fmt_ratio(_div(t['registration'], t['none']))} |")
    if not seen:
        lines.append("(not measured in this run)")
    return lines
