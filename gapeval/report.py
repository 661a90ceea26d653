"""HTML and Markdown report of a ``gapeval score`` results folder, with matplotlib figures.

Reads ``pairs.csv`` and ``summary.json`` (so a report can be rebuilt from results alone) and writes
``report.html``, ``report.md`` and ``figures/*.png``: a ranking table (mean and bootstrap 95 % CI per metric),
box plots and empirical CDFs of the per-pair values (metrics constant over all pairs are listed, not drawn), and for each prediction set a grid of its best and worst
pairs by LPIPS-Sat, each row LR | SR | HR | LPIPS-Sat map (the map is read from ``maps/`` when ``--maps``
wrote it, else computed on the shown crop when a metric is given).
"""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from gapeval.metrics import METRICS
from gapeval.results import MAPS_DIR, OPENSR_COLUMNS, load_results
from lpips_sat.atomic import write_text_atomic
from lpips_sat.errors import InputError, MissingFileError

logger = logging.getLogger(__name__)

#: Metrics shown in tables and plots, in this order, when present.
HEADLINE = (
    "lpips_sat",
    "psnr",
    "ssim",
    "sam_deg",
    "ergas",
    "rmse",
    "mae",
    "refl_l1",
    "spectral_sam_deg",
    "shift_px",
    "improvement",
    "omission",
    "hallucination",
    *OPENSR_COLUMNS.values(),
)
#: Side of the image crops shown in the best/worst grids (px of the target grid).
PREVIEW = 256


#: Style shared by every gapeval HTML report (score and gap).
CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}"
    "table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}"
    "th{background:#f0f0f0}td:nth-child(2),td:first-child{text-align:left}img{max-width:100%;border:1px solid #ddd}"
    "small{color:#666}.scroll{overflow-x:auto}code{background:#f4f4f4;padding:0 3px}"
    ".warn{background:#fff3cd;padding:.5em;border:1px solid #e0c060}"
)


