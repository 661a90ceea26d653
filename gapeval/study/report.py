"""The study report (``report.md``, ``report.html``, ``figures/``, ``tables.json``) from a finished study folder.

Sections: data; the 2 x 2 table per model (training domain x test input; mean and bootstrap 95 % CI per metric,
sample std); gaps (synthetic-to-real per model and domain, training-domain per model; paired BCa CIs, Wilcoxon,
Holm over every test of the analysis; forest plot); the sampling control (half of the samples against the other
half); training curves (loss and validation LPIPS-Sat against steps, both domains) with a convergence table; image
grids. ``tables.json`` holds every number of the tables (no timestamps), so two runs can be compared exactly.
"""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from gapeval.plots import _pyplot, _save, forest_plot
from gapeval.report import CSS, md_table
from gapeval.report import html_table as _html_table
from gapeval.results import jsonable
from gapeval.stats import summarize
from lpips_sat.atomic import write_text_atomic

#: The runner's :class:`gapeval.study.runner.Study` (not imported: the runner imports this module).
Study = Any

LOWER_BETTER = {"lpips_sat", "sam_deg", "refl_l1", "spectral_sam_deg", "ergas", "rmse", "mae", "shift_px", "sample_std"}
LABELS = {"lpips_sat": "LPIPS-Sat ↓", "psnr": "PSNR ↑", "ssim": "SSIM ↑", "sam_deg": "SAM ° ↓", "refl_l1": "LR consistency L1 ↓",
          "sample_std": "sample std", "log10_hf_ratio": "log10 HF ratio"}


def _f(x: Any, d: int = 4) -> str:
    return "nan" if x is None or not np.isfinite(x) else f"{x:.{d}g}"


def _ci(st: dict[str, Any]) -> str:
    if not st.get("n"):
        return "n/a"
    return f"{_f(st['mean'])} [{_f(st['ci_low'])}, {_f(st['ci_high'])}]"


def read_pairs(path: Path) -> dict[str, np.ndarray]:
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    out: dict[str, np.ndarray] = {}
    for c in rows[0] if rows else []:
        try:
            out[c] = np.array([float(r[c]) if r[c] != "" else np.nan for r in rows])
        except ValueError:
            continue
    return out


