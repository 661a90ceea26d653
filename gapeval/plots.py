"""Figures and the report of ``gapeval gap``: forest plot of gaps with CIs, PSD curves, band histograms, ranking tables.

matplotlib with the non-interactive Agg backend; every figure is written atomically as PNG.
"""

from __future__ import annotations

import html
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from gapeval.report import CSS, html_table, md_table
from lpips_sat.atomic import atomic_file, write_text_atomic

log = logging.getLogger(__name__)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
            os.chmod(tmp, 0o644)
    finally:
        _pyplot().close(fig)
    return path


def _all_zero(s: Mapping[str, Any]) -> bool:
    """A gap of exactly 0 with CI [0, 0]: every scene identical in both runs (an empty panel)."""
    return s["gap"] == 0 and s.get("ci_low") == 0 and s.get("ci_high") == 0


def forest_plot(comparisons: Sequence[Mapping[str, Any]], metrics: Sequence[str], path: Path) -> Path | None:
    """One panel per metric; one row per comparison: mean gap (A - B) with its bootstrap CI; filled marker when
    Holm-significant. Metrics whose every gap is exactly 0 (CI [0, 0]) get no panel; ``None`` when nothing is left."""
    metrics = [m for m in metrics if any("gap" in c["metrics"].get(m, {}) and not _all_zero(c["metrics"][m]) for c in comparisons)]
    if not metrics:
        return None
    plt = _pyplot()
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.5 + 3.2 * cols, 0.6 + (0.35 * len(comparisons) + 0.7) * rows), squeeze=False)
    labels = [c["name"] for c in comparisons]
    for k, (ax, m) in enumerate(zip(axes.flat, metrics)):
        for i, c in enumerate(comparisons):
            s = c["metrics"].get(m, {})
            if "gap" not in s:
                continue
            y = len(comparisons) - 1 - i
            lo, hi = s["ci_low"], s["ci_high"]
            if np.isfinite(lo) and np.isfinite(hi):
                ax.plot([lo, hi], [y, y], color="0.3", lw=1.5)
            sig = s.get("significant", False)
            ax.plot([s["gap"]], [y], "o", color="C3" if sig else "C0", mfc="C3" if sig else "white", ms=6)
        ax.axvline(0.0, color="0.6", ls="--", lw=1)
        d = comparisons[0]["metrics"].get(m, {}).get("direction")
        ax.set_title(f"{m}" + (f"  ({d} is better)" if d else ""), fontsize=9)
        ax.set_yticks(range(len(comparisons)))
        ax.set_yticklabels(labels[::-1] if k % cols == 0 else [], fontsize=8)
        ax.grid(axis="y", color="0.93")
        ax.tick_params(axis="x", labelsize=8)
        ax.set_ylim(-0.7, len(comparisons) - 0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.suptitle("Gap A - B per metric: mean and 95 % paired bootstrap CI (red: Holm-significant Wilcoxon)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    return _save(fig, path)


def psd_plot(freq: Sequence[float], hr: Sequence[float] | None, runs: Mapping[str, Sequence[float] | None], path: Path,
             cutoff: float | None = None) -> Path | None:
    """Radially averaged PSD (log-log) of each run's SR outputs and of the HR targets, plus the SR/HR ratio."""
    if hr is None and not any(v is not None for v in runs.values()):
        return None
    plt = _pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    f = np.asarray(freq)
    if hr is not None:
        ax.loglog(f, hr, color="k", lw=2, label="HR target")
    for i, (name, p) in enumerate(runs.items()):
        if p is None:
            continue
        ax.loglog(f, p, color=f"C{i % 10}", lw=1.3, label=name)
        if hr is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                ax2.semilogx(f, np.asarray(p) / np.asarray(hr), color=f"C{i % 10}", lw=1.3, label=name)
    for a in (ax, ax2):
        if cutoff:
            a.axvline(cutoff, color="0.6", ls=":", lw=1)
        a.set_xlabel("spatial frequency (cycles / HR pixel)")
    ax.set_ylabel("power (reflectance$^2$)")
    ax.set_title("Radially averaged PSD", fontsize=10)
    ax2.axhline(1.0, color="k", lw=1)
    ax2.set_ylabel("PSD ratio SR / HR")
    ax2.set_title("< 1: detail missing (smoothing); > 1: extra energy (hallucination / noise)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def band_histograms(samples: Mapping[str, np.ndarray], hr: np.ndarray, bands: Sequence[str], path: Path, bins: int = 40) -> Path | None:
    """Reflectance histograms per band: HR targets (filled grey) and each run's SR outputs (step lines, one colour per
    run, never translucent), with one legend for the figure. ``samples[name]`` and ``hr`` are (C, k) arrays. Bands
    whose values are all equal (no spread to draw) are left out; ``None`` when none is left."""
    from matplotlib.ticker import MaxNLocator

    keep = []
    for b, band in enumerate(bands):
        allv = np.concatenate([hr[b]] + [s[b] for s in samples.values()])
        allv = allv[np.isfinite(allv)]
        if allv.size and allv.max() > allv.min():
            keep.append((b, band))
    if not keep:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keep), figsize=(3.4 * len(keep), 3.2), squeeze=False)
    handles: dict[str, Any] = {}
    for ax, (b, band) in zip(axes.flat, keep):
        ref = hr[b] if hr.shape[1] and np.ptp(hr[b]) > 0 else np.concatenate([s[b] for s in samples.values()])
        lo, hi = float(np.quantile(ref, 0.002)), float(np.quantile(ref, 0.998))
        edges = np.linspace(lo, hi if hi > lo else lo + 1e-6, bins + 1)
        if hr.shape[1]:
            handles.setdefault("HR target", ax.hist(hr[b], bins=edges, density=True, color="0.82", label="HR target")[2][0])
        for i, (name, s) in enumerate(samples.items()):
            dens, _ = np.histogram(s[b], bins=edges, density=True)
            (line,) = ax.step(edges, np.append(dens, dens[-1]), where="post", color=f"C{i % 10}", lw=1.3, label=name)
            handles.setdefault(name, line)
        ax.set_title(band, fontsize=9)
        ax.set_xlabel("reflectance", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=4))
        ax.tick_params(labelsize=8)
    axes.flat[0].set_ylabel("density", fontsize=8)
    legend_rows = math.ceil(len(handles) / 6)
    ncol = math.ceil(len(handles) / legend_rows)  # balanced rows of at most 6 entries
    fig.legend(list(handles.values()), list(handles), loc="upper center", ncol=ncol, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - (0.05 + 0.2 * legend_rows) / fig.get_figheight()))
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------- report
def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return ""
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return "nan" if not np.isfinite(x) else f"{x:.{digits}g}"
    return str(x)


