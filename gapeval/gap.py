"""Domain-gap statistics between scored conditions (model x training domain x test input), from the per-pair
results of ``gapeval score`` and the images themselves.

Data flow of :func:`gap_analysis`:

    runs (name -> results dir with pairs.csv)  ->  per-pair metric table per run (every numeric column)
    -> [images] SR and HR of each pair: LPIPS-Sat backbone features (GAP per tap, per tile), radially averaged PSD,
       high-frequency energy ratio, reflectance samples
    -> per comparison (A - B) and metric: matched scenes, paired bootstrap CI, Wilcoxon p, Holm over all tests,
       Cohen's d_z, rank-biserial r
    -> per run: Fréchet distance and KID of SR vs HR features, per-band Wasserstein-1 and KS distance, HF ratio
    -> gap.json, report.md/html with figures (forest plot, PSD curves, band histograms, ranking tables)

LR consistency: runs scored with ``gapeval score --lr`` carry the opensr-test style consistency columns
(``refl_l1``, ``spectral_sam_deg``, ``shift_px``, ``improvement``/``omission``/``hallucination``), or with
``--protocol opensr-test`` the ``opensr_*`` columns; their gaps are computed like every other metric column. Whatever
columns a run wrote are read; the corrections ``--align``/``--harmonize`` applied (``align_*``, ``harm_*``) are
bookkeeping, not metrics. Two runs scored with different ``--protocol``/``--align``/``--harmonize`` are not compared
unless ``allow_mixed`` (:func:`check_settings`).

Statistical notes: pairs are scenes, the unit of replication; pixels within an image are not independent, so the
pixel-level Wasserstein/KS values are descriptive distances (no p-values). FD and KID are computed on tiles (default
64 px) to have enough samples; with fewer samples than feature dimensions FD is biased upwards (compare FDs only
between runs with the same number of tiles) while KID is unbiased.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from gapeval.metrics import direction
from gapeval.stats import frechet_distance_features, holm, kernel_distance, paired_comparison, smallest_wilcoxon_p
from lpips_sat.atomic import make_folder, remove_stale_temporaries, write_text_atomic
from lpips_sat.cli import EXIT_USAGE
from lpips_sat.errors import InputError, MissingFileError
from lpips_sat.metric import MIN_SIZE
from lpips_sat.options import device, int_at_least, nonnegative_int, number, open_fraction, positive_float
from lpips_sat.raster import gdal_path

log = logging.getLogger(__name__)

PAIRS_FILE = "pairs.csv"
SUMMARY_FILE = "summary.json"
#: Columns tried, in order, as the scene key that matches rows of two runs.
KEY_COLUMNS = ("pair", "key", "name", "rel_path", "relpath", "relative_path", "scene", "stem", "id", "file")
#: Numeric columns that are bookkeeping, not quality metrics.
NON_METRIC = re.compile(r"(^|_)(path|sha256|sha1|sha|hash|md5|bytes|width|height|rows|cols|index|idx|seed|seconds|time|time_s|"
                        r"elapsed|valid_fraction|invalid_fraction|invalid_px|valid_frac|n_pixels|n_valid|count|band_count|n_bands|tiles|n_tiles|"
                        r"patches|lr_ratio|scale|ratio_px)$"
                        r"|^(align|harm)_")  # corrections score applied (--align/--harmonize), not quality
#: Per-band columns (``psnr_B04``) are only tested with ``per_band=True``.
PER_BAND = re.compile(r"_(B0[1-9]|B1[0-2]|B8A)$", re.IGNORECASE)
#: Per-pair metric that the image analysis adds to each run's table: log10 of the SR/HR high-frequency energy ratio
#: (0: as much fine detail as the target; < 0 over-smoothing; > 0 hallucinated texture or noise).
HF_METRIC = "log10_hf_ratio"
#: Column naming the prediction set in score's pairs.csv (one results folder can hold several sets).
SET_COLUMN = "pred_set"
#: Settings of ``gapeval score`` that change what its columns mean (``summary.json`` ``config`` key -> the value of runs
#: scored before the option existed); two runs compared must agree on them unless ``allow_mixed``.
SCORING_SETTINGS = {"protocol": "gapeval", "align": "none", "harmonize": "none"}


# ---------------------------------------------------------------------------------------------- reading runs
@dataclass
class Run:
    """One scored condition: the rows of its ``pairs.csv`` keyed by scene, numeric columns as arrays."""

    name: str
    directory: Path
    key_column: str
    keys: list[str]
    columns: dict[str, list[str]]
    numeric: dict[str, np.ndarray]
    summary: dict[str, Any] = field(default_factory=dict)

    def metrics(self, wanted: Sequence[str] | None = None, per_band: bool = False) -> list[str]:
        """Metric columns: ``wanted`` if given (must exist), else every numeric non-bookkeeping column."""
        if wanted:
            missing = [m for m in wanted if m not in self.numeric]
            if missing:
                raise InputError(f"run {self.name!r} ({self.directory / PAIRS_FILE}) has no numeric column(s) {missing}; it has {sorted(self.numeric)}")
            return list(wanted)
        return [c for c in self.numeric if not NON_METRIC.search(c.lower()) and (per_band or not PER_BAND.search(c))]

    def column(self, *names: str) -> list[str] | None:
        """The first of ``names`` present among the columns (raw strings), else ``None``."""
        for n in names:
            if n in self.columns:
                return self.columns[n]
        return None


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def split_spec(spec: str | Path) -> tuple[Path, str | None]:
    """``"results/dir#set"`` -> ``(Path("results/dir"), "set")``; without ``#``: ``(path, None)``."""
    text = str(spec)
    if "#" in text:
        folder, pred_set = text.rsplit("#", 1)
        return Path(folder), pred_set or None
    return Path(text), None


