"""The study YAML: parsing, validation (every error before any work), ``--smoke`` overrides and per-stage hashes.

Schema (``examples/study_small.yaml`` is a commented example)::

    name: small                       # label; default output folder runs/study_<name>
    data:
      pairs: PATH                     # a pair set written by `gapeval pairs` (layout: gapeval.study.data), or
      naip_proxy: {hr: FILE, lr: FILE, ...}   # build the NAIP cross-acquisition proxy (gapeval.study.proxy)
      max_tiles: {train: 0, val: 8, test: 0}  # optional caps per split (0 = all), first tiles by name
    domains: {synthetic: lr_synth_s2, real: lr}   # training domain -> LR folder of the pair set
    inputs:  {synthetic: lr_synth_s2, real: lr}   # test input -> LR folder (more inputs allowed)
    train: {steps, batch, patch, learning_rate, seed, save_every, val_every, ref_max, ema_decay, device, precision}
    models:
      - {name: sr3, network: {width: 32, ...}}          # trained on every domain with the shared `train` budget
      - {name: resshift, network: {...}, schedule: {steps: 15, kappa: 2.0}}   # samples its 15-step chain
      - {name: ldsr-s2, checkpoint: FILE, tile: 128}    # any `gapeval infer` adapter: evaluated only
      - {name: bicubic}                                 # reference: bicubic upsampling of the input (no model)
    sampling: {steps: 20, samples: 4, seed: 0, eta: 0}
    validation: {tiles: 8, steps: 10}                   # validation LPIPS-Sat during training
    metrics: {weights: lpips-sat-s2-rn18, report: [lpips_sat, psnr, ssim, sam_deg, refl_l1], images: true, device: cpu}
    stats: {n_resamples: 2000, alpha: 0.05, seed: 0}
    comparisons: [{name: ..., a: MODEL/DOMAIN/INPUT, b: ...}]   # extra gaps (defaults: see gapeval.study.runner)
    smoke: {...}                                        # optional overrides for --smoke (deep-merged over SMOKE)
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lpips_sat.errors import InputError, MissingFileError

#: Bands of every study model and of the metric (R, G, B, NIR).
BANDS = ("B04", "B03", "B02", "B08")
#: Roles the default comparisons need among both ``domains`` and ``inputs``.
ROLES = ("synthetic", "real")
TRAINABLE = ("sr3", "resshift")
PRETRAINED = "pretrained"
#: Built-in reference "model": bicubic upsampling of the LR input (what every diffusion model is conditioned on).
REFERENCES = ("bicubic",)

TRAIN_DEFAULTS: dict[str, Any] = {"steps": 1000, "batch": 8, "patch": 16, "learning_rate": 2e-4, "seed": 0, "save_every": 100,
                                  "val_every": 100, "ref_max": 0.5, "ema_decay": 0.999, "device": "cpu", "precision": "fp32"}
SAMPLING_DEFAULTS: dict[str, Any] = {"steps": 20, "samples": 4, "seed": 0, "eta": 0.0}
VALIDATION_DEFAULTS: dict[str, Any] = {"tiles": 8, "steps": 10}
METRICS_DEFAULTS: dict[str, Any] = {"weights": None, "report": ["lpips_sat", "psnr", "ssim", "sam_deg", "refl_l1"], "images": True, "device": "cpu"}
STATS_DEFAULTS: dict[str, Any] = {"n_resamples": 2000, "alpha": 0.05, "seed": 0}
NETWORK_KEYS = ("width", "channel_mult", "layers_per_block", "attention_levels", "norm_groups")

#: ``--smoke``: tiny networks, few steps, few tiles (deep-merged under the config's own ``smoke:`` section).
SMOKE: dict[str, Any] = {
    "train": {"steps": 4, "batch": 2, "save_every": 2, "val_every": 2},
    "network": {"width": 8, "channel_mult": [1, 2], "layers_per_block": 1, "attention_levels": [], "norm_groups": 4},
    "resshift_network": {"attention_levels": [1], "window_size": 4, "num_head_channels": 8, "swin_embed_dim": 16, "swin_depth": 1},
    "schedule": {"resshift": {"steps": 4}},
    "sampling": {"steps": 2, "samples": 2},
    "validation": {"tiles": 2, "steps": 2},
    "data": {"max_tiles": {"train": 8, "val": 2, "test": 3}},
    "metrics": {"images": False},
    "naip_proxy": {"crop": 384, "block": 32},
    "stats": {"n_resamples": 200},
}


@dataclass
class ModelSpec:
    """One model of the study: trained here (``sr3``, ``resshift``) or evaluated from a checkpoint."""

    label: str
    adapter: str
    checkpoint: str | None = None
    network: dict[str, Any] = field(default_factory=dict)
    schedule: dict[str, Any] | None = None
    tile: int | None = None
    steps: int | None = None  # sampling steps of this model (default: sampling.steps; resshift: its trained chain length)

    @property
    def trained(self) -> bool:
        return self.checkpoint is None


@dataclass
class StudyConfig:
    """A validated study (paths resolved against the YAML's folder)."""

    path: Path
    name: str
    data: dict[str, Any]
    domains: dict[str, str]
    inputs: dict[str, str]
    train: dict[str, Any]
    models: list[ModelSpec]
    sampling: dict[str, Any]
    validation: dict[str, Any]
    metrics: dict[str, Any]
    stats: dict[str, Any]
    comparisons: list[tuple[str, str, str]]
    smoke: bool = False
    raw: dict[str, Any] = field(default_factory=dict)

    def run_names(self) -> list[str]:
        """Every scored condition ``MODEL/DOMAIN/INPUT`` (DOMAIN = ``pretrained`` for checkpoint models)."""
        out = []
        for m in self.models:
            for d in (self.domains if m.trained else [PRETRAINED]):
                out += [f"{m.label}/{d}/{i}" for i in self.inputs]
        return out


def stage_hash(*parts: Any) -> str:
    """Short sha256 of JSON-serialisable ``parts`` (stage settings + upstream hashes)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _section(doc: dict[str, Any], key: str, defaults: dict[str, Any], path: Path) -> dict[str, Any]:
    given = doc.get(key) or {}
    if not isinstance(given, dict):
        raise InputError(f"{path}: '{key}' must be a mapping, got {given!r}")
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise InputError(f"{path}: unknown key(s) {unknown} in '{key}'; known: {sorted(defaults)}")
    return {**defaults, **given}


def load_config(path: str | Path, *, smoke: bool = False) -> StudyConfig:
    """Read and validate a study YAML; ``smoke`` applies :data:`SMOKE` (+ the file's ``smoke:`` section).

    Raises:
        MissingFileError: no such file. InputError: invalid YAML or any invalid setting, unknown model included.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: study file does not exist")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(doc, dict):
        raise InputError(f"{path}: expected a mapping (name, data, domains, inputs, train, models, ...)")
    known = {"name", "data", "domains", "inputs", "train", "models", "sampling", "validation", "metrics", "stats", "comparisons", "smoke", "out"}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise InputError(f"{path}: unknown top-level key(s) {unknown}; known: {sorted(known)}")
    raw = copy.deepcopy(doc)
    over: dict[str, Any] = {}
    if smoke:
        over = deep_merge(SMOKE, doc.get("smoke") or {})
        for key in ("train", "sampling", "validation", "data", "stats", "metrics"):
            doc[key] = deep_merge(doc.get(key) or {}, over.get(key) or {})
    base = path.parent

    data = dict(doc.get("data") or {})
    if ("pairs" in data) == ("naip_proxy" in data):
        raise InputError(f"{path}: 'data' needs exactly one of 'pairs' (a `gapeval pairs` folder) or 'naip_proxy' (build the NAIP proxy)")
    if "pairs" in data:
        data["pairs"] = (base / str(data["pairs"])).resolve()
    else:
        from gapeval.study.proxy import ProxySpec

        spec = dict(data["naip_proxy"] or {})
        if smoke:
            spec.update(over.get("naip_proxy") or {})
        for k in ("hr", "lr"):
            if k not in spec:
                raise InputError(f"{path}: data.naip_proxy needs '{k}' (a NAIP scene)")
            spec[k] = str((base / str(spec[k])).resolve())
        try:
            data["naip_proxy"] = ProxySpec(**spec)
        except TypeError as exc:
            raise InputError(f"{path}: data.naip_proxy: {exc}") from exc
    caps = data.get("max_tiles") or {}
    if not isinstance(caps, dict) or set(caps) - {"train", "val", "test"} or not all(isinstance(v, int) and v >= 0 for v in caps.values()):
        raise InputError(f"{path}: data.max_tiles must map train/val/test to non-negative integers, got {caps!r}")
    data["max_tiles"] = {s: int(caps.get(s, 0)) for s in ("train", "val", "test")}

    domains, inputs = doc.get("domains") or {"synthetic": "lr_synth_s2", "real": "lr"}, doc.get("inputs") or {"synthetic": "lr_synth_s2", "real": "lr"}
    for what, d in (("domains", domains), ("inputs", inputs)):
        if not isinstance(d, dict) or any(r not in d for r in ROLES):
            raise InputError(f"{path}: '{what}' must map at least {list(ROLES)} to LR folders of the pair set, got {d!r}")
        if any("/" in str(k) for k in d):
            raise InputError(f"{path}: '{what}' names must not contain '/'")

    train = _section(doc, "train", TRAIN_DEFAULTS, path)
    for k in ("steps", "batch", "patch", "save_every"):
        if not isinstance(train[k], int) or train[k] < 1:
            raise InputError(f"{path}: train.{k} must be a positive integer, got {train[k]!r}")
    if not isinstance(train["val_every"], int) or train["val_every"] < 0:
        raise InputError(f"{path}: train.val_every must be a non-negative integer (0 = no validation)")
    sampling = _section(doc, "sampling", SAMPLING_DEFAULTS, path)
    if not isinstance(sampling["samples"], int) or sampling["samples"] < 1 or not isinstance(sampling["steps"], int) or sampling["steps"] < 1:
        raise InputError(f"{path}: sampling.steps and sampling.samples must be positive integers")
    validation = _section(doc, "validation", VALIDATION_DEFAULTS, path)
    metrics = _section(doc, "metrics", METRICS_DEFAULTS, path)
    stats = _section(doc, "stats", STATS_DEFAULTS, path)

    models = _models(doc.get("models"), path, base, over)
    names = [f"{m.label}/{d}/{i}" for m in models for d in (domains if m.trained else [PRETRAINED]) for i in inputs]
    comparisons = []
    for i, c in enumerate(doc.get("comparisons") or []):
        if not isinstance(c, dict) or "a" not in c or "b" not in c:
            raise InputError(f"{path}: comparison #{i + 1} needs 'a' and 'b' (gap = a - b), got {c!r}")
        for side in ("a", "b"):
            if c[side] not in names:
                raise InputError(f"{path}: comparison #{i + 1} names run {c[side]!r}; runs are MODEL/DOMAIN/INPUT, e.g. {names[:3]}")
        comparisons.append((str(c.get("name") or f"{c['a']} - {c['b']}"), str(c["a"]), str(c["b"])))
    name = str(doc.get("name") or path.stem)
    return StudyConfig(path=path, name=name, data=data, domains={str(k): str(v) for k, v in domains.items()},
                       inputs={str(k): str(v) for k, v in inputs.items()}, train=train, models=models, sampling=sampling,
                       validation=validation, metrics=metrics, stats=stats, comparisons=comparisons, smoke=smoke, raw=raw)


def _models(items: Any, path: Path, base: Path, smoke: dict[str, Any]) -> list[ModelSpec]:
    from gapeval.infer.registry import ADAPTERS

    if not isinstance(items, list) or not items:
        raise InputError(f"{path}: 'models' must list at least one model, e.g. [{{name: sr3}}, {{name: resshift}}]")
    out: list[ModelSpec] = []
    for i, m in enumerate(items):
        m = {"name": m} if isinstance(m, str) else m
        if not isinstance(m, dict) or "name" not in m:
            raise InputError(f"{path}: model #{i + 1} needs a 'name', got {m!r}")
        unknown = sorted(set(m) - {"name", "label", "checkpoint", "network", "schedule", "tile", "steps"})
        if unknown:
            raise InputError(f"{path}: model #{i + 1} ({m['name']}): unknown key(s) {unknown}")
        adapter = str(m["name"])
        if adapter in REFERENCES:
            if set(m) - {"name", "label"}:
                raise InputError(f"{path}: model #{i + 1} ({adapter}) is a built-in reference and takes no settings")
            out.append(ModelSpec(label=str(m.get("label") or adapter), adapter=adapter, checkpoint="builtin"))
            continue
        if adapter not in ADAPTERS:
            raise InputError(f"{path}: unknown model {adapter!r} (model #{i + 1}); known: {', '.join(ADAPTERS)} (see `gapeval models`) "
                             f"and the reference {', '.join(REFERENCES)}")
        ckpt = m.get("checkpoint")
        if ckpt is None and adapter not in TRAINABLE:
            raise InputError(f"{path}: model {adapter!r} cannot be trained here (trainable: {', '.join(TRAINABLE)}); give 'checkpoint:' to evaluate it")
        network = dict(m.get("network") or {})
        if ckpt is None:
            network = {**network, **(smoke.get("network") or {})}
            if adapter == "resshift":
                network = {**network, **(smoke.get("resshift_network") or {})}
        schedule = m.get("schedule")
        if smoke and ckpt is None and (smoke.get("schedule") or {}).get(adapter):
            schedule = {**(schedule or {}), **smoke["schedule"][adapter]}
        label = str(m.get("label") or adapter)
        if "/" in label or any(o.label == label for o in out):
            raise InputError(f"{path}: model label {label!r} is {'duplicated' if '/' not in label else 'invalid'}; give each model a distinct 'label'")
        ck = None
        if ckpt is not None:  # a path relative to the YAML, else passed on as given (absolute path or hub id)
            ck = str((base / str(ckpt)).resolve()) if (base / str(ckpt)).exists() else str(ckpt)
        out.append(ModelSpec(label=label, adapter=adapter, checkpoint=ck, network=network, schedule=schedule, tile=m.get("tile"),
                             steps=m.get("steps")))
    return out