def _significance(s: Mapping[str, Any]) -> str:
    """``yes`` / ``no`` / ``no (underpowered)``: too few scenes for Holm significance (see ``gapeval.gap.power_notes``)."""
    text = _fmt(s.get("significant"))
    return f"{text} (underpowered)" if text == "no" and s.get("underpowered") else text


def _tables(result: Mapping[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table of the report."""
    tables = []
    for c in result["comparisons"]:
        header = ["metric", "n", "mean A", "mean B", "gap A-B", "95% CI", "Wilcoxon p", "Holm p", "significant", "Cohen's dz", "rank-biserial"]
        rows = []
        for m, s in c["metrics"].items():
            if "gap" not in s:
                rows.append([m, _fmt(s.get("n")), "", "", "", "", "", "", "", "", s.get("note", "")])
                continue
            rows.append([m, _fmt(s["n"]), _fmt(s["mean_a"]), _fmt(s["mean_b"]), _fmt(s["gap"]), f"[{_fmt(s['ci_low'])}, {_fmt(s['ci_high'])}]",
                         _fmt(s["p_value"], 3), _fmt(s.get("p_holm"), 3), _significance(s), _fmt(s["cohens_dz"], 3), _fmt(s["rank_biserial"], 3)])
        title = f"Gap: {c['name']} (A = {c['a']}, B = {c['b']}, {c['n_matched']} matched scenes)"
        if c.get("unmatched"):
            title += " — unmatched scenes left out: " + "; ".join(f"{k}: {len(v)}" for k, v in c["unmatched"].items())
        tables.append((title, header, rows))
    dist = result.get("distribution") or {}
    if dist:
        bands = next((list(d["bands"]) for d in dist.values() if d.get("bands")), [])
        header = ["run", "FD", "KID", "KID std", "tiles SR/HR", "HF ratio (mean)"] + [f"W1 {b}" for b in bands] + [f"KS {b}" for b in bands]
        rows = []
        for name, d in dist.items():
            bd = d.get("bands") or {}
            rows.append([name, _fmt(d.get("fd")), _fmt(d.get("kid")), _fmt(d.get("kid_std"), 2), f"{d.get('n_tiles_sr', 0)}/{d.get('n_tiles_hr', 0)}",
                         _fmt(d.get("hf_ratio_mean"), 3)] + [_fmt(bd.get(b, {}).get("wasserstein"), 3) for b in bands] + [_fmt(bd.get(b, {}).get("ks"), 3) for b in bands])
        tables.append(("Distribution distances of SR outputs to the HR targets (lower is closer)", header, rows))
    for t in result.get("rankings") or []:
        metrics = result["metrics"]
        header = ["run"] + [m for m in metrics]
        rows = []
        for r in t["rows"]:
            rows.append([r["run"]] + [f"{_fmt(r[m])}" + (f" ({r['ranks'][m]})" if r["ranks"].get(m) else "") for m in metrics])
        title = "Ranking" + (f" — {t['group_by']} = {t['group']}" if t.get("group_by") else "") + ": mean per metric (rank, 1 = best)"
        tables.append((title, header, rows))
    return tables


def write_gap_report(result: Mapping[str, Any], out: Path, samples: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write the figures plus ``report.md`` and ``report.html`` into ``out``; returns the written paths."""
    out = Path(out)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Path] = {}
    fp = forest_plot(result["comparisons"], result["metrics"], fig_dir / "forest.png")
    if fp:
        figures["Gaps with 95 % CIs"] = fp
    psd = result.get("psd")
    if psd:
        pp = psd_plot(psd["freq"], psd["hr"], psd["runs"], fig_dir / "psd.png", cutoff=(result.get("config") or {}).get("hf_cutoff"))
        if pp:
            figures["Power spectral density"] = pp
    if samples:
        bh = band_histograms(samples["runs"], samples["hr"], samples["bands"], fig_dir / "band_histograms.png")
        if bh:
            figures["Band histograms"] = bh
    tables = _tables(result)
    md = ["# Domain-gap report (gapeval gap)", "",
          f"Runs: {', '.join(result['runs'])}. Metrics tested: {', '.join(result['metrics'])}. "
          f"{result['n_tests']} tests, Holm-adjusted at alpha = {result['config']['alpha']}. Gap = A - B over matched scenes; "
          f"CI: paired BCa bootstrap ({result['config']['n_resamples']} resamples).", ""]
    md += [f"- {note}" for note in result.get("notes") or []] + ([""] if result.get("notes") else [])
    for title, header, rows in tables:
        md += [f"## {title}", ""] + md_table(header, rows) + [""]
    for title, p in figures.items():
        md += [f"## {title}", "", f"![{title}](figures/{p.name})", ""]
    if result.get("skipped"):
        md += ["## Skipped images", ""] + [f"- {k}: {'; '.join(v[:10])}" for k, v in result["skipped"].items()] + [""]
    write_text_atomic(out / "report.md", "\n".join(md))
    write_text_atomic(out / "report.html", _html(result, tables, figures))
    return {"report.md": out / "report.md", "report.html": out / "report.html", **{p.name: p for p in figures.values()}}


def _html(result: Mapping[str, Any], tables: Sequence[tuple[str, list[str], list[list[str]]]], figures: Mapping[str, Path]) -> str:
    esc = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>gapeval gap report</title>",
             f"<style>{CSS}</style></head><body>", "<h1>Domain-gap report</h1>",
             f"<p>Runs: {esc(', '.join(result['runs']))}. {result['n_tests']} tests, Holm-adjusted at alpha = {result['config']['alpha']}. "
             "Gap = A &minus; B over matched scenes; CI: paired BCa bootstrap.</p>"]
    if result.get("notes"):
        parts.append("<ul class='warn' style='padding-left:2em'>" + "".join(f"<li>{esc(n)}</li>" for n in result["notes"]) + "</ul>")
    for title, header, rows in tables:
        parts.append(f"<h2>{esc(title)}</h2>" + html_table(header, rows))
    for title, p in figures.items():
        parts.append(f"<h2>{esc(title)}</h2><img src='figures/{esc(p.name)}' alt='{esc(title)}'>")
    parts.append("</body></html>")
    return "\n".join(parts)