def md_table(head: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table (``|`` in cells escaped) as a list of lines."""
    esc = [[str(c).replace("|", "\\|") for c in r] for r in [list(head), *body]]
    return ["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in esc[1:]]


def html_table(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """An HTML table; a cell ``value [lo, hi]`` shows its interval small on a second line."""
    e = html.escape
    th = "".join(f"<th>{e(h)}</th>" for h in head)
    trs = "".join(
        "<tr>"
        + "".join(f"<td>{e(c).replace(' [', '<br><small>[', 1).replace(']', ']</small>') if ' [' in c else e(c)}</td>" for c in map(str, r))
        + "</tr>"
        for r in body
    )
    return f"<div class='scroll'><table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table></div>"


def write_report(out_dir: str | Path, *, metric: Any = None, n_examples: int = 2, progress: bool = False) -> Path:
    """Write ``report.html``, ``report.md`` and ``figures/`` into ``out_dir``; returns the HTML path.

    Args:
        out_dir: a ``gapeval score`` results folder.
        metric: an LPIPS-Sat instance used to draw maps that ``--maps`` did not write (else those cells say so).
        n_examples: best and worst pairs shown per prediction set.
        progress: a progress bar (stderr) over the prediction sets' image grids, the slow part.
    """
    import matplotlib
    from tqdm import tqdm

    matplotlib.use("Agg")
    out_dir = Path(out_dir)
    rows, summary = load_results(out_dir)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    sets = list(summary["pred_sets"])
    rows = [r for r in rows if r["pred_set"] in sets]  # a resumed pairs.csv may also hold other sets
    ok = [r for r in rows if r["status"] == "ok"]
    metrics = [m for m in HEADLINE if any(m in r and np.isfinite(r[m]) for r in ok)]
    figures: dict[str, str] = {}
    varying, constant = _split_constant(ok, metrics)
    if ok and varying:
        same = f"; not drawn, the same in every pair: {', '.join(f'{m} = {v:.4g}' for m, v in constant.items())}" if constant else ""
        figures[f"Distributions per prediction set (box plots; points are pairs){same}"] = _boxplots(ok, sets, varying, fig_dir / "boxplots.png")
        figures[f"Cumulative distributions of per-pair values (fraction of pairs at or below each value){same}"] = _ecdfs(
            ok, sets, varying, fig_dir / "ecdf.png"
        )
    grids: dict[str, str] = {}
    for name in tqdm(sets, unit="set", desc="gapeval score: report grids", disable=not progress):
        mine = sorted((r for r in ok if r["pred_set"] == name and np.isfinite(r["lpips_sat"])), key=lambda r: r["lpips_sat"])
        if not mine:
            continue
        chosen = mine[:n_examples] + [r for r in mine[-n_examples:] if r not in mine[:n_examples]]
        labels = ["best"] * min(n_examples, len(mine)) + ["worst"] * (len(chosen) - min(n_examples, len(mine)))
        try:
            grids[name] = _pair_grid(out_dir, summary, chosen, labels, metric, fig_dir / f"pairs_{_safe(name)}.png")
        except (InputError, MissingFileError) as exc:
            logger.warning("no image grid for %s: %s", name, exc)
    md = _markdown(summary, rows, sets, metrics, figures, grids)
    write_text_atomic(out_dir / "report.md", md)
    html_path = out_dir / "report.html"
    write_text_atomic(html_path, _html(summary, rows, sets, metrics, figures, grids))
    return html_path


# ---------------------------------------------------------------------------------------------- figures


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _label(metric: str) -> str:
    direction, unit, _ = METRICS[metric]
    return f"{metric}{f' ({unit})' if unit else ''} {'↓' if direction == 'lower' else '↑'}"


def _boxplots(rows: Sequence[Mapping[str, Any]], sets: Sequence[str], metrics: Sequence[str], path: Path) -> str:
    fig, axes = _panels(len(metrics), 2.9)
    rng = np.random.default_rng(0)
    for ax, m in zip(axes.flat, metrics):
        data = [np.array([r[m] for r in rows if r["pred_set"] == s and np.isfinite(r[m])]) for s in sets]
        ax.boxplot([d if d.size else [np.nan] for d in data], showfliers=False)
        ax.set_xticks(range(1, len(sets) + 1), sets)
        for i, d in enumerate(data, start=1):
            ax.scatter(i + rng.uniform(-0.12, 0.12, d.size), d, s=9, alpha=0.6, color="k", zorder=3)
        ax.set_title(_label(m), fontsize=9)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        ax.tick_params(axis="y", labelsize=8)
    return _save(fig, axes, len(metrics), path)


def _split_constant(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> tuple[list[str], dict[str, float]]:
    """Metrics that vary over the pairs, and those with one value in every pair (their panels would be empty)."""
    varying, constant = [], {}
    for m in metrics:
        v = np.array([r[m] for r in rows if m in r and np.isfinite(r[m])])
        if v.size and v.max() == v.min():
            constant[m] = float(v[0])
        else:
            varying.append(m)
    return varying, constant


def _ecdfs(rows: Sequence[Mapping[str, Any]], sets: Sequence[str], metrics: Sequence[str], path: Path) -> str:
    """One panel per metric, one empirical CDF (step line, one colour per set) per prediction set; one legend."""
    from matplotlib.ticker import MaxNLocator

    fig, axes = _panels(len(metrics), 2.6)
    handles: dict[str, Any] = {}  # set -> its first line, for the one figure legend
    for k, (ax, m) in enumerate(zip(axes.flat, metrics)):
        for i, s in enumerate(sets):
            v = np.sort([r[m] for r in rows if r["pred_set"] == s and np.isfinite(r[m])])
            if v.size:
                x = np.concatenate([[v[0]], v])
                y = np.concatenate([[0.0], np.arange(1, v.size + 1) / v.size])
                (line,) = ax.step(x, y, where="post", color=f"C{i % 10}", lw=1.6, label=s)
                handles.setdefault(s, line)
        ax.set_title(_label(m), fontsize=9)
        ax.set_ylim(0, 1.02)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
        ax.ticklabel_format(axis="x", useOffset=False)
        ax.tick_params(labelsize=8)
        ax.grid(color="0.92")
        if k % axes.shape[1] == 0:
            ax.set_ylabel("fraction of pairs", fontsize=8)
    names = [s for s in sets if s in handles]
    fig.legend([handles[s] for s in names], names, loc="upper center", ncol=min(len(names), 6), fontsize=8, frameon=False)
    return _save(fig, axes, len(metrics), path, top=1 - 0.35 / fig.get_figheight())


def _panels(n: int, height: float) -> tuple[Any, np.ndarray]:
    """A figure with ``n`` panels, at most four per row."""
    import matplotlib.pyplot as plt

    ncol = min(4, n)
    nrow = -(-n // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, height * nrow), squeeze=False)
    return fig, axes


def _save(fig: Any, axes: np.ndarray, used: int, path: Path, top: float = 1.0) -> str:
    """Hide unused panels, save as PNG (``top``: fraction of the height left to the panels, the rest to a figure
    legend), return the path relative to the results folder."""
    import matplotlib.pyplot as plt

    for ax in list(axes.flat)[used:]:
        ax.axis("off")
    fig.tight_layout(rect=(0, 0, 1, top))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.relative_to(path.parent.parent).as_posix()


def _config_from(summary: Mapping[str, Any]) -> Any:
    from gapeval.scoring.config import ScoreConfig

    cfg = dict(summary["config"])
    names = {f.name for f in fields(ScoreConfig)}
    cfg = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items() if k in names}
    return ScoreConfig(**cfg)


def _rgb(x: np.ndarray, bands: Sequence[str], lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(rows, cols, 3) display image from B04/B03/B02 (or the first three bands), stretched to [lo, hi]."""
    idx = [bands.index(b) for b in ("B04", "B03", "B02")] if all(b in bands for b in ("B04", "B03", "B02")) else [0, 1, 2][: x.shape[0]]
    rgb = np.stack([x[i] for i in idx], axis=-1)
    if rgb.shape[-1] < 3:
        rgb = np.repeat(rgb[..., :1], 3, axis=-1)
    out = np.clip((rgb - lo) / np.maximum(hi - lo, 1e-6), 0, 1)
    return np.where(np.isfinite(out), out, 1.0)


def _pair_grid(
    out_dir: Path, summary: Mapping[str, Any], chosen: Sequence[Mapping[str, Any]], labels: Sequence[str], metric: Any, path: Path
) -> str:
    """PNG grid: one row per pair, columns LR | SR | HR | LPIPS-Sat map, on a centre crop of at most PREVIEW px."""
    import matplotlib.pyplot as plt
    from rasterio.windows import Window

    from gapeval.grids import grid_of
    from gapeval.metrics.perceptual import TiledLPIPS
    from gapeval.scoring.plan import plan_scene
    from gapeval.sources import RasterSource
    from gapeval.windows import window_slices
    from lpips_sat.raster import raster_info

    config = _config_from(summary)
    bands = list(config.bands)
    panels = []
    for rec in chosen:
        lr_path = Path(rec["lr_path"]) if rec["lr_path"] else None
        plan = plan_scene(rec["key"], Path(rec["target_path"]), {rec["pred_set"]: Path(rec["pred_path"])}, lr_path, config)
        grid = plan.target.source.grid
        h, w = min(PREVIEW, grid.height), min(PREVIEW, grid.width)
        win = Window((grid.width - w) // 2, (grid.height - h) // 2, w, h)
        inp = plan.preds[rec["pred_set"]]
        with plan.target.source as tsrc, inp.source as psrc:
            t, tv = tsrc.read(win)
            p, pv = psrc.read_on(grid, win, config.resample or "nearest") if inp.warp else psrc.read(win)
            lr = None
            if plan.lr is not None:
                with plan.lr.source as lsrc:
                    lr, _ = lsrc.read_on(grid, win, "nearest")
        dmap, note = None, "no map (run with --maps)"
        map_path = out_dir / MAPS_DIR / rec["pred_set"] / f"{rec['key']}.tif"
        if map_path.is_file():
            info = raster_info(map_path)
            with RasterSource(info, grid_of(info), [0], np.ones(1), np.zeros(1)) as msrc:
                dmap = msrc.read(win)[0][0]
            note = "LPIPS-Sat map (maps/)"
        elif metric is not None and min(h, w) >= 32:
            tl = TiledLPIPS(metric, ["p"], maps=True)
            joint = tv & pv
            found = tl.add(t, tv, {"p": p}, {"p": joint}, window_slices(win, win), tag=None) + tl.flush()
            if found:
                dmap, note = found[0][2], "LPIPS-Sat map (this crop)"
        panels.append((rec, t, tv, p, lr, dmap, note))
    vals = [t[:, tv] for _, t, tv, *_ in panels if tv.any()]
    allv = np.concatenate(vals, axis=1) if vals else np.zeros((len(bands), 1))
    lo = np.percentile(allv, 2, axis=1)
    hi = np.percentile(allv, 98, axis=1)
    idx = [bands.index(b) for b in ("B04", "B03", "B02")] if all(b in bands for b in ("B04", "B03", "B02")) else [0, 1, 2][: len(bands)]
    lo3, hi3 = lo[idx], hi[idx]
    maps = [d for *_, d, _ in panels if d is not None and np.isfinite(d).any()]
    vmax = float(np.nanpercentile(np.concatenate([m[np.isfinite(m)] for m in maps]), 99)) if maps else 1.0
    fig, axes = plt.subplots(len(panels), 4, figsize=(11, 2.9 * len(panels)), squeeze=False)
    for row, ((rec, t, tv, p, lr, dmap, note), label) in enumerate(zip(panels, labels)):
        cells = [("LR (nearest)" if lr is not None else "no LR given", lr), (f"SR: {rec['pred_set']}", p), ("HR target", t)]
        for col, (title, img) in enumerate(cells):
            ax = axes[row, col]
            if img is not None:
                ax.imshow(_rgb(img, bands, lo3, hi3), interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        ax = axes[row, 3]
        if dmap is not None:
            im = ax.imshow(dmap, cmap="magma", vmin=0, vmax=vmax if vmax > 0 else 1.0, interpolation="nearest")
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        ax.set_title(note, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        axes[row, 0].set_ylabel(f"{label}: {rec['key']}\nLPIPS-Sat {rec['lpips_sat']:.4f}\nPSNR {rec['psnr']:.2f} dB", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.relative_to(path.parent.parent).as_posix()


# ------------------------------------------------------------------------------------------------- text


def _ranked(summary: Mapping[str, Any], sets: Sequence[str]) -> list[str]:
    def key(name: str) -> float:
        st = summary["pred_sets"][name]["metrics"].get("lpips_sat", {})
        m = st.get("mean")
        return float(m) if m is not None and np.isfinite(m) else float("inf")

    return sorted(sets, key=key)


def _cell(st: Mapping[str, Any] | None) -> str:
    if not st or not st.get("n") or st.get("mean") is None:
        return "–"
    lo, hi = st.get("ci_low"), st.get("ci_high")
    ci = f" [{lo:.4g}, {hi:.4g}]" if lo is not None and hi is not None and np.isfinite(lo) else ""
    return f"{st['mean']:.4g}{ci}"


#: Groups of summary columns, one table each (keeps tables narrow).
GROUPS = (
    ("Full-reference metrics (SR vs HR)", ("lpips_sat", "psnr", "ssim", "sam_deg", "ergas", "rmse", "mae")),
    (
        "Consistency with the LR input, and correctness fractions",
        ("refl_l1", "spectral_sam_deg", "shift_px", "improvement", "omission", "hallucination"),
    ),
    ("opensr-test protocol (opensr-test 1.3.3 Metrics().compute; docs/metrics.md)", tuple(OPENSR_COLUMNS.values())),
)


def _summary_tables(
    summary: Mapping[str, Any], sets: Sequence[str], metrics: Sequence[str]
) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) per group of metrics present; prediction sets ranked by mean LPIPS-Sat."""
    out = []
    for title, group in GROUPS:
        cols = [m for m in group if m in metrics]
        if not cols:
            continue
        head = ["rank", "prediction set", "scored"] + [_label(m) for m in cols]
        body = []
        for i, name in enumerate(_ranked(summary, sets), start=1):
            s = summary["pred_sets"][name]
            body.append([str(i), name, f"{s['n_scored']}/{s['n_pairs']}"] + [_cell(s["metrics"].get(m)) for m in cols])
        out.append((title, head, body))
    return out


def _pair_table(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str], limit: int = 300) -> tuple[list[str], list[list[str]]]:
    head = ["set", "key", "status", "valid"] + list(metrics)
    body = []
    for r in rows[:limit]:
        cells = [
            r["pred_set"],
            r["key"],
            r["status"] if r["status"] == "ok" else f"{r['status']}: {r['reason']}",
            f"{r['valid_fraction']:.3f}",
        ]
        cells += [f"{r[m]:.4g}" if m in r and np.isfinite(r[m]) else "–" for m in metrics]
        body.append(cells)
    return head, body


def _notes(summary: Mapping[str, Any]) -> list[str]:
    w = summary["weights"]
    notes = [f"LPIPS-Sat weights: `{w['name']}` (sha256 `{w['sha256']}`)."]
    if w.get("testing_only"):
        notes.append("**These weights are a random network for testing: LPIPS-Sat values and rankings here are not meaningful.**")
    notes.append(
        "Means with bootstrap 95 % confidence intervals (BCa, 2000 resamples) over scored pairs; arrows show which direction is better."
    )
    notes.append(
        "Invalid pixels (nodata, NaN/inf) are masked out of every metric; pairs without any valid pixel are skipped, never scored."
    )
    return notes


def _markdown(
    summary: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    sets: Sequence[str],
    metrics: Sequence[str],
    figures: Mapping[str, str],
    grids: Mapping[str, str],
) -> str:
    table = md_table
    inputs = summary["inputs"]
    lines = ["# gapeval score report", "", f"Created {summary['created']} · config `{summary['config_hash']}`", ""]
    lines += [
        f"- predictions: {', '.join(f'`{k}` = {v}' for k, v in inputs['pred'].items())}",
        f"- targets: {inputs['target']}",
        f"- low-resolution inputs: {inputs['lr'] or 'not given'}",
        "",
    ]
    lines += [f"- {n}" for n in _notes(summary)] + ["", "## Ranking (by mean LPIPS-Sat)", ""]
    for title, head, body in _summary_tables(summary, sets, metrics):
        lines += [f"**{title}**", ""] + table(head, body) + [""]
    for title, rel in figures.items():
        lines += [f"## {title}", "", f"![{title}]({rel})", ""]
    for name, rel in grids.items():
        lines += [f"## Best and worst pairs: {name}", "", f"![{name}]({rel})", ""]
    if summary["skipped"]:
        lines += ["## Skipped pairs", ""] + [f"- {s['pred_set']} / {s['key']}: {s['reason']}" for s in summary["skipped"]] + [""]
    if summary["unpaired"]:
        lines += (
            ["## Unpaired files", ""]
            + [f"- {label} ({len(keys)}): {', '.join(keys[:20])}" for label, keys in summary["unpaired"].items()]
            + [""]
        )
    lines += ["## All pairs", ""] + table(*_pair_table(rows, metrics)) + [""]
    lines += ["## Versions", "", ", ".join(f"{k} {v}" for k, v in summary["versions"].items()), ""]
    return "\n".join(lines)


def _html(
    summary: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    sets: Sequence[str],
    metrics: Sequence[str],
    figures: Mapping[str, str],
    grids: Mapping[str, str],
) -> str:
    e = html.escape

    table = html_table

    def md_inline(text: str) -> str:
        out = e(text)
        while "**" in out:
            out = out.replace("**", "<strong>", 1).replace("**", "</strong>", 1)
        while "`" in out:
            out = out.replace("`", "<code>", 1).replace("`", "</code>", 1)
        return out

    inputs = summary["inputs"]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>gapeval score report</title><style>",
        CSS,
        "</style></head><body>",
        "<h1>gapeval score report</h1>",
        f"<p>Created {e(summary['created'])} · config <code>{e(summary['config_hash'])}</code></p><ul>",
        f"<li>predictions: {e(', '.join(f'{k} = {v}' for k, v in inputs['pred'].items()))}</li>",
        f"<li>targets: {e(inputs['target'])}</li><li>low-resolution inputs: {e(inputs['lr'] or 'not given')}</li></ul><ul>",
    ]
    for note in _notes(summary):
        cls = " class='warn'" if "not meaningful" in note else ""
        parts.append(f"<li{cls}>{md_inline(note)}</li>")
    parts += ["</ul><h2>Ranking (by mean LPIPS-Sat)</h2>"]
    for title, head, body in _summary_tables(summary, sets, metrics):
        parts += [f"<h3>{e(title)}</h3>", table(head, body)]
    for title, rel in figures.items():
        parts += [f"<h2>{e(title)}</h2>", f"<img src='{e(rel)}' alt='{e(title)}'>"]
    for name, rel in grids.items():
        parts += [f"<h2>Best and worst pairs: {e(name)}</h2>", f"<img src='{e(rel)}' alt='best and worst pairs of {e(name)}'>"]
    if summary["skipped"]:
        parts += (
            ["<h2>Skipped pairs</h2><ul>"]
            + [f"<li>{e(s['pred_set'])} / {e(s['key'])}: {e(s['reason'])}</li>" for s in summary["skipped"]]
            + ["</ul>"]
        )
    if summary["unpaired"]:
        parts += (
            ["<h2>Unpaired files</h2><ul>"]
            + [f"<li>{e(label)} ({len(keys)}): {e(', '.join(keys[:20]))}</li>" for label, keys in summary["unpaired"].items()]
            + ["</ul>"]
        )
    parts += ["<h2>All pairs</h2>", table(*_pair_table(rows, metrics))]
    parts += ["<h2>Versions</h2>", f"<p>{e(', '.join(f'{k} {v}' for k, v in summary['versions'].items()))}</p>", "</body></html>"]
    return "\n".join(parts)