def read_run(name: str, directory: str | Path, pred_set: str | None = None) -> Run:
    """Read ``directory/pairs.csv`` (and ``summary.json`` if present) written by ``gapeval score``; ``directory`` may
    also name the table itself (a ``.csv`` file).

    A column is numeric when every non-empty cell parses as a float (``nan`` allowed); the scene key is the first of
    :data:`KEY_COLUMNS` present, else the first non-numeric column. When the table holds several prediction sets
    (column ``pred_set``), ``pred_set`` selects one (``DIR#SET`` on the command line). Rows whose ``status`` is not
    ``ok`` (pairs score skipped) keep their key but get NaN metrics.
    Raises:
        MissingFileError: no folder or no ``pairs.csv``. InputError: a file (not ``.csv``) where the folder should be,
            a folder where the table should be, empty table, no key column, duplicate keys, an ambiguous or unknown
            prediction set.
    """
    from gapeval.results import RESULTS_FOLDER, read_table, results_file

    if pred_set is None:
        directory, pred_set = split_spec(directory)
    spec = Path(directory)
    try:
        if spec.suffix.lower() == ".csv":  # the table itself
            if spec.is_dir():
                raise InputError(f"{spec}: is a folder, expected the {PAIRS_FILE} file of {RESULTS_FOLDER} (or that folder)")
            if not spec.exists():
                raise MissingFileError(f"{spec}: does not exist; expected the {PAIRS_FILE} file of {RESULTS_FOLDER}")
            directory, path = spec.parent, spec
        else:
            directory = spec
            path = results_file(spec, PAIRS_FILE, expected=f"{RESULTS_FOLDER} (or its {PAIRS_FILE})",
                                advice=f"run `gapeval score ... --out {spec}` first")
    except (MissingFileError, InputError) as exc:
        raise type(exc)(f"run {name!r}: {exc}") from exc

    fields, rows = read_table(path, advice=f"run {name!r} must name a results folder written by `gapeval score`")
    if not rows:
        raise InputError(f"run {name!r}: {path} has no scored pairs (empty table)")
    if SET_COLUMN in fields:
        sets = sorted({r[SET_COLUMN] for r in rows})
        if pred_set is None and len(sets) > 1:
            raise InputError(f"run {name!r}: {path} holds {len(sets)} prediction sets {sets}; choose one with {name}={directory}#SET")
        if pred_set is not None:
            if pred_set not in sets:
                raise InputError(f"run {name!r}: prediction set {pred_set!r} is not in {path} (it holds {sets})")
            rows = [r for r in rows if r[SET_COLUMN] == pred_set]
    elif pred_set is not None:
        raise InputError(f"run {name!r}: {path} has no {SET_COLUMN!r} column, so prediction set {pred_set!r} cannot be selected")
    columns = {c: [r.get(c) or "" for r in rows] for c in fields}
    numeric = {}
    for c, vals in columns.items():
        filled = [v for v in vals if v.strip()]
        if filled and all(_is_number(v) for v in filled):
            numeric[c] = np.array([float(v) if v.strip() else np.nan for v in vals])
    key_col = next((c for c in KEY_COLUMNS if c in columns), None) or next((c for c in fields if c not in numeric), None)
    if key_col is None:
        raise InputError(f"run {name!r}: {path} has no scene key column (expected one of {KEY_COLUMNS})")
    keys = columns[key_col]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise InputError(f"run {name!r}: {path} lists scene(s) {dup[:5]} more than once in column {key_col!r}")
    summary = {}
    if (directory / SUMMARY_FILE).exists():  # a folder there is warned about (unreadable), not taken as absent
        try:
            summary = json.loads((directory / SUMMARY_FILE).read_text(encoding="utf-8"))
            if not isinstance(summary, dict):
                raise ValueError(f"a JSON {type(summary).__name__}, not an object")
        except (ValueError, OSError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            log.warning("%s: unreadable (%s); ignored", directory / SUMMARY_FILE, exc)
            summary = {}
    numeric.pop(key_col, None)
    if "status" in columns:
        failed = np.array([v.strip().lower() not in ("", "ok") for v in columns["status"]])
        for arr in numeric.values():
            arr[failed] = np.nan
    return Run(name, directory, key_col, keys, columns, numeric, summary)


def match(a: Run, b: Run, *, allow_unmatched: bool = False) -> tuple[np.ndarray, np.ndarray, dict[str, list[str]]]:
    """Row indices of ``a`` and ``b`` for the scenes both hold (sorted by key), and the unmatched keys per side.

    Raises:
        InputError: unmatched scenes (unless ``allow_unmatched``), no scene in common, or matched scenes whose
            target files differ by hash (the runs were scored against different targets).
    """
    ia = {k: i for i, k in enumerate(a.keys)}
    ib = {k: i for i, k in enumerate(b.keys)}
    common = sorted(set(ia) & set(ib))
    unmatched = {f"only in {a.name}": sorted(set(ia) - set(ib)), f"only in {b.name}": sorted(set(ib) - set(ia))}
    unmatched = {k: v for k, v in unmatched.items() if v}
    if not common:
        raise InputError(f"runs {a.name!r} and {b.name!r} have no scene in common (e.g. {a.keys[:3]} vs {b.keys[:3]}); "
                         "were they scored on the same targets with the same file names?")
    if unmatched and not allow_unmatched:
        detail = "; ".join(f"{k} ({len(v)}): {', '.join(v[:5])}{' ...' if len(v) > 5 else ''}" for k, v in unmatched.items())
        raise InputError(f"runs {a.name!r} and {b.name!r} do not hold the same scenes: {detail}. "
                         "Gaps must be computed on matched scenes; pass --allow-unmatched to use only the common ones")
    idx_a, idx_b = np.array([ia[k] for k in common]), np.array([ib[k] for k in common])
    for col in _hash_columns(a, b):
        ha, hb = a.columns[col], b.columns[col]
        bad = [k for k, i, j in zip(common, idx_a, idx_b) if ha[i] and hb[j] and ha[i] != hb[j]]
        if bad:
            raise InputError(f"runs {a.name!r} and {b.name!r} were scored against different targets: column {col!r} differs for "
                             f"{len(bad)} scene(s), e.g. {bad[:3]}; a gap needs the same HR target per scene")
    return idx_a, idx_b, unmatched


def _hash_columns(a: Run, b: Run) -> list[str]:
    """Target-hash columns present in both runs (``target_sha256`` etc.)."""
    return [c for c in a.columns if c in b.columns and "target" in c.lower() and re.search(r"sha|hash|md5", c.lower())]


def scoring_settings(run: Run) -> dict[str, str] | None:
    """The :data:`SCORING_SETTINGS` a run was scored with, from its ``summary.json``; ``None`` without one."""
    config = run.summary.get("config") if run.summary else None
    if not isinstance(config, Mapping):
        return None
    return {k: str(config.get(k) or default) for k, default in SCORING_SETTINGS.items()}


def check_settings(runs: Mapping[str, Run], comparisons: Sequence[tuple[str, str, str]], *, allow_mixed: bool = False) -> list[str]:
    """Refuse comparisons whose two runs were scored with different protocol/alignment/harmonisation settings.

    A gap between such runs measures the settings as much as the models (aligned vs raw targets, or the two
    protocols' different columns). Returns one line per mixed comparison (and per run without ``summary.json``,
    whose settings cannot be checked) for the record.
    Raises:
        InputError: a mixed comparison without ``allow_mixed``.
    """
    lines, mixed = [], []
    unknown = sorted({n for _, a, b in comparisons for n in (a, b) if scoring_settings(runs[n]) is None})
    for n in unknown:
        lines.append(f"run {n!r}: no summary.json in {runs[n].directory}, so its --protocol/--align/--harmonize settings are not known")
    for label, a, b in comparisons:
        sa, sb = scoring_settings(runs[a]), scoring_settings(runs[b])
        if sa is None or sb is None:
            continue
        diff = [k for k in SCORING_SETTINGS if sa[k] != sb[k]]
        if diff:
            text = ", ".join(f"--{k} {sa[k]} vs {sb[k]}" for k in diff)
            mixed.append(f"comparison {label!r}: runs {a!r} and {b!r} were scored with different settings ({text})")
    if mixed and not allow_mixed:
        raise InputError("; ".join(mixed) + ". Their columns do not measure the same thing: score both runs with the same settings, "
                         "or pass --allow-mixed to compare them anyway")
    for line in lines + mixed:
        log.warning("%s", line)
    return lines + mixed


# ---------------------------------------------------------------------------------------------- configuration
@dataclass
class GapConfig:
    """Parameters of :func:`gap_analysis` (all recorded in ``gap.json``).

    Attributes:
        metrics: metric columns to test (default: every numeric metric column common to the runs).
        per_band: also test per-band columns such as ``psnr_B04``.
        allow_unmatched: compare on the scenes common to both runs instead of failing.
        allow_mixed: compare runs scored with different ``--protocol``/``--align``/``--harmonize`` (default: an error).
        confidence, n_resamples, seed: paired bootstrap CI (BCa, :func:`gapeval.stats.bootstrap_ci`).
        alpha: family-wise error rate for the Holm-adjusted Wilcoxon p-values (the family: every test in this analysis).
        images: analyse the images listed in ``pairs.csv`` (features, PSD, histograms); off: tables only.
        feature_tile: tile side (px) for backbone features; each full valid tile is one sample for FD/KID.
        kid_subset_size, kid_subsets: KID subsets (size capped at half the smaller set so subsets differ).
        hf_cutoff: spatial frequency (cycles per HR pixel) above which energy counts as high-frequency;
            0.125 = the Nyquist frequency of an x4 LR input.
        psd_bins: radial frequency bins over [0, 0.5] cycles/px.
        max_pixels: reflectance samples per run and band for histograms / Wasserstein / KS.
        pred_scale, target_scale: divide pixel values by these (default: from score's summary.json, else the files'
            own scale metadata); pred_bands, target_bands: band orders (preset or names), likewise.
        group_by: condition attribute that groups the ranking tables (e.g. ``input``).
    """

    metrics: list[str] | None = None
    per_band: bool = False
    allow_unmatched: bool = False
    allow_mixed: bool = False
    confidence: float = 0.95
    n_resamples: int = 2000
    seed: int = 0
    alpha: float = 0.05
    images: bool = True
    feature_tile: int = 64
    kid_subset_size: int = 1000
    kid_subsets: int = 100
    hf_cutoff: float = 0.125
    psd_bins: int = 32
    max_pixels: int = 200_000
    pred_scale: float | None = None
    target_scale: float | None = None
    pred_bands: str | None = None
    target_bands: str | None = None
    group_by: str | None = None


@dataclass
class Design:
    """Runs, their condition attributes, and the comparisons ``a - b`` to report."""

    runs: dict[str, Path]
    comparisons: list[tuple[str, str, str]]  # (label, a, b)
    conditions: dict[str, dict[str, str]] = field(default_factory=dict)


def parse_run_args(items: Sequence[str], flag: str = "--run") -> dict[str, str]:
    """``["name=dir", "name2=dir#set", ...]`` -> ``{name: "dir", name2: "dir#set"}``."""
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise InputError(f"{flag} {item!r}: expected NAME=FOLDER")
        name, folder = item.split("=", 1)
        name = name.strip()
        if not name or name in out:
            raise InputError(f"{flag} {item!r}: {'empty' if not name else 'duplicate'} run name")
        out[name] = folder
    return out


def parse_pairs(items: Sequence[str]) -> list[tuple[str, str, str]]:
    """``["A:B", ...]`` -> ``[("A - B", "A", "B"), ...]``."""
    out = []
    for item in items or []:
        if item.count(":") != 1:
            raise InputError(f"--pairs {item!r}: expected A:B (gap = A - B) with run names")
        a, b = (s.strip() for s in item.split(":"))
        out.append((f"{a} - {b}", a, b))
    return out


def load_design(path: str | Path) -> Design:
    """Read a design YAML::

        runs:                       # optional: name -> results folder (relative to this file), "#SET" picks a
          bicubic/synthetic: results/synthetic#bicubic     # prediction set of a folder scored with several
        conditions:                 # optional: attributes per run (ranking tables group by them)
          bicubic/synthetic: {model: bicubic, input: synthetic}
        comparisons:                # required: gap = a - b
          - {name: "bicubic: real - synthetic", a: bicubic/real, b: bicubic/synthetic}
    """
    import yaml

    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a design YAML file (runs, conditions, comparisons)")
    if not path.is_file():
        raise MissingFileError(f"{path}: design file does not exist")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(doc, dict):
        raise InputError(f"{path}: expected a mapping with 'comparisons' (and optional 'runs', 'conditions')")
    base = path.parent
    for key, kind in (("runs", dict), ("conditions", dict), ("comparisons", list)):
        if doc.get(key) is not None and not isinstance(doc[key], kind):
            raise InputError(f"{path}: '{key}' must be a {'mapping' if kind is dict else 'list'}, got {type(doc[key]).__name__} {doc[key]!r}")
    runs = {str(k): str(base / str(v)) for k, v in (doc.get("runs") or {}).items()}
    comps = []
    for i, c in enumerate(doc.get("comparisons") or []):
        if not isinstance(c, dict) or "a" not in c or "b" not in c:
            raise InputError(f"{path}: comparison #{i + 1} needs keys 'a' and 'b' (gap = a - b), got {c!r}")
        comps.append((str(c.get("name") or f"{c['a']} - {c['b']}"), str(c["a"]), str(c["b"])))
    if not comps:
        raise InputError(f"{path}: no comparisons; add e.g. comparisons: [{{a: model/real, b: model/synthetic}}]")
    bad = [k for k, v in (doc.get("conditions") or {}).items() if v is not None and not isinstance(v, dict)]
    if bad:
        raise InputError(f"{path}: conditions of {bad[0]!r} must be a mapping of attributes (e.g. {{model: bicubic, input: real}})")
    conditions = {str(k): {str(a): str(b) for a, b in (v or {}).items()} for k, v in (doc.get("conditions") or {}).items()}
    return Design(runs, comps, conditions)


# ---------------------------------------------------------------------------------------------- spectra
def radial_psd(image: np.ndarray, valid: np.ndarray | None = None, *, bins: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged power spectral density of a (C, H, W) image, averaged over bands.

    Per band: mean removed, 2-D Hann window, ``|FFT|^2 / sum(window^2)`` (so a white noise of variance s^2 has a flat
    PSD of s^2), averaged within rings of radial frequency ``sqrt(fx^2 + fy^2)`` in cycles/px over [0, 0.5].
    Invalid pixels are set to the band mean first. Returns ``(bin centres, psd)``; empty rings give NaN.
    """
    c, h, w = image.shape
    win = np.outer(np.hanning(h), np.hanning(w))
    fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
    r = np.hypot(fy, fx).ravel()
    edges = np.linspace(0.0, 0.5, bins + 1)
    which = np.digitize(r, edges) - 1
    inside = (which >= 0) & (which < bins)
    counts = np.bincount(which[inside], minlength=bins)
    total = np.zeros(bins)
    for b in range(c):
        band = image[b].astype(np.float64)
        ok = np.isfinite(band) & (valid if valid is not None else True)
        mean = band[ok].mean() if ok.any() else 0.0
        x = np.where(ok, band, mean) - mean
        power = np.abs(np.fft.fft2(x * win)) ** 2 / (win ** 2).sum()
        total += np.bincount(which[inside], weights=power.ravel()[inside], minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        psd = total / (c * counts)
    return (edges[:-1] + edges[1:]) / 2, np.where(counts > 0, psd, np.nan)


def high_frequency_energy(image: np.ndarray, valid: np.ndarray | None = None, *, cutoff: float = 0.125) -> float:
    """Mean (over bands) energy of the Hann-windowed, mean-removed image above ``cutoff`` cycles/px, per pixel."""
    c, h, w = image.shape
    win = np.outer(np.hanning(h), np.hanning(w))
    fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
    high = np.hypot(fy, fx) > cutoff
    energy = 0.0
    for b in range(c):
        band = image[b].astype(np.float64)
        ok = np.isfinite(band) & (valid if valid is not None else True)
        mean = band[ok].mean() if ok.any() else 0.0
        x = np.where(ok, band, mean) - mean
        energy += float((np.abs(np.fft.fft2(x * win)) ** 2)[high].sum() / (win ** 2).sum() / (h * w))
    return energy / c


# ---------------------------------------------------------------------------------------------- images
def _resolve_path(text: str, run: Run) -> Path:
    """A path cell of a run's pairs.csv as a file: absolute and remote paths (``/vsicurl/...``, or a URL, which
    becomes one) as they are, relative ones under the run's folder or the working folder."""
    p = Path(gdal_path(text))
    if p.is_absolute():
        return p
    for base in (run.directory, Path.cwd()):
        if (base / p).exists():
            return base / p
    return run.directory / p


def _summary_value(run: Run, *names: str) -> Any:
    """First of ``names`` in score's summary.json (top level or under ``config``/``args``)."""
    for scope in (run.summary, run.summary.get("config") or {}, run.summary.get("args") or {}):
        if isinstance(scope, dict):
            for n in names:
                if scope.get(n) is not None:
                    return scope[n]
    return None


def load_reflectance(path: Path, *, bands: str | Sequence[str] | None, scale: float | None, wanted: Sequence[str], flag: str) -> tuple[np.ndarray, np.ndarray]:
    """Read ``path`` as reflectance in the ``wanted`` band order (NaN where invalid) with gapeval's shared readers."""
    from gapeval.grids import grid_of
    from gapeval.reflectance import check_reflectance, was_scaled
    from gapeval.sources import RasterSource
    from lpips_sat.bands import select_bands
    from lpips_sat.raster import band_gain_offset, raster_info

    info = raster_info(path)
    idx = select_bands(info, bands, wanted, flag.replace("scale", "bands"))
    gain, offset = band_gain_offset(info, idx, scale)
    with RasterSource(info, grid_of(info), idx, gain, offset) as src:
        data, valid = src.read()
    check_reflectance(data, valid, path, flag, scaled=was_scaled(scale, gain, offset))
    return data, valid


def tile_features(metric: Any, image: np.ndarray, valid: np.ndarray, tile: int, batch: int = 32) -> np.ndarray:
    """Global-average-pooled, channel-normalised LPIPS-Sat tap features of every fully valid ``tile`` x ``tile``
    tile of a (C, H, W) reflectance image, concatenated over taps: (n_tiles, sum of tap channels)."""
    import torch

    h, w = image.shape[1:]
    tiles = [image[:, r:r + tile, c:c + tile] for r in range(0, h - tile + 1, tile) for c in range(0, w - tile + 1, tile)
             if valid[r:r + tile, c:c + tile].all()]
    if not tiles:
        return np.zeros((0, sum(metric.backbone.channels)), np.float32)
    device = next(metric.parameters()).device
    out = []
    with torch.no_grad():
        for i in range(0, len(tiles), batch):
            x = torch.from_numpy(np.stack(tiles[i:i + batch])).float().to(device)
            feats = metric.features(x, name="tile")
            out.append(torch.cat([f.mean(dim=(2, 3)) for f in feats], dim=1).cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def _file_token(path: Path, extra: str) -> str:
    """Cache key of a file's features: path, size and modification time (for a remote file: its path alone)."""
    from lpips_sat.raster import is_virtual

    if is_virtual(path):
        return hashlib.sha1(f"{path}|{extra}".encode()).hexdigest()[:20]
    st = path.stat()
    return hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{extra}".encode()).hexdigest()[:20]


@dataclass
class ImageStats:
    """Everything the image analysis keeps per run (and for the HR targets)."""

    features: list[np.ndarray] = field(default_factory=list)
    psd: list[np.ndarray] = field(default_factory=list)
    samples: list[np.ndarray] = field(default_factory=list)  # (C, k) reflectance samples per image
    hf_ratio: dict[int, float] = field(default_factory=dict)  # row index -> SR/HR high-frequency energy ratio
    skipped: list[str] = field(default_factory=list)


def _sample_pixels(image: np.ndarray, valid: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    vals = image[:, valid]
    if vals.shape[1] > k:
        vals = vals[:, rng.choice(vals.shape[1], k, replace=False)]
    return vals


def analyse_images(runs: Mapping[str, Run], config: GapConfig, *, metric: Any, cache_dir: Path | None,
                   progress: bool = False) -> tuple[dict[str, ImageStats], ImageStats]:
    """SR statistics per run and HR statistics (each target once) from the files listed in the runs' tables;
    ``progress`` shows a tqdm bar (stderr) over the images."""
    from tqdm import tqdm

    bar = tqdm(total=sum(len(r.keys) for r in runs.values()), unit="image", desc="gapeval gap: images", disable=not progress)
    try:
        return _analyse_images(runs, config, metric, cache_dir, bar)
    finally:
        bar.close()


def _analyse_images(runs: Mapping[str, Run], config: GapConfig, metric: Any, cache_dir: Path | None, bar: Any) -> tuple[dict[str, ImageStats], ImageStats]:
    wanted = tuple(metric.bands)
    rng = np.random.default_rng(config.seed)
    hr_stats, hr_done = ImageStats(), {}
    per_run: dict[str, ImageStats] = {}
    k = max(1, config.max_pixels // max(1, max(len(r.keys) for r in runs.values())))
    tag = f"{metric.name}|{config.feature_tile}|{','.join(map(str, wanted))}"
    for name, run in runs.items():
        stats_ = per_run[name] = ImageStats()
        preds, targets = run.column("pred_path", "pred", "sr_path"), run.column("target_path", "target", "hr_path")
        if preds is None or targets is None:
            stats_.skipped.append(f"{run.directory / PAIRS_FILE} has no pred_path/target_path columns")
            bar.update(len(run.keys))
            continue
        pscale = config.pred_scale if config.pred_scale is not None else _summary_value(run, "pred_scale")
        tscale = config.target_scale if config.target_scale is not None else _summary_value(run, "target_scale")
        pbands = config.pred_bands or _summary_value(run, "pred_bands")
        tbands = config.target_bands or _summary_value(run, "target_bands")
        for i, (key, ptext, ttext) in enumerate(zip(run.keys, preds, targets)):
            bar.update(1)
            ppath, tpath = _resolve_path(ptext, run), _resolve_path(ttext, run)
            try:
                sr, sv = load_reflectance(ppath, bands=pbands, scale=pscale, wanted=wanted, flag="--pred-scale")
                hr, hv = load_reflectance(tpath, bands=tbands, scale=tscale, wanted=wanted, flag="--target-scale")
            except MissingFileError as exc:
                raise MissingFileError(f"run {name!r}, scene {key!r}: {exc} (paths from {run.directory / PAIRS_FILE}); "
                                       "pass --no-images to compare the tables only") from exc
            if sr.shape != hr.shape:
                stats_.skipped.append(f"{key}: SR {sr.shape[1:]} and HR {hr.shape[1:]} differ in size")
                continue
            valid = sv & hv
            stats_.psd.append(radial_psd(sr, valid, bins=config.psd_bins)[1])
            hf_hr = high_frequency_energy(hr, valid, cutoff=config.hf_cutoff)
            hf_sr = high_frequency_energy(sr, valid, cutoff=config.hf_cutoff)
            stats_.hf_ratio[i] = hf_sr / hf_hr if hf_hr > 0 else float("nan")
            # the SR tiles used depend on the target's validity too, so the target is part of the cache key
            stats_.features.append(_cached_features(metric, sr, valid, ppath, f"{tag}|{_file_token(tpath, '')}", config, cache_dir))
            stats_.samples.append(_sample_pixels(sr, valid, k, rng))
            tkey = str(tpath.resolve())
            if tkey not in hr_done:
                hr_done[tkey] = True
                hr_stats.psd.append(radial_psd(hr, hv, bins=config.psd_bins)[1])
                hr_stats.features.append(_cached_features(metric, hr, hv, tpath, tag, config, cache_dir))
                hr_stats.samples.append(_sample_pixels(hr, hv, k, rng))
        log.info("run %s: %d images analysed (%d skipped)", name, len(stats_.psd), len(stats_.skipped))
    return per_run, hr_stats


def _cached_features(metric: Any, image: np.ndarray, valid: np.ndarray, path: Path, tag: str, config: GapConfig, cache_dir: Path | None) -> np.ndarray:
    if cache_dir is None:
        return tile_features(metric, image, valid, config.feature_tile)
    file = cache_dir / f"{_file_token(path, tag)}.npy"
    if file.is_file():
        try:
            return np.load(file)
        except (ValueError, OSError):
            pass
    feats = tile_features(metric, image, valid, config.feature_tile)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(".tmp.npy")
    np.save(tmp, feats)
    tmp.replace(file)
    return feats


def distribution_distances(sr: ImageStats, hr: ImageStats, config: GapConfig, bands: Sequence[str]) -> dict[str, Any]:
    """FD and KID (features), per-band Wasserstein-1 and KS statistic (reflectance), mean PSD and HF ratio."""
    from scipy import stats as sps

    out: dict[str, Any] = {}
    fx = np.concatenate(sr.features) if sr.features else np.zeros((0, 1))
    fy = np.concatenate(hr.features) if hr.features else np.zeros((0, 1))
    out["n_tiles_sr"], out["n_tiles_hr"], out["feature_dim"] = int(len(fx)), int(len(fy)), int(fx.shape[1])
    if len(fx) >= 2 and len(fy) >= 2:
        out["fd"] = frechet_distance_features(fx, fy)
        size = min(config.kid_subset_size, max(2, min(len(fx), len(fy)) // 2))
        out["kid"], out["kid_std"] = kernel_distance(fx, fy, subset_size=size, n_subsets=config.kid_subsets, seed=config.seed)
        out["kid_subset_size"] = size
    else:
        out["fd"] = out["kid"] = out["kid_std"] = float("nan")
        out["note"] = f"too few feature tiles ({len(fx)} SR, {len(fy)} HR) of {config.feature_tile} px for FD/KID"
    if sr.samples and hr.samples:
        xs, ys = np.concatenate(sr.samples, axis=1), np.concatenate(hr.samples, axis=1)
        out["bands"] = {}
        for b, band in enumerate(bands):
            ks = sps.ks_2samp(xs[b], ys[b], method="asymp")
            out["bands"][band] = {"wasserstein": float(sps.wasserstein_distance(xs[b], ys[b])), "ks": float(ks.statistic),
                                  "mean_sr": float(xs[b].mean()), "mean_hr": float(ys[b].mean())}
    if sr.psd:
        out["psd"] = np.nanmean(np.stack(sr.psd), axis=0).tolist()
    ratios = np.array(list(sr.hf_ratio.values()), float)
    if ratios.size:
        out["hf_ratio_mean"] = float(np.nanmean(ratios))
        out["hf_ratio_median"] = float(np.nanmedian(ratios))
    return out


# ---------------------------------------------------------------------------------------------- the analysis
def compare(a: Run, b: Run, metrics: Sequence[str], config: GapConfig) -> dict[str, Any]:
    """Per-metric paired statistics of ``a - b`` over the scenes both runs hold."""
    ia, ib, unmatched = match(a, b, allow_unmatched=config.allow_unmatched)
    result: dict[str, Any] = {"a": a.name, "b": b.name, "n_matched": int(ia.size), "unmatched": unmatched, "metrics": {}}
    for m in metrics:
        va, vb = a.numeric[m][ia], b.numeric[m][ib]
        ok = np.isfinite(va) & np.isfinite(vb)
        if ok.sum() < 2:
            result["metrics"][m] = {"n": int(ok.sum()), "note": "fewer than 2 scenes with finite values in both runs"}
            continue
        stats_ = paired_comparison(va, vb, confidence=config.confidence, n_resamples=config.n_resamples, seed=config.seed)
        stats_["direction"] = direction(m)
        result["metrics"][m] = stats_
    return result


def _add_image_metrics(run: Run, st: ImageStats) -> None:
    n = len(run.keys)
    if st.hf_ratio:
        col = np.full(n, np.nan)
        for i, r in st.hf_ratio.items():
            col[i] = math.log10(r) if r > 0 and np.isfinite(r) else np.nan
        run.numeric[HF_METRIC] = col


def rankings(runs: Mapping[str, Run], metrics: Sequence[str], conditions: Mapping[str, Mapping[str, str]], group_by: str | None) -> list[dict[str, Any]]:
    """Per group of runs (by condition attribute ``group_by``), each run's mean per metric and its rank (1 = best)."""
    groups: dict[str, list[str]] = {}
    for name in runs:
        g = conditions.get(name, {}).get(group_by, "all") if group_by else "all"
        groups.setdefault(g, []).append(name)
    tables = []
    for g, names in groups.items():
        rows = []
        for name in names:
            row = {"run": name, **{k: v for k, v in conditions.get(name, {}).items()}, "n": len(runs[name].keys)}
            for m in metrics:
                vals = runs[name].numeric.get(m)
                row[m] = float(np.nanmean(vals)) if vals is not None and np.isfinite(vals).any() else float("nan")
            rows.append(row)
        ranks: dict[str, dict[str, int]] = {}
        for m in metrics:
            d = direction(m)
            if d is None:
                continue
            vals = [(r[m], r["run"]) for r in rows if np.isfinite(r[m])]
            vals.sort(reverse=(d == "higher"))
            ranks[m] = {run: i + 1 for i, (_, run) in enumerate(vals)}
        for r in rows:
            r["ranks"] = {m: ranks[m].get(r["run"]) for m in ranks}
        tables.append({"group": g, "group_by": group_by, "rows": rows})
    return tables


def gap_analysis(design: Design, out: str | Path, config: GapConfig | None = None, *, metric: Any = None, report: bool = True,
                 progress: bool = False) -> dict[str, Any]:
    """Run the whole analysis and write ``gap.json`` (+ report files) into ``out``; returns the JSON content.

    Args:
        design: runs (name -> results folder), comparisons (label, a, b), optional conditions and LR folders.
        metric: an :class:`lpips_sat.LPIPSSat` for the feature space (default: the shipped ``LPIPSSat()``);
            only needed when ``config.images``.
        progress: a progress bar (stderr) over the images analysed.
    Raises:
        InputError / MissingFileError: see :func:`read_run` and :func:`match`; unknown run names in comparisons;
            runs without a common metric.
    """
    config = config or GapConfig()
    out = Path(out)
    remove_stale_temporaries(out)
    if not design.runs:
        raise InputError("No runs given; pass --run NAME=RESULTS_DIR (or 'runs:' in the design file)")
    for label, a, b in design.comparisons:
        for n in (a, b):
            if n not in design.runs:
                raise InputError(f"comparison {label!r} names run {n!r}, which is not among the runs {sorted(design.runs)}")
        if a == b:
            raise InputError(f"comparison {label!r} compares run {a!r} with itself")
    runs = {name: read_run(name, d) for name, d in design.runs.items()}
    settings_notes = check_settings(runs, design.comparisons, allow_mixed=config.allow_mixed)
    common = set.intersection(*(set(r.metrics(config.metrics, config.per_band)) for r in runs.values()))
    if not common:
        listing = "; ".join(f"{r.name}: {r.metrics(None, config.per_band)}" for r in runs.values())
        raise InputError(f"The runs share no metric column, so they cannot be compared ({listing})")
    metrics = [m for m in next(iter(runs.values())).metrics(config.metrics, config.per_band) if m in common]

    distances: dict[str, Any] = {}
    samples: dict[str, Any] | None = None
    hr_psd = None
    freqs = ((np.arange(config.psd_bins) + 0.5) * 0.5 / config.psd_bins).tolist()
    skipped: dict[str, list[str]] = {}
    if config.images:
        if metric is None:
            from gapeval.scoring.weights import load_metric

            metric = load_metric(None)[0]
        per_run, hr_stats = analyse_images(runs, config, metric=metric, cache_dir=out / "cache" / "features", progress=progress)
        for name, st in per_run.items():
            _add_image_metrics(runs[name], st)
            distances[name] = distribution_distances(st, hr_stats, config, [str(b) for b in metric.bands])
            if st.skipped:
                skipped[name] = st.skipped
        if hr_stats.psd:
            hr_psd = np.nanmean(np.stack(hr_stats.psd), axis=0).tolist()
        if hr_stats.samples:
            samples = {"hr": np.concatenate(hr_stats.samples, axis=1), "bands": [str(b) for b in metric.bands],
                       "runs": {n: np.concatenate(st.samples, axis=1) for n, st in per_run.items() if st.samples}}
        if all(HF_METRIC in r.numeric for r in runs.values()) and HF_METRIC not in metrics:
            metrics.append(HF_METRIC)

    comparisons = []
    for label, a, b in design.comparisons:
        res = compare(runs[a], runs[b], metrics, config)
        res["name"] = label
        comparisons.append(res)
    flat = [(c, m) for c in comparisons for m, s in c["metrics"].items() if "p_value" in s]
    adjusted = holm(np.array([c["metrics"][m]["p_value"] for c, m in flat])) if flat else []
    for (c, m), p in zip(flat, adjusted):
        s = c["metrics"][m]
        s["p_holm"] = float(p)
        s["significant"] = bool(np.isfinite(p) and p < config.alpha)
        s["ci_excludes_zero"] = bool(np.isfinite(s["ci_low"]) and (s["ci_low"] > 0 or s["ci_high"] < 0))
        s["min_p"] = smallest_wilcoxon_p(int(s["n"]))  # the scene count bounds the power (zero differences are data)
        s["underpowered"] = bool(s["min_p"] * len(flat) >= config.alpha)

    result = {
        "tool": "gapeval gap",
        "config": asdict(config),
        "metric": {"name": getattr(metric, "name", None), "sha256": getattr(metric, "sha256", None), "bands": [str(b) for b in getattr(metric, "bands", ())]} if config.images else None,
        "runs": {n: {"dir": str(r.directory), "n_pairs": len(r.keys), "key_column": r.key_column, "conditions": design.conditions.get(n, {}),
                     "scoring": scoring_settings(r)} for n, r in runs.items()},
        "metrics": metrics,
        "n_tests": len(flat),
        "comparisons": comparisons,
        "distribution": distances,
        "psd": {"freq": freqs, "hr": hr_psd, "runs": {n: d.get("psd") for n, d in distances.items()}} if config.images else None,
        "rankings": rankings(runs, metrics, design.conditions, config.group_by),
        "skipped": skipped,
    }
    result["notes"] = settings_notes + power_notes(comparisons, len(flat), config.alpha)
    from gapeval.results import jsonable  # NaN -> null (strict JSON), numpy scalars -> Python

    make_folder(out, "--out")
    write_text_atomic(out / "gap.json", json.dumps(jsonable(result), indent=2, allow_nan=False) + "\n")
    if report:
        from gapeval.plots import write_gap_report

        write_gap_report(result, out, samples)
    return result


def scenes_needed(n_tests: int, alpha: float) -> int:
    """Fewest non-zero scene differences for which the exact two-sided Wilcoxon test can pass Holm's first threshold
    ``alpha / n_tests`` (smallest p ``2 / 2**n``, see :func:`gapeval.stats.smallest_wilcoxon_p`)."""
    return int(math.floor(math.log2(2.0 * max(1, n_tests) / alpha))) + 1


def power_notes(comparisons: Sequence[Mapping[str, Any]], n_tests: int, alpha: float) -> list[str]:
    """Plain-language notes on Holm and small samples for the CLI and the report (empty when nothing to say).

    Flags comparisons whose scene count makes Holm significance unreachable (``underpowered``) and explains a CI that
    excludes 0 next to "n.s.": the CI is one metric's unadjusted interval, Holm controls the error over every test.
    """
    tested = [(c, m, s) for c in comparisons for m, s in c["metrics"].items() if "p_holm" in s]
    if not tested:
        return []
    notes = [] if n_tests < 2 else [f"Holm: the {n_tests} Wilcoxon tests (every metric of every comparison) share a family-wise error rate of {alpha:g}, "
             f"so the smallest p-value must be below {alpha / n_tests:.2g} before any test counts as significant."]
    weak = [(c, m, s) for c, m, s in tested if s.get("underpowered")]
    if weak:
        names = sorted({c["name"] for c, _, _ in weak})
        n_max = max(int(s["n"]) for _, _, s in weak)
        notes.append(f"Underpowered: with n scenes the exact two-sided Wilcoxon test cannot give p below 2/2^n "
                     f"({n_max} scenes: {smallest_wilcoxon_p(n_max):.3g}), so {len(weak)} of {len(tested)} tests "
                     f"({', '.join(names)}) cannot be significant whatever the data; {scenes_needed(n_tests, alpha)} or more "
                     "scenes are needed at this number of tests (or test fewer metrics with --metrics).")
    mixed = [1 for _, _, s in tested if s.get("ci_excludes_zero") and not s.get("significant")]
    if mixed:
        notes.append(f"{len(mixed)} test(s) show a 95 % CI that excludes 0 but are n.s.: the bootstrap CI is for one metric alone, not "
                     "adjusted for the other tests, and with few scenes it is too narrow; read these as a consistent direction in "
                     "this sample, not an established gap.")
    return notes


# ---------------------------------------------------------------------------------------------- command line
def add_arguments(parser) -> None:
    """``gapeval gap`` arguments."""
    parser.add_argument("--run", action="append", default=[], metavar="NAME=DIR[#SET]",
                        help="a scored condition: name and its `gapeval score` results folder, #SET picks a prediction set (repeat)")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--design", help="YAML design: runs, conditions, comparisons (see docs/gap.md)")
    how.add_argument("--pairs", nargs="+", metavar="A:B",
                     help="comparisons as run names, gap = A - B (default with exactly two --run: first - second)")
    parser.add_argument("--out", required=True, help="output folder for gap.json and the report")
    parser.add_argument("--metrics", help="comma-separated metric columns (default: every numeric metric column)")
    parser.add_argument("--per-band", action="store_true", help="also test per-band columns such as psnr_B04")
    parser.add_argument("--allow-unmatched", action="store_true", help="compare on the scenes common to both runs")
    parser.add_argument("--allow-mixed", action="store_true",
                        help="compare runs scored with different --protocol/--align/--harmonize settings (default: an error)")
    parser.add_argument("--no-images", action="store_true", help="only the tables: no features, spectra or histograms")
    parser.add_argument("--weights", help="LPIPS-Sat weights for the feature space: registry name or .safetensors (default: the shipped "
                        "weights; 'random-tiny' = a random network for tests)")
    parser.add_argument("--device", type=device, default="cpu", help="torch device for features: cpu, cuda, auto (default cpu)")
    parser.add_argument("--pred-scale", type=positive_float, help="divide SR pixel values by this (default: from score's summary.json)")
    parser.add_argument("--target-scale", type=positive_float, help="divide HR pixel values by this (default: from score's summary.json)")
    parser.add_argument("--pred-bands", help="band order of the SR files (preset or names)")
    parser.add_argument("--target-bands", help="band order of the HR files (preset or names)")
    parser.add_argument("--feature-tile", type=int_at_least(MIN_SIZE), default=64, help="tile side in px for FD/KID features (default 64)")
    parser.add_argument("--hf-cutoff", type=number(float, 0, 0.5, lo_open=True), default=0.125, help="high-frequency cutoff in cycles per HR pixel (default 0.125 = x4 LR Nyquist)")
    parser.add_argument("--group-by", help="condition attribute that groups the ranking tables (e.g. input)")
    parser.add_argument("--n-resamples", type=int_at_least(100), default=2000, help="bootstrap resamples (default 2000)")
    parser.add_argument("--alpha", type=open_fraction, default=0.05, help="family-wise error rate for Holm (default 0.05)")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="seed of bootstrap, KID subsets and pixel samples")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar of the image analysis")


def run(args) -> int:
    """``gapeval gap``: compare scored conditions and write gap.json + report."""
    runs = parse_run_args(args.run)
    if args.design:
        design = load_design(args.design)
        design.runs = {**design.runs, **runs}
    elif args.pairs:
        design = Design(runs, parse_pairs(args.pairs))
    elif len(runs) == 2:
        a, b = runs
        design = Design(runs, [(f"{a} - {b}", a, b)])
    else:
        print(f"gapeval gap: error: {len(runs)} run(s) given: pass --pairs A:B (or --design FILE), or exactly two --run "
              "(the gap is then first - second)", file=sys.stderr)
        return EXIT_USAGE
    config = GapConfig(metrics=[m.strip() for m in args.metrics.split(",")] if args.metrics else None, per_band=args.per_band,
                       allow_unmatched=args.allow_unmatched, allow_mixed=args.allow_mixed, images=not args.no_images, pred_scale=args.pred_scale,
                       target_scale=args.target_scale, pred_bands=args.pred_bands, target_bands=args.target_bands, feature_tile=args.feature_tile, hf_cutoff=args.hf_cutoff, group_by=args.group_by,
                       n_resamples=args.n_resamples, alpha=args.alpha, seed=args.seed)
    metric = None
    if config.images:
        from gapeval.scoring.weights import load_metric

        metric = load_metric(args.weights, args.device)[0]
    result = gap_analysis(design, args.out, config, metric=metric, progress=not args.no_progress)
    for comp in result["comparisons"]:
        print(f"{comp['name']}  (n = {comp['n_matched']} matched scenes)")
        for m, s in comp["metrics"].items():
            if "gap" in s:
                flag = "significant" if s["significant"] else "n.s. (underpowered)" if s.get("underpowered") else "n.s."
                print(f"  {m:24s} gap {s['gap']:+.4g}  95% CI [{s['ci_low']:+.4g}, {s['ci_high']:+.4g}]  p_holm {s['p_holm']:.3g}  {flag}")
    for name, d in result["distribution"].items():
        print(f"{name}: FD {d.get('fd', float('nan')):.4g}  KID {d.get('kid', float('nan')):.4g} ± {d.get('kid_std', float('nan')):.2g}  "
              f"HF ratio {d.get('hf_ratio_mean', float('nan')):.3g}")
    for note in result["notes"]:
        print(f"note: {note}")
    if metric is not None and str(metric.name).startswith("random"):
        print(f"note: weights {metric.name!r} are a random network for testing; FD and KID values are not meaningful")
    print(f"gapeval gap: wrote {Path(args.out) / 'gap.json'} and the report")
    return 0