def read_log(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        return {}
    lines = [ln.split(",") for ln in path.read_text().splitlines() if ln.strip()]
    return {h: np.array([float(r[i]) for r in lines[1:]]) for i, h in enumerate(lines[0])}


def cells(study: Study, metrics: list[str]) -> dict[str, dict[str, Any]]:
    """Per run and metric: mean, CI (bootstrap over scenes) of the per-scene values."""
    st = study.cfg.stats
    out = {}
    for run in study.cfg.run_names():
        vals = read_pairs(study.out / "score" / run / "pairs.csv")
        out[run] = {m: summarize(vals[m], n_resamples=int(st["n_resamples"]), seed=int(st["seed"])) for m in metrics if m in vals}
    return out


def convergence(study: Study) -> dict[str, dict[str, Any]]:
    """Per trained model and domain: final/best validation LPIPS-Sat, the first step within 5 % of the best, final loss."""
    out = {}
    for m in study.cfg.models:
        if not m.trained:
            continue
        for d in study.cfg.domains:
            folder = study.out / "train" / m.label / d
            loss, val = read_log(folder / "train_log.csv"), read_log(folder / "val_log.csv")
            row: dict[str, Any] = {}
            if loss:
                tail = loss["loss"][-max(1, len(loss["loss"]) // 10):]
                row["loss_final"] = float(tail.mean())
            if val and len(val.get("step", [])):
                v, s = val["val_lpips_sat"], val["step"]
                best = float(np.min(v))
                row.update(val_start=float(v[0]), val_final=float(v[-1]), val_best=best, step_best=int(s[int(np.argmin(v))]),
                           step_within_5pct=int(s[int(np.argmax(v <= best * 1.05))]), val_psnr_final=float(val.get("val_psnr", [np.nan])[-1]))
            out[f"{m.label}/{d}"] = row
    return out


def write_study_report(study: Study) -> dict[str, Any]:
    """Write the report into ``study.out``; returns the tables (also ``tables.json``)."""
    cfg, out = study.cfg, study.out
    fig_dir = out / "figures"
    fig_dir.mkdir(exist_ok=True)
    gap = json.loads((out / "gap" / "gap.json").read_text())
    ctl_path = out / "gap" / "control" / "gap.json"
    control = json.loads(ctl_path.read_text()) if ctl_path.is_file() else None
    metrics = [m for m in gap["metrics"]]
    cell = cells(study, metrics)
    conv = convergence(study)
    view = json.loads((out / "data" / "stage.json").read_text())
    tables = {"study": cfg.name, "smoke": cfg.smoke, "tiles": view.get("tiles"), "cells": cell,
              "gaps": [_gap_row(c) for c in gap["comparisons"]], "controls": [_gap_row(c) for c in (control or {}).get("comparisons", [])],
              "convergence": conv, "n_tests": gap["n_tests"]}
    write_text_atomic(out / "tables.json", json.dumps(jsonable(tables, digits=10), indent=1, sort_keys=True) + "\n")

    figures: list[tuple[str, str]] = []
    fp = forest_plot(gap["comparisons"], metrics, fig_dir / "gaps_forest.png")
    if fp:
        figures.append(("Gaps with 95 % CIs (filled: Holm-significant)", f"figures/{fp.name}"))
    for m in cfg.models:
        if m.trained:
            p = training_curves(study, m.label, fig_dir / f"training_{m.label}.png")
            if p:
                figures.append((f"Training curves: {m.label} (both domains)", f"figures/{p.name}"))
    for m in cfg.models:
        p = image_grid(study, m.label, fig_dir / f"grid_{m.label}.png")
        if p:
            figures.append((f"Test tiles: {m.label} (HR, both LR inputs, SR per training domain and input, sample std)", f"figures/{p.name}"))

    sections = _sections(study, cell, metrics, gap, control, conv)
    md = [f"# Study report: {cfg.name}", ""]
    if cfg.smoke:
        md += ["**Smoke run (`--smoke`): tiny networks and a few steps; the numbers only show that the pipeline works.**", ""]
    for title, text, tabs in sections:
        md += [f"## {title}", ""] + ([text, ""] if text else [])
        for sub, head, body in tabs:
            md += ([f"**{sub}**", ""] if sub else []) + md_table(head, body) + [""]
    for title, rel in figures:
        md += [f"## {title}", "", f"![{title}]({rel})", ""]
    write_text_atomic(out / "report.md", "\n".join(md))
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>study {e(cfg.name)}</title><style>{CSS}</style></head><body>",
             f"<h1>Study report: {e(cfg.name)}</h1>"]
    if cfg.smoke:
        parts.append("<p class='warn'>Smoke run (--smoke): tiny networks and a few steps; the numbers only show that the pipeline works.</p>")
    for title, text, tabs in sections:
        parts.append(f"<h2>{e(title)}</h2>" + (f"<p>{e(text)}</p>" if text else ""))
        for sub, head, body in tabs:
            parts.append((f"<h3>{e(sub)}</h3>" if sub else "") + _html_table(head, body))
    for title, rel in figures:
        parts.append(f"<h2>{e(title)}</h2><img src='{e(rel)}' alt='{e(title)}'>")
    parts.append("</body></html>")
    write_text_atomic(out / "report.html", "\n".join(parts))
    return json.loads((out / "tables.json").read_text())


def _gap_row(c: dict[str, Any]) -> dict[str, Any]:
    return {"name": c["name"], "a": c["a"], "b": c["b"], "n": c["n_matched"],
            "metrics": {m: {k: s.get(k) for k in ("gap", "ci_low", "ci_high", "p_value", "p_holm", "significant", "mean_a", "mean_b")}
                        for m, s in c["metrics"].items() if "gap" in s}}


def _gap_table(comps: list[dict[str, Any]], metrics: list[str]) -> tuple[list[str], list[list[str]]]:
    head = ["comparison (A - B)", "n"] + [f"{LABELS.get(m, m)} gap [95% CI]" for m in metrics] + ["LPIPS-Sat Holm p"]
    body = []
    for c in comps:
        row = [c["name"], str(c["n_matched"])]
        for m in metrics:
            s = c["metrics"].get(m, {})
            row.append(f"{_f(s['gap'])} [{_f(s['ci_low'])}, {_f(s['ci_high'])}]{' *' if s.get('significant') else ''}" if "gap" in s else "")
        s = c["metrics"].get("lpips_sat", {})
        row.append(_f(s.get("p_holm"), 3))
        body.append(row)
    return head, body


def _sections(study: Study, cell, metrics, gap, control, conv) -> list[tuple[str, str, list]]:
    cfg = study.cfg
    view = json.loads((study.out / "data" / "stage.json").read_text())
    src = cfg.data.get("naip_proxy")
    data_text = (f"Pair set {study.pairs_root()} ({'NAIP proxy: HR ' + Path(src.hr).name + ', real LR from ' + Path(src.lr).name + ' — an aerial-to-aerial proxy for Sentinel-2 ↔ PlanetScope, not the real sensor pair' if src else 'gapeval pairs'}); "
                 f"tiles used per split {view.get('tiles')}. Training domains (LR folder): {cfg.domains}; test inputs: {cfg.inputs}. "
                 f"LPIPS-Sat weights: {study.metric.name}. Every trained model: {cfg.train['steps']} steps, batch {cfg.train['batch']}, "
                 f"patch {cfg.train['patch']} LR px, lr {cfg.train['learning_rate']}, seed {cfg.train['seed']} (same budget for both domains). "
                 f"Sampling: {cfg.sampling['samples']} samples per tile; a scene's metric is the mean over its samples.")
    data_tabs = []
    manifest = study.pairs_root() / "manifest.csv"
    if manifest.is_file():
        with manifest.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        if rows and "split" in rows[0]:
            reasons = sorted({r.get("reason") or "kept" for r in rows})
            body = [[sp] + [str(sum(1 for r in rows if r["split"] == sp and (r.get("reason") or "kept") == why)) for why in reasons]
                    for sp in ("train", "val", "test")]
            data_tabs.append(("Tiles of the pair set by split and outcome (manifest.csv)", ["split", *reasons], body))
        shifts = [np.hypot(float(r["shift_dy_hr_px"]), float(r["shift_dx_hr_px"])) for r in rows if r.get("shift_dy_hr_px") and r.get("kept") == "1"]
        if shifts:
            data_text += (f" Residual registration shift between the acquisitions on kept tiles (phase correlation, HR px): median "
                          f"{np.median(shifts):.2f}, 90th percentile {np.percentile(shifts, 90):.2f}.")
    out: list[tuple[str, str, list]] = [("Data and settings", data_text, data_tabs)]
    tabs = []
    shown_cells = [k for k in metrics if any(k in c for c in cell.values())]
    for m in cfg.models:
        runs = [r for r in cfg.run_names() if r.split("/")[0] == m.label]
        head = ["training domain", "test input"] + [LABELS.get(k, k) for k in shown_cells] + ["SR clipped to [0, 1]"]
        body = [[r.split("/")[1], r.split("/")[2]] + [_ci(cell[r][k]) if k in cell[r] else "" for k in shown_cells] + [_clipped(study, r)]
                for r in runs]
        note = "" if m.trained else (" (reference: bicubic upsampling of the input, no model)" if m.adapter == "bicubic"
                                     else " (checkpoint, not trained here)")
        tabs.append((m.label + note, head, body))
    out.append(("2 × 2 results per model (mean [bootstrap 95 % CI] over test scenes)",
                "sample std: per-pixel standard deviation over the samples (reflectance), averaged per scene.", tabs))
    shown = [k for k in metrics if k != "sample_std"]
    head, body = _gap_table(gap["comparisons"], shown)
    out.append(("Gaps", f"Gap = A − B over matched test scenes; paired BCa bootstrap CI; * = Holm-significant (alpha {gap['config']['alpha']}, "
                f"{gap['n_tests']} Wilcoxon tests corrected together). Positive LPIPS-Sat / SAM / LR-L1 gaps and negative PSNR / SSIM gaps "
                "mean A is worse. Per-metric p-values, effect sizes, FD/KID, spectra and band histograms of every run: gap/report.html "
                "(gap/gap.json).", [("", head, body)]))
    if control:
        head, body = _gap_table(control["comparisons"], shown)
        out.append(("Control: a model against itself", "Mean over the second half of the samples minus the first half, per run (separate "
                    "Holm family): only sampling noise, so the CIs should cover 0.", [("", head, body)]))
    if conv:
        head = ["model / training domain", "final loss (last 10 %)", "val LPIPS-Sat start", "final", "best", "step of best", "first step within 5 % of best",
                "val PSNR final"]
        body = [[k, _f(v.get("loss_final")), _f(v.get("val_start")), _f(v.get("val_final")), _f(v.get("val_best")), str(v.get("step_best", "")),
                 str(v.get("step_within_5pct", "")), _f(v.get("val_psnr_final"))] for k, v in conv.items()]
        out.append(("Convergence", "Validation: EMA weights sampled on the first validation tiles of the model's own training domain "
                    f"({cfg.validation['tiles']} tiles), every {cfg.train['val_every']} steps. Losses of the two domains are on different data "
                    "and are not directly comparable; the curves show how fast each one settles.", [("", head, body)]))
    return out


def _clipped(study: Study, run: str) -> str:
    stamp = study.out / "infer" / run / "stage.json"
    frac = json.loads(stamp.read_text()).get("clipped_fraction") if stamp.is_file() else None
    return "" if frac is None else f"{100 * frac:.2g} %"


def training_curves(study: Study, label: str, path: Path) -> Path | None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    any_data = False
    for d in study.cfg.domains:
        folder = study.out / "train" / label / d
        loss, val = read_log(folder / "train_log.csv"), read_log(folder / "val_log.csv")
        if loss:
            any_data = True
            k = max(1, len(loss["loss"]) // 50)
            smooth = np.convolve(loss["loss"], np.ones(k) / k, mode="valid")
            axes[0].plot(loss["step"][k - 1:], smooth, label=f"trained on {d}")
        if val:
            axes[1].plot(val["step"], val["val_lpips_sat"], marker="o", ms=3, label=f"trained on {d} (val on {d})")
    if not any_data:
        plt.close(fig)
        return None
    axes[0].set(xlabel="step", ylabel="training loss (moving mean)", title=f"{label}: loss", yscale="log")
    axes[1].set(xlabel="step", ylabel="validation LPIPS-Sat ↓", title=f"{label}: validation LPIPS-Sat")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def image_grid(study: Study, label: str, path: Path, n: int = 3) -> Path | None:
    """Rows: the first ``n`` test tiles; columns: HR, each LR input, the SR of every run of the model, sample std (last run)."""
    from gapeval.gap import load_reflectance
    from gapeval.study.config import BANDS
    from gapeval.study.data import tiles

    cfg = study.cfg
    runs = [r for r in cfg.run_names() if r.split("/")[0] == label]
    hr_t = tiles(study.out / "data" / "test" / "hr")
    keys = sorted(hr_t)[:n]
    if not keys:
        return None
    read = lambda p: load_reflectance(p, bands=None, scale=None, wanted=BANDS, flag="--scale")[0]  # noqa: E731
    plt = _pyplot()
    cols = 1 + len(cfg.inputs) + len(runs) + 1
    fig, axes = plt.subplots(len(keys), cols, figsize=(1.9 * cols, 2.0 * len(keys)), squeeze=False)
    for i, key in enumerate(keys):
        hr = read(hr_t[key])
        lo, hi = np.nanpercentile(hr[:3], 2, axis=(1, 2)), np.nanpercentile(hr[:3], 98, axis=(1, 2))
        rgb = lambda x: np.clip((np.moveaxis(x[:3], 0, -1) - lo) / np.maximum(hi - lo, 1e-6), 0, 1)  # noqa: E731, B023
        panels = [("HR", rgb(hr))]
        for inp, folder in cfg.inputs.items():
            panels.append((f"LR {inp}", rgb(read(study.out / "data" / "test" / folder / f"{key}.tif"))))
        for r in runs:
            p = study.out / "infer" / r / "s0" / f"{key}.tif"
            panels.append((f"{r.split('/')[1]}-trained\n{r.split('/')[2]} input" if r.split("/")[1] != "pretrained" else f"{r.split('/')[2]} input",
                           rgb(read(p)) if p.is_file() else None))
        samples = sorted((study.out / "infer" / runs[-1]).glob(f"s*/{key}.tif"))
        std = np.nanstd(np.stack([read(p) for p in samples]), axis=0, ddof=1).mean(0) if len(samples) > 1 else None
        panels.append((f"std {runs[-1].split('/')[1]}/{runs[-1].split('/')[2]}", std))
        for j, (title, img) in enumerate(panels):
            ax = axes[i, j]
            if img is not None:
                ax.imshow(img, interpolation="nearest", cmap="magma" if img.ndim == 2 else None)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=7)
        axes[i, 0].set_ylabel(key, fontsize=7)
    fig.tight_layout()
    return _save(fig, path)
