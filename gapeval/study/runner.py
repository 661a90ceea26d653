"""The study's stages, each cached: pairs -> view -> train (model x domain) -> infer (run x sample) -> score -> gap -> report.

A stage is finished when its folder holds ``stage.json`` with the stage's hash (its settings plus the hashes of the
stages it reads), written atomically after the outputs; a rerun skips finished stages and redoes the others (a stage
whose settings changed is cleared first). Inside a stage the work resumes too: training from its last saved state,
inference from finished files and tiles, scoring from the rows already in ``pairs.csv``.

Runs are named ``MODEL/DOMAIN/INPUT``: the model, its training domain (``pretrained`` for checkpoint models) and the
test input. Per run, ``sampling.samples`` samples are drawn (sample ``k`` with seed ``1000 * sampling.seed + k``, the
same for every run, so paired comparisons share their noise); each sample is scored, and a scene's metric is the mean
over its samples. ``sample_std`` is the per-pixel standard deviation over the samples (ddof 1), averaged over pixels
and bands. Default comparisons (all Holm-corrected together in one ``gapeval gap`` analysis):

- synthetic-to-real gap: ``M/D/real - M/D/synthetic`` for every model M and training domain D;
- training-domain gap: ``M/real/real - M/synthetic/real`` for every trained model M;
- plus the config's ``comparisons``.

A separate control analysis compares, per run, the mean over the first half of the samples with the second half
(``gap_control/``): a model against itself, which should show no gap.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from lpips_sat.atomic import make_folder, write_text_atomic
from gapeval.study.config import BANDS, PRETRAINED, REFERENCES, ModelSpec, StudyConfig, stage_hash
from gapeval.study.data import make_view, tiles
from lpips_sat.errors import InputError

log = logging.getLogger(__name__)

STAMP = "stage.json"
#: ``--stop-after`` values, in stage order.
STOPS = ("data", "train", "infer", "score", "gap")
Hook = Callable[[str, int], None]


# ---------------------------------------------------------------------------------------------- bookkeeping
class Progress:
    """Per-stage progress lines with elapsed time and ETA (linear in finished units); ``hook(stage, done)`` after each."""

    def __init__(self, stream: TextIO | None = None, hook: Hook | None = None, interval: float = 10.0) -> None:
        self.stream, self.hook, self.interval = stream or sys.stderr, hook, interval
        self.label, self.total, self.unit, self.t0, self.last, self.first = "", 0, "", 0.0, 0.0, 0

    def say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def start(self, label: str, total: int, unit: str, already: int = 0) -> None:
        self.label, self.total, self.unit, self.first = label, total, unit, already
        self.t0 = self.last = time.time()
        self.say(f"[{label}] start: {total} {unit}" + (f" ({already} done earlier)" if already else ""))

    def update(self, done: int, note: str = "") -> None:
        now = time.time()
        if now - self.last >= self.interval or done >= self.total:
            self.last = now
            el = now - self.t0
            rate = el / max(1, done - self.first)
            eta = rate * max(0, self.total - done)
            self.say(f"[{self.label}] {done}/{self.total} {self.unit}{'  ' + note if note else ''}  | {_dur(el)} elapsed, ETA {_dur(eta)}")
        if self.hook:
            self.hook(self.label, done)

    def cached(self, label: str) -> None:
        self.say(f"[{label}] finished earlier (cached)")


def _dur(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def is_done(folder: Path, h: str) -> bool:
    stamp = folder / STAMP
    if not stamp.is_file():
        return False
    try:
        return json.loads(stamp.read_text()).get("hash") == h
    except json.JSONDecodeError:
        return False


def prepare(folder: Path, h: str, keep_partial: bool = True) -> None:
    """Clear ``folder`` unless it holds an unfinished stage of these settings (kept to resume, with ``keep_partial``);
    record the settings being worked on in ``pending.json``."""
    pending = folder / "pending.json"
    same = pending.is_file() and json.loads(pending.read_text() or "{}").get("hash") == h
    if folder.exists() and ((folder / STAMP).is_file() or not keep_partial or not same):
        log.info("%s: other settings or nothing to resume; recomputing", folder)
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(pending, json.dumps({"hash": h}))


def mark(folder: Path, h: str, info: dict[str, Any] | None = None) -> None:
    write_text_atomic(folder / STAMP, json.dumps({"hash": h, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(info or {})}, indent=1))


# ---------------------------------------------------------------------------------------------- the study
class Study:
    """One study run into ``out`` (see the module docstring)."""

    def __init__(self, cfg: StudyConfig, out: str | Path, *, stream: TextIO | None = None, hook: Hook | None = None) -> None:
        self.cfg, self.out = cfg, Path(out)
        self.progress = Progress(stream, hook)
        self._metric: Any = None
        self.hashes: dict[str, str] = {}

    # -- shared pieces ----------------------------------------------------------------------------
    @property
    def metric(self) -> Any:
        if self._metric is None:
            from gapeval.scoring.weights import load_metric

            self._metric = load_metric(self.cfg.metrics["weights"], self.device("metrics"))
        return self._metric[0]

    @property
    def metric_sha(self) -> str:
        self.metric  # noqa: B018 - loads it
        return str(self._metric[2])

    @property
    def view(self) -> Path:
        return self.out / "data"

    def lr_folders(self) -> list[str]:
        return sorted(set(self.cfg.domains.values()) | set(self.cfg.inputs.values()))

    def run(self, stop_after: str | None = None, shard: tuple[int, int] = (0, 1)) -> dict[str, Any]:
        """Every stage in order (up to ``stop_after``); returns the report's tables (also written to ``tables.json``).

        ``shard = (k, n)``: this process runs the train and infer stages ``i`` with ``i % n == k`` only (several GPUs:
        one process per GPU, e.g. under torchrun); the pair set must exist and ``stop_after`` must be ``train`` or
        ``infer``. A later unsharded run does the rest from the cache.
        """
        k, n = shard
        if stop_after is not None and stop_after not in STOPS:
            raise InputError(f"--stop-after must be one of {STOPS}, got {stop_after!r}")
        if n > 1 and stop_after not in ("train", "infer"):
            raise InputError("--shard splits the train and infer stages only: add --stop-after train or --stop-after infer, then run once "
                             "without --shard for score, gap and report")
        make_folder(self.out, "--out")
        if k == 0:
            write_text_atomic(self.out / "study.json", json.dumps({"config": str(self.cfg.path), "smoke": self.cfg.smoke, "raw": self.cfg.raw},
                                                                  indent=1, default=str))
        t0 = time.time()
        self.stage_pairs(shared=n > 1)
        self.stage_view(shared=n > 1)
        if stop_after == "data":
            return {}
        ckpts, units = {}, []
        for m in self.cfg.models:
            for d in (self.cfg.domains if m.trained else [PRETRAINED]):
                if m.trained:
                    units.append((m, d))
                ckpts[(m.label, d)] = m.checkpoint
        for i, (m, d) in enumerate(units):
            ckpts[(m.label, d)] = self.stage_train(m, d, run=i % n == k)
        if stop_after == "train":
            return {}
        runs = [(m, d, i) for m in self.cfg.models for d in (self.cfg.domains if m.trained else [PRETRAINED]) for i in self.cfg.inputs]
        for j, (m, d, i) in enumerate(runs):
            if j % n == k:
                self.stage_infer(m, d, i, ckpts[(m.label, d)])
        if stop_after == "infer":
            return {}
        for name in self.cfg.run_names():
            self.stage_score(name)
        if stop_after == "score":
            return {}
        self.stage_gap()
        if stop_after == "gap":
            return {}
        tables = self.stage_report()
        self.progress.say(f"study {self.cfg.name}: finished in {_dur(time.time() - t0)}; report: {self.out / 'report.html'}")
        return tables

    def device(self, key: str) -> str:
        """``train.device`` / ``metrics.device``; ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun/accelerate."""
        dev = str((self.cfg.train if key == "train" else self.cfg.metrics)["device"])
        return f"cuda:{os.environ['LOCAL_RANK']}" if dev == "cuda" and "LOCAL_RANK" in os.environ else dev

    # -- data -------------------------------------------------------------------------------------
    def pairs_root(self) -> Path:
        return self.cfg.data["pairs"] if "pairs" in self.cfg.data else self.out / "pairs"

    def _need(self, folder: Path, h: str, what: str, shared: bool) -> None:
        if shared and not is_done(folder, h):
            raise InputError(f"{folder}: the {what} stage is not finished; with --shard run `gapeval study run CONFIG --stop-after "
                             f"{'data' if what in ('pairs', 'data view') else 'train'}` first (one process)")

    def stage_pairs(self, shared: bool = False) -> None:
        if "naip_proxy" not in self.cfg.data:
            self.hashes["pairs"] = stage_hash("pairs", str(self.cfg.data["pairs"]))
            return
        from gapeval.study.proxy import build_naip_proxy

        spec = self.cfg.data["naip_proxy"]
        h = self.hashes["pairs"] = stage_hash("naip_proxy", spec.as_dict())
        folder = self.out / "pairs"
        self._need(folder, h, "pairs", shared)
        if is_done(folder, h):
            return self.progress.cached("pairs")
        prepare(folder, h, keep_partial=False)
        self.progress.start("pairs", 1, "pair set (NAIP proxy)")
        counts = build_naip_proxy(spec, folder)
        mark(folder, h, {"tiles": counts})
        self.progress.update(1, f"tiles {counts}")

    def stage_view(self, shared: bool = False) -> None:
        h = self.hashes["view"] = stage_hash("view", self.hashes["pairs"], self.lr_folders(), self.cfg.data["max_tiles"])
        self._need(self.view, h, "data view", shared)
        if is_done(self.view, h):
            return self.progress.cached("data view")
        counts = make_view(self.pairs_root(), self.view, self.lr_folders(), self.cfg.data["max_tiles"])
        mark(self.view, h, {"tiles": counts})
        self.progress.say(f"[data view] tiles per split {counts} from {self.pairs_root()}")

    def tile_size(self) -> int:
        first = next(iter(tiles(self.view / "test" / self.cfg.inputs["real"]).values()))
        from lpips_sat.raster import raster_info

        info = raster_info(first)
        return max(info.height, info.width)

    # -- train ------------------------------------------------------------------------------------
    def train_config(self, m: ModelSpec, domain: str, folder: Path):
        from gapeval.infer.train import TrainConfig

        t = self.cfg.train
        net = {k: (tuple(v) if isinstance(v, list) else v) for k, v in m.network.items() if k in ("width", "channel_mult", "layers_per_block",
                                                                                                   "attention_levels", "norm_groups")}
        extra = {k: v for k, v in m.network.items() if k not in net}
        return TrainConfig(lr_dir=self.view / "train" / self.cfg.domains[domain], hr_dir=self.view / "train" / "hr", out=folder,
                           bands=",".join(BANDS), patch=t["patch"], batch=t["batch"], steps=t["steps"], save_every=t["save_every"],
                           learning_rate=float(t["learning_rate"]), ref_max=float(t["ref_max"]), ema_decay=float(t["ema_decay"]),
                           seed=int(t["seed"]), device=self.device("train"), precision=t["precision"], model=m.adapter, network=extra,
                           schedule=dict(m.schedule) if m.schedule else None, val_every=int(t["val_every"]), **net)

    def stage_train(self, m: ModelSpec, domain: str, run: bool = True) -> Path:
        from gapeval.infer.train import Trainer, find_pairs, model_file

        folder = self.out / "train" / m.label / domain
        label = f"train {m.label} on {domain}"
        h = self.hashes[f"train/{m.label}/{domain}"] = stage_hash("train", m.adapter, m.network, m.schedule, self.cfg.train,
                                                                  self.cfg.validation, self.hashes["view"], self.metric_sha, self.val_steps(m))
        if is_done(folder, h):
            self.progress.cached(label)
            return folder / model_file(m.adapter)
        if not run:  # another shard's stage
            return folder / model_file(m.adapter)
        prepare(folder, h)
        cfg = self.train_config(m, domain, folder)
        trainer = Trainer(cfg)
        pairs = find_pairs(cfg)
        validate = self.validator(m, domain) if cfg.val_every else None
        self.progress.start(label, cfg.steps, "steps", trainer.step)
        trainer.run(pairs, lambda step, loss: self.progress.update(step, f"loss {loss:.4g}"), validate)
        mark(folder, h, {"steps": cfg.steps})
        return folder / model_file(m.adapter)

    def val_steps(self, m: ModelSpec) -> int:
        if m.adapter == "resshift":
            from gapeval.infer.resshift import ShiftSchedule

            return int((m.schedule or {}).get("steps", ShiftSchedule().steps))
        return int(self.cfg.validation["steps"])

    def validator(self, m: ModelSpec, domain: str):
        """``validate(trainer)``: LPIPS-Sat and PSNR of EMA samples on the first ``validation.tiles`` val tiles of the domain."""
        import torch

        from gapeval.gap import load_reflectance
        from gapeval.infer.base import SamplingOptions

        hr_t = tiles(self.view / "val" / "hr")
        keys = sorted(hr_t)[: int(self.cfg.validation["tiles"])]
        lr_t = tiles(self.view / "val" / self.cfg.domains[domain])
        read = lambda p: np.nan_to_num(load_reflectance(p, bands=None, scale=None, wanted=BANDS, flag="--scale")[0])  # noqa: E731
        lr = torch.from_numpy(np.stack([read(lr_t[k]) for k in keys]))
        hr = torch.from_numpy(np.stack([read(hr_t[k]) for k in keys]))
        metric, steps, seed = self.metric, self.val_steps(m), int(self.cfg.sampling["seed"])

        def validate(trainer) -> dict[str, float]:  # SR clipped to [0, 1] reflectance, as in the infer stage
            adapter = trainer.adapter(SamplingOptions(steps=steps, eta=float(self.cfg.sampling["eta"])))
            gens = [torch.Generator().manual_seed(seed * 1000 + i) for i in range(len(keys))]
            with torch.inference_mode():
                sr = adapter.sample(lr, gens).float().cpu().clamp(0.0, 1.0)
                d = metric(sr.to(next(metric.parameters()).device), hr.to(next(metric.parameters()).device)).cpu()
            mse = ((sr - hr) ** 2).mean(dim=(1, 2, 3)).clamp(min=1e-12)
            return {"val_lpips_sat": float(d.mean()), "val_psnr": float((10 * torch.log10(1.0 / mse)).mean())}

        return validate

    # -- infer ------------------------------------------------------------------------------------
    def sample_steps(self, m: ModelSpec) -> int:
        if m.steps:
            return int(m.steps)
        return self.val_steps(m) if m.adapter == "resshift" and m.trained else int(self.cfg.sampling["steps"])

    def stage_infer(self, m: ModelSpec, domain: str, inp: str, ckpt: Any) -> None:
        from gapeval.infer import pipeline
        from gapeval.infer.base import SamplingOptions
        from gapeval.infer.registry import load_adapter

        run = f"{m.label}/{domain}/{inp}"
        folder = self.out / "infer" / run
        upstream = self.hashes.get(f"train/{m.label}/{domain}", str(ckpt))
        s = self.cfg.sampling
        h = self.hashes[f"infer/{run}"] = stage_hash("infer", upstream, self.hashes["view"], self.cfg.inputs[inp], s, m.tile, self.sample_steps(m))
        label = f"infer {run}"
        if is_done(folder, h):
            return self.progress.cached(label)
        if m.adapter == "bicubic":
            prepare(folder, h)
            self.progress.start(label, 1, "reference")
            upsample_folder(self.view / "test" / self.cfg.inputs[inp], folder / "s0", round(self.scale()))
            self.progress.update(1)
            return mark(folder, h, {"samples": 1, "settings": {"method": "bicubic (torch, align_corners=False)"}, "clipped_fraction": 0.0})
        if m.trained and not is_done(self.out / "train" / m.label / domain, self.hashes[f"train/{m.label}/{domain}"]):
            raise InputError(f"{run}: its training stage is not finished (another --shard's?); run --stop-after train for every shard first")
        prepare(folder, h)
        options = SamplingOptions(steps=self.sample_steps(m), eta=float(s["eta"]))
        adapter, source = load_adapter(m.adapter, str(ckpt), options, device=self.device("train" if m.trained else "metrics"))
        files = pipeline.list_inputs(self.view / "test" / self.cfg.inputs[inp])
        n = int(s["samples"])
        tile = m.tile or max(adapter.size_multiple, -(-self.tile_size() // adapter.size_multiple) * adapter.size_multiple)
        self.progress.start(label, n * len(files), "tiles x samples")
        done = 0
        clipped = [0, 0]

        def clip(lr, generators):  # SR outside [0, 1] is not reflectance: clip it, and count how much was clipped
            sr = adapter.sample(lr, generators)
            clipped[0] += int(((sr < 0) | (sr > 1)).sum())
            clipped[1] += sr.numel()
            return sr.clamp(0.0, 1.0)

        for k in range(n):
            pipe = pipeline.Pipeline(adapter, source, pipeline.InferConfig(out=folder / f"s{k}", seed=1000 * int(s["seed"]) + k, samples=1,
                                                                           tile=tile, overlap=0, nir_fallback="bicubic"))
            pipe.sample_fn = clip
            for key, path in files:
                pipe.process(path, key)
                done += 1
                self.progress.update(done, f"sample {k + 1}/{n}")
        frac = clipped[0] / clipped[1] if clipped[1] else 0.0
        mark(folder, h, {"samples": n, "files": len(files), "settings": adapter.settings(), "clipped_fraction": frac})

    # -- score ------------------------------------------------------------------------------------
    def stage_score(self, run: str) -> None:
        from gapeval.score import score

        folder = self.out / "score" / run
        model, domain, inp = run.split("/")
        h = self.hashes[f"score/{run}"] = stage_hash("score", self.hashes[f"infer/{run}"], self.metric_sha)
        label = f"score {run}"
        if is_done(folder, h):
            return self.progress.cached(label)
        prepare(folder, h)
        n = 1 if model in reference_labels(self.cfg) else int(self.cfg.sampling["samples"])
        infer = self.out / "infer" / run
        preds = {f"s{k}": infer / f"s{k}" for k in range(n)}
        self.progress.start(label, 1, "score call")
        res = score(preds, self.view / "test" / "hr", lr=self.view / "test" / self.cfg.inputs[inp], out=folder / "per_sample", metric=self.metric,
                    resume=True)
        aggregate(res.records, preds, folder, run)
        self.progress.update(1, f"{len(res.records)} pairs")
        mark(folder, h)

    # -- gap --------------------------------------------------------------------------------------
    def comparisons(self) -> list[tuple[str, str, str]]:
        cfg, out = self.cfg, []
        for m in cfg.models:
            for d in (cfg.domains if m.trained else [PRETRAINED]):
                what = f"{m.label} trained on {d}" if m.trained else f"{m.label} ({'reference' if m.adapter in REFERENCES else 'checkpoint'})"
                out.append((f"synthetic-to-real gap: {what}, real - synthetic input", f"{m.label}/{d}/real", f"{m.label}/{d}/synthetic"))
        for m in cfg.models:
            if m.trained:
                out.append((f"training-domain gap: {m.label} on real input, real - synthetic trained", f"{m.label}/real/real", f"{m.label}/synthetic/real"))
        return out + list(cfg.comparisons)

    def stage_gap(self) -> None:
        from gapeval.gap import Design, GapConfig, gap_analysis

        names = self.cfg.run_names()
        h = self.hashes["gap"] = stage_hash("gap", [self.hashes[f"score/{r}"] for r in names], self.comparisons(), self.cfg.metrics, self.cfg.stats)
        folder = self.out / "gap"
        if is_done(folder, h):
            return self.progress.cached("gap")
        prepare(folder, h, keep_partial=False)
        st = self.cfg.stats
        metrics = self.gap_metrics(names)
        conditions = {r: dict(zip(("model", "train", "input"), r.split("/"))) for r in names}
        scale = int(round(self.scale()))
        config = GapConfig(metrics=metrics, images=bool(self.cfg.metrics["images"]), n_resamples=int(st["n_resamples"]), alpha=float(st["alpha"]),
                           seed=int(st["seed"]), group_by="input", hf_cutoff=1.0 / (2.0 * scale))
        self.progress.start("gap", 2, "analyses")
        gap_analysis(Design({r: self.out / "score" / r for r in names}, self.comparisons(), conditions), folder, config,
                     metric=self.metric if config.images else None)
        self.progress.update(1, "gaps")
        sampled = [r for r in names if r.split("/")[0] not in reference_labels(self.cfg)]
        ctl = [(f"control: {r}, samples half B - half A", f"{r}#b", f"{r}#a") for r in sampled]
        runs = {**{f"{r}#a": self.out / "score" / r / "half_a" for r in sampled}, **{f"{r}#b": self.out / "score" / r / "half_b" for r in sampled}}
        if int(self.cfg.sampling["samples"]) >= 2:
            gap_analysis(Design(runs, ctl, {}), folder / "control", GapConfig(metrics=metrics, images=False, n_resamples=int(st["n_resamples"]),
                                                                              alpha=float(st["alpha"]), seed=int(st["seed"])))
        self.progress.update(2, "controls")
        mark(folder, h)

    def gap_metrics(self, names: list[str]) -> list[str]:
        from gapeval.gap import read_run

        have = set(read_run(names[0], self.out / "score" / names[0]).numeric)
        return [m for m in self.cfg.metrics["report"] if m in have] + ["sample_std"]

    def scale(self) -> float:
        from lpips_sat.raster import raster_info

        lr = next(iter(tiles(self.view / "test" / self.cfg.inputs["real"]).values()))
        hr = next(iter(tiles(self.view / "test" / "hr").values()))
        return raster_info(hr).height / raster_info(lr).height

    # -- report -----------------------------------------------------------------------------------
    def stage_report(self) -> dict[str, Any]:
        from gapeval.study.report import write_study_report

        h = stage_hash("report", self.hashes["gap"], [self.hashes.get(k) for k in sorted(self.hashes) if k.startswith("train/")])
        if is_done(self.out / "report_stage", h) and (self.out / "tables.json").is_file():
            self.progress.cached("report")
            return json.loads((self.out / "tables.json").read_text())
        self.progress.start("report", 1, "report")
        tables = write_study_report(self)
        (self.out / "report_stage").mkdir(exist_ok=True)
        mark(self.out / "report_stage", h)
        self.progress.update(1)
        return tables


# ---------------------------------------------------------------------------------------------- aggregation
def aggregate(records: list[dict[str, Any]], preds: dict[str, Path], folder: Path, run: str) -> None:
    """Per scene: metrics averaged over the samples (``pairs.csv``), over each half of them (``half_a``/``half_b``),
    and ``sample_std`` (per-pixel std over samples, ddof 1, averaged over pixels and bands; NaN for one sample)."""
    import csv
    import io

    from gapeval.results import metric_columns

    sets = list(preds)
    cols = [c for c in metric_columns(list(records[0])) if all(isinstance(r.get(c), (int, float)) for r in records)] if records else []
    by_key: dict[str, dict[str, dict[str, Any]]] = {}
    for r in records:
        by_key.setdefault(r["key"], {})[r["pred_set"]] = r
    half = max(1, len(sets) // 2)
    parts = {"": sets, "half_a": sets[:half], "half_b": sets[half:] or sets[:half]}
    tables: dict[str, list[dict[str, Any]]] = {p: [] for p in parts}
    for key in sorted(by_key):
        recs = by_key[key]
        first = recs[sets[0]]
        base = {"key": key, "pred_set": run, "pred_path": first.get("pred_path", ""), "target_path": first.get("target_path", ""),
                "lr_path": first.get("lr_path", ""), "target_sha256": first.get("target_sha256", "")}
        ok = all(k in recs and recs[k].get("status") == "ok" for k in sets)
        std = sample_std([preds[s] / f"{key}.tif" for s in sets]) if ok else float("nan")
        for p, members in parts.items():
            row = {**base, "status": "ok" if ok else "incomplete"}
            for c in cols:
                vals = np.array([recs[s][c] for s in members if s in recs], float)
                row[c] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
            row["sample_std"] = std
            tables[p].append(row)
    fields = ["key", "pred_set", "status", "pred_path", "target_path", "lr_path", "target_sha256", *cols, "sample_std"]
    for p, rows in tables.items():
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=fields)
        w.writeheader()
        for row in rows:
            w.writerow({k: (f"{v:.8g}" if isinstance(v, float) else v) for k, v in row.items()})
        write_text_atomic(folder / p / "pairs.csv" if p else folder / "pairs.csv", buf.getvalue())


def reference_labels(cfg: StudyConfig) -> set[str]:
    """Labels of the built-in reference models (bicubic)."""
    return {m.label for m in cfg.models if m.adapter in REFERENCES}


def upsample_folder(lr_dir: Path, out: Path, scale: int) -> None:
    """Bicubic x ``scale`` (torch, ``align_corners=False``: the models' conditioning) of every LR tile, on the HR grid."""
    import torch
    import torch.nn.functional as F
    from affine import Affine

    from gapeval.gap import load_reflectance
    from lpips_sat.raster import raster_info, write_raster

    for key, path in sorted(tiles(lr_dir).items()):
        data, valid = load_reflectance(path, bands=None, scale=None, wanted=BANDS, flag="--scale")
        up = F.interpolate(torch.from_numpy(np.nan_to_num(data))[None], scale_factor=scale, mode="bicubic", align_corners=False)[0].numpy()
        up[:, ~np.repeat(np.repeat(valid, scale, 0), scale, 1)] = np.nan
        info = raster_info(path)
        write_raster(out / f"{key}.tif", np.clip(up, 0.0, 1.0).astype(np.float32), transform=info.transform @ Affine.scale(1.0 / scale),
                     crs=info.crs, nodata=float("nan"), descriptions=BANDS, tags={"model": "bicubic"})


def sample_std(paths: list[Path]) -> float:
    """Mean over valid pixels and bands of the per-pixel standard deviation (ddof 1) across sample files."""
    from lpips_sat.raster import read_raster

    if len(paths) < 2:
        return float("nan")
    stack = np.stack([read_raster(p).data for p in paths]).astype(np.float64)
    std = np.nanstd(stack, axis=0, ddof=1)
    return float(np.nanmean(std))


def run_study(config: StudyConfig, out: str | Path, *, stream: TextIO | None = None, hook: Hook | None = None,
              stop_after: str | None = None, shard: tuple[int, int] = (0, 1)) -> dict[str, Any]:
    """Run (or resume) a study; returns the report tables. See :class:`Study` and :meth:`Study.run`."""
    if not config.models:
        raise InputError(f"{config.path}: no models")
    return Study(config, out, stream=stream, hook=hook).run(stop_after, shard)
