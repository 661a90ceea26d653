"""``gapeval train sr3|resshift``: train a diffusion SR denoiser on paired low/high-resolution GeoTIFF folders, resumably.

One loop serves both model families (a :class:`Family` supplies the network, the loss and the checkpoint):

- ``sr3`` (Saharia et al. 2022): eps-prediction, ``|| eps - eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, bicubic(LR), t) ||^2``
  (Ho et al. 2020) on a diffusers ``UNet2DModel``.
- ``resshift`` (Yue et al. 2023, Eq. 3 and 11): x0-prediction on the residual-shifting chain
  ``x_t = x0 + eta_t (y0 - x0) + kappa sqrt(eta_t) eps`` with ``y0`` the bicubically upsampled LR image,
  ``|| f_theta(x_t / sqrt(kappa^2 eta_t + 1), t, LR) - x0 ||^2``, on the Swin-UNet of the ``resshift`` adapter. Trained
  here in **pixel space** (no VQ autoencoder), which keeps CPU-sized runs possible; the published model works in a
  VQ-f4 latent.

Pairs are files with the same stem in ``--lr`` and ``--hr``; each HR image must be exactly ``scale`` times the LR
image (and, when both are georeferenced, on the matching grid). Each step draws ``batch`` random LR patches
(``patch`` px) and their HR patches, with random flips/rotations, and takes an AdamW step; an EMA of the weights
is what the checkpoint holds.

Everything random in step ``k`` derives from ``(seed, k)``, and the model, EMA and optimizer state are saved as
safetensors (``MODEL_state.safetensors``, atomically, every ``save_every`` steps and at the end), so a resumed run
continues exactly as an uninterrupted one. ``MODEL.safetensors`` (EMA weights + config) is what
``gapeval infer --model MODEL`` loads; ``train_log.csv`` records the loss and, when a ``validate`` callback is given,
``val_log.csv`` its values every ``val_every`` steps.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from affine import Affine

from gapeval.grids import Grid
from gapeval.infer.base import Adapter, SamplingOptions, ValueMap, autocast, resolve_precision
from gapeval.infer.checkpoints import save_safetensors
from gapeval.infer.pipeline import list_inputs
from gapeval.reflectance import check_not_tiny, check_reflectance, was_scaled
from lpips_sat.atomic import make_folder, remove_stale_temporaries, write_text_atomic
from lpips_sat.bands import resolve, select_bands
from lpips_sat.errors import InputError, MissingFileError, WeightsError
from lpips_sat.raster import band_gain_offset, raster_info, read_raster

log = logging.getLogger(__name__)

MODELS = ("sr3", "resshift")
LOG_FILE, VAL_LOG_FILE = "train_log.csv", "val_log.csv"
#: Files at most this many pixels are read once and kept in memory (small tiles: one open per step would dominate).
CACHE_PIXELS = 1 << 22


def state_file(model: str) -> str:
    return f"{model}_state.safetensors"


def model_file(model: str) -> str:
    return f"{model}.safetensors"


@dataclass
class TrainConfig:
    """Settings of one training run (the architecture/data fields must stay equal across resumes).

    The network fields map onto either family: ``width`` (channels of the first level), ``channel_mult``,
    ``layers_per_block`` (residual blocks per level), ``attention_levels`` (levels with self-attention; for
    ``resshift`` the levels with Swin stages), ``norm_groups``; ``network`` holds further family-specific
    constructor keys (e.g. ``window_size`` for resshift). ``schedule``: the DDPM scheduler config (sr3; e.g.
    ``clip_sample: true`` makes the sampler clip x0 predictions to [-1, 1]) or the
    :class:`~gapeval.infer.resshift.ShiftSchedule` fields (resshift); keys not given take the family's defaults.
    """

    lr_dir: Path
    hr_dir: Path
    out: Path
    bands: str = "B04,B03,B02,B08"
    input_bands: str | None = None
    scale: int = 4
    lr_scale: float | None = None
    hr_scale: float | None = None
    patch: int = 32
    batch: int = 8
    steps: int = 10000
    save_every: int = 500
    learning_rate: float = 1e-4
    width: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2, 4)
    layers_per_block: int = 2
    attention_levels: tuple[int, ...] = (3,)
    norm_groups: int = 32
    ref_max: float = 0.5
    ema_decay: float = 0.999
    seed: int = 0
    device: str = "cpu"
    precision: str = "fp32"
    min_valid: float = 0.99
    schedule: dict | None = None
    model: str = "sr3"
    network: dict = field(default_factory=dict)
    val_every: int = 0

    #: fields that define the model and the data; a resume with other values is refused
    FIXED = ("bands", "scale", "lr_scale", "hr_scale", "patch", "batch", "learning_rate", "width", "channel_mult", "layers_per_block",
             "attention_levels", "norm_groups", "ref_max", "ema_decay", "seed", "schedule", "model", "network", "val_every")

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise InputError(f"unknown model to train {self.model!r}; trainable: {', '.join(MODELS)}")
        self.schedule = {**family(self.model).default_schedule(), **(self.schedule or {})}
        self.lr_dir, self.hr_dir, self.out = Path(self.lr_dir), Path(self.hr_dir), Path(self.out)

    def fixed(self) -> dict:
        d = asdict(self)
        out = {k: (list(d[k]) if isinstance(d[k], tuple) else d[k]) for k in self.FIXED}
        if out["model"] == "sr3" and not out["network"] and not out["val_every"]:  # states written before the trainer was shared
            out.pop("model"), out.pop("network"), out.pop("val_every")
        return out


@dataclass
class Pair:
    """One LR/HR training pair: band indices and per-band reflectance ``gain``/``offset`` of each file."""

    lr: Path
    hr: Path
    lr_idx: list[int]
    hr_idx: list[int]
    height: int  # LR rows
    width: int  # LR cols
    lr_gain: np.ndarray
    lr_offset: np.ndarray
    hr_gain: np.ndarray
    hr_offset: np.ndarray


def find_pairs(cfg: TrainConfig) -> list[Pair]:
    """Match LR and HR files by relative path and stem; check sizes, grids, bands and reflectance (errors name the files)."""
    lr_files = dict(list_inputs(cfg.lr_dir))
    hr_files = dict(list_inputs(cfg.hr_dir))
    keys = sorted(set(lr_files) & set(hr_files))
    if not keys:
        raise InputError(f"No file stem is in both {cfg.lr_dir} and {cfg.hr_dir}; pairs are matched by name")
    unpaired = sorted(set(lr_files) ^ set(hr_files))
    if unpaired:
        log.warning("%d files without a partner are ignored: %s", len(unpaired), unpaired[:5])
    wanted = tuple(b for b in resolve(cfg.bands) if b)
    pairs = []
    for key in keys:
        lr, hr = raster_info(lr_files[key]), raster_info(hr_files[key])
        if (hr.height, hr.width) != (lr.height * cfg.scale, lr.width * cfg.scale):
            raise InputError(f"{hr.path}: size {hr.height}x{hr.width} is not {cfg.scale} x the size {lr.height}x{lr.width} of {lr.path}; "
                             f"resample the pair onto x{cfg.scale} grids first")
        if lr.georeferenced and hr.georeferenced:
            expected = Grid(lr.transform @ Affine.scale(1.0 / cfg.scale), lr.crs, hr.height, hr.width)
            why = Grid(hr.transform, hr.crs, hr.height, hr.width).mismatch(expected)
            if why:
                raise InputError(f"{hr.path} is not on the x{cfg.scale} grid of {lr.path}: {why}; co-register the pair first")
        lr_idx = select_bands(lr, cfg.input_bands, wanted, "--input-bands")
        hr_idx = select_bands(hr, cfg.input_bands, wanted, "--input-bands")
        if min(lr.height, lr.width) < cfg.patch:
            raise InputError(f"{lr.path}: {lr.height}x{lr.width} px is smaller than --patch {cfg.patch}")
        lg, lo = band_gain_offset(lr, lr_idx, cfg.lr_scale)
        hg, ho = band_gain_offset(hr, hr_idx, cfg.hr_scale)
        for info, idx, g, o, flag in ((lr, lr_idx, lg, lo, "--lr-scale"), (hr, hr_idx, hg, ho, "--hr-scale")):
            raster = read_raster(info.path, window=_centre(info, 64))
            data = raster.data[idx] * g[:, None, None] + o[:, None, None]
            scaled = was_scaled(cfg.lr_scale if flag == "--lr-scale" else cfg.hr_scale, g, o)
            check_not_tiny(check_reflectance(data, raster.valid, info.path, flag, scaled=scaled), info.path, flag, scaled=scaled)
        pairs.append(Pair(lr.path, hr.path, lr_idx, hr_idx, lr.height, lr.width, lg, lo, hg, ho))
    return pairs


def _centre(info, size: int):
    """A window of at most ``size`` px at the centre of a file (for the value-range check)."""
    from rasterio.windows import Window

    h, w = min(size, info.height), min(size, info.width)
    return Window((info.width - w) // 2, (info.height - h) // 2, w, h)


_FILE_CACHE: dict[Path, tuple[np.ndarray, np.ndarray]] = {}


def _read_window(path: Path, pixels: int, x: int, y: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(data, valid)`` of a ``size`` px window; files of at most :data:`CACHE_PIXELS` px are read once and kept."""
    from rasterio.windows import Window

    if pixels > CACHE_PIXELS:
        r = read_raster(path, window=Window(x, y, size, size))
        return r.data, r.valid
    if path not in _FILE_CACHE:
        r = read_raster(path)
        _FILE_CACHE[path] = (r.data, r.valid)
    data, valid = _FILE_CACHE[path]
    return data[:, y:y + size, x:x + size], valid[y:y + size, x:x + size]


def draw_batch(pairs: list[Pair], cfg: TrainConfig, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (LR, HR) reflectance batch of ``step``: deterministic in (seed, step); patches with nodata are redrawn."""
    rng = np.random.default_rng([cfg.seed, step])
    weights = np.array([p.height * p.width for p in pairs], dtype=np.float64)
    lrs, hrs = [], []
    p_, s = cfg.patch, cfg.scale
    for _ in range(cfg.batch):
        for _attempt in range(50):
            pair = pairs[rng.choice(len(pairs), p=weights / weights.sum())]
            y, x = int(rng.integers(0, pair.height - p_ + 1)), int(rng.integers(0, pair.width - p_ + 1))
            lr_data, lr_valid = _read_window(pair.lr, pair.height * pair.width, x, y, p_)
            hr_data, hr_valid = _read_window(pair.hr, pair.height * pair.width * s * s, x * s, y * s, p_ * s)
            if lr_valid.mean() >= cfg.min_valid and hr_valid.mean() >= cfg.min_valid:
                break
        else:
            raise InputError(f"no patch with >= {cfg.min_valid:.0%} valid pixels found in 50 draws; check nodata in {cfg.lr_dir} / {cfg.hr_dir}")
        a = np.nan_to_num(lr_data[pair.lr_idx] * pair.lr_gain[:, None, None] + pair.lr_offset[:, None, None])
        b = np.nan_to_num(hr_data[pair.hr_idx] * pair.hr_gain[:, None, None] + pair.hr_offset[:, None, None])
        k, flip = int(rng.integers(0, 4)), bool(rng.integers(0, 2))
        a, b = np.rot90(a, k, axes=(1, 2)), np.rot90(b, k, axes=(1, 2))
        if flip:
            a, b = a[:, :, ::-1], b[:, :, ::-1]
        lrs.append(torch.from_numpy(np.ascontiguousarray(a)))
        hrs.append(torch.from_numpy(np.ascontiguousarray(b)))
    return torch.stack(lrs), torch.stack(hrs)


# ------------------------------------------------------------------------------------------------ families
class Family:
    """What differs between trainable models: network, loss, checkpoint and the adapter used for validation."""

    name = ""

    def default_schedule(self) -> dict:
        raise NotImplementedError

    def model_config(self, cfg: TrainConfig, bands: tuple[str, ...]) -> dict[str, Any]:
        """The JSON config stored in the checkpoint (network, schedule, bands, value map)."""
        raise NotImplementedError

    def build(self, config: dict[str, Any]) -> torch.nn.Module:
        raise NotImplementedError

    def loss(self, net: torch.nn.Module, x0: torch.Tensor, y_lr: torch.Tensor, g: torch.Generator, trainer: Trainer) -> torch.Tensor:
        """Training loss of one batch: ``x0`` HR and ``y_lr`` LR, both value-mapped, on the device."""
        raise NotImplementedError

    def save_model(self, path: Path, net: torch.nn.Module, config: dict[str, Any], step: int) -> None:
        raise NotImplementedError

    def adapter(self, net: torch.nn.Module, config: dict[str, Any], options: SamplingOptions, device: str) -> Adapter:
        raise NotImplementedError


class SR3Family(Family):
    """SR3 (Saharia et al. 2022): eps-prediction on a diffusers ``UNet2DModel`` conditioned on bicubic(LR)."""

    name = "sr3"

    def default_schedule(self) -> dict:
        from gapeval.infer.sr3 import DEFAULT_SCHEDULE

        return dict(DEFAULT_SCHEDULE)

    def model_config(self, cfg: TrainConfig, bands: tuple[str, ...]) -> dict[str, Any]:
        from gapeval.infer.sr3 import model_config, unet_config

        unet = {**unet_config(len(bands), cfg.width, cfg.channel_mult, cfg.layers_per_block, cfg.attention_levels, cfg.norm_groups,
                                head_channels=min(32, cfg.width)), **cfg.network}
        return model_config(bands, cfg.scale, unet, cfg.ref_max, cfg.schedule)

    def build(self, config: dict[str, Any]) -> torch.nn.Module:
        from gapeval.infer.sr3 import build_unet

        return build_unet(config)

    def loss(self, net, x0, y_lr, g, trainer) -> torch.Tensor:
        from diffusers import DDPMScheduler

        from gapeval.infer.sr3 import condition

        if not hasattr(trainer, "_ddpm"):
            trainer._ddpm = DDPMScheduler.from_config(trainer.cfg.schedule)
        sched = trainer._ddpm
        cond = condition(y_lr, trainer.cfg.scale)
        noise = torch.randn(x0.shape, generator=g).to(x0.device)
        t = torch.randint(0, sched.config.num_train_timesteps, (x0.shape[0],), generator=g).to(x0.device)
        x_t = sched.add_noise(x0, noise, t)
        with autocast(trainer.device, trainer.precision):
            pred = net(torch.cat([x_t, cond], dim=1), t).sample
        return F.mse_loss(pred.float(), noise)

    def save_model(self, path, net, config, step) -> None:
        save_safetensors(path, {f"unet.{k}": v for k, v in net.state_dict().items()},
                         {"model": self.name, "config": json.dumps(config), "step": str(step), "weights": "ema"})

    def adapter(self, net, config, options, device) -> Adapter:
        from gapeval.infer.sr3 import SR3

        return SR3(net, config, options, device, "fp32")


class ResShiftFamily(Family):
    """ResShift (Yue et al. 2023) in pixel space: x0-prediction on the residual-shifting chain, Swin-UNet denoiser."""

    name = "resshift"

    def default_schedule(self) -> dict:
        from gapeval.infer.resshift import ShiftSchedule

        return asdict(ShiftSchedule())

    def model_config(self, cfg: TrainConfig, bands: tuple[str, ...]) -> dict[str, Any]:
        from gapeval.infer.resshift import ShiftSchedule, unet_config

        ShiftSchedule(**cfg.schedule)  # validates the keys
        net = {"image_size": cfg.patch * cfg.scale, **cfg.network}  # the Swin windows are fixed for the HR patch side
        unet = unet_config(len(bands), cfg.width, cfg.channel_mult, cfg.layers_per_block, cfg.attention_levels, cfg.norm_groups, **net)
        return {"unet": unet, "schedule": dict(cfg.schedule), "bands": list(bands), "scale": cfg.scale,
                "value_map": {"kind": "linear", "gain": cfg.ref_max}}

    def build(self, config: dict[str, Any]) -> torch.nn.Module:
        from gapeval.infer.resshift import build_unet

        return build_unet(config)

    def loss(self, net, x0, y_lr, g, trainer) -> torch.Tensor:
        from gapeval.infer.resshift import ShiftSchedule

        if not hasattr(trainer, "_etas"):
            trainer._etas = torch.tensor(ShiftSchedule(**trainer.cfg.schedule).etas(), dtype=torch.float32)
        etas, kappa = trainer._etas, float(trainer.cfg.schedule.get("kappa", 2.0))
        y0 = F.interpolate(y_lr, scale_factor=trainer.cfg.scale, mode="bicubic", align_corners=False)
        noise = torch.randn(x0.shape, generator=g).to(x0.device)
        t = torch.randint(0, len(etas), (x0.shape[0],), generator=g)
        eta = etas[t].to(x0.device)[:, None, None, None]
        x_t = x0 + eta * (y0 - x0) + kappa * eta.sqrt() * noise
        with autocast(trainer.device, trainer.precision):
            pred = net(x_t / (kappa ** 2 * eta + 1.0).sqrt(), t.to(x0.device), y0)
        return F.mse_loss(pred.float(), x0)

    def save_model(self, path, net, config, step) -> None:
        from gapeval.infer.resshift import ShiftSchedule, save_checkpoint

        save_checkpoint(path, net, None, ShiftSchedule(**config["schedule"]), config["bands"], ValueMap(**config["value_map"]),
                        scale=config["scale"], metadata={"step": str(step), "weights": "ema"})

    def adapter(self, net, config, options, device) -> Adapter:
        from gapeval.infer.resshift import ResShift, ShiftSchedule

        return ResShift(net, None, ShiftSchedule(**config["schedule"]), config["bands"], ValueMap(**config["value_map"]), options,
                        device, "fp32", scale=config["scale"])


_FAMILIES: dict[str, Family] = {f.name: f for f in (SR3Family(), ResShiftFamily())}


def family(model: str) -> Family:
    """The training family of ``model`` (``sr3`` or ``resshift``)."""
    if model not in _FAMILIES:
        raise InputError(f"unknown model to train {model!r}; trainable: {', '.join(_FAMILIES)}")
    return _FAMILIES[model]


#: ``validate(trainer) -> {name: value}``, called every ``val_every`` steps (and at step 0) with the EMA network.
Validator = Callable[["Trainer"], dict[str, float]]


class Trainer:
    """The training loop shared by the families, with exact resume (see module docstring)."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.family = family(cfg.model)
        self.device = torch.device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.bands = tuple(b for b in resolve(cfg.bands) if b)
        depth = 2 ** (len(cfg.channel_mult) - 1)
        if cfg.patch * cfg.scale % depth:
            raise InputError(f"--patch {cfg.patch} x scale {cfg.scale} must be a multiple of {depth} (UNet depth)")
        try:
            self.model_config = self.family.model_config(cfg, self.bands)
            torch.manual_seed(cfg.seed)  # weight initialisation
            self.unet = self.family.build(self.model_config).to(self.device)
        except (TypeError, ValueError) as exc:
            raise InputError(f"invalid {cfg.model} network settings {cfg.network or ''} ({exc})") from exc
        self.ema = copy.deepcopy(self.unet).eval().requires_grad_(False)
        self.opt = torch.optim.AdamW(self.unet.parameters(), lr=cfg.learning_rate, weight_decay=0.0)
        self.values = ValueMap("linear", cfg.ref_max)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self.step = 0
        self.state_path, self.model_path = cfg.out / state_file(cfg.model), cfg.out / model_file(cfg.model)
        make_folder(cfg.out, "--out")
        remove_stale_temporaries(cfg.out)
        self._resume()

    # -- state ------------------------------------------------------------------------------------
    def _resume(self) -> None:
        path = self.state_path
        if not path.is_file():
            return
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = dict(fh.metadata() or {})
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open is not a dict
            saved = json.loads(meta.get("train_config", "{}"))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise WeightsError(f"{path}: not a readable training state ({exc}); delete it to start over, or use another --out") from exc
        mine = json.loads(json.dumps(self.cfg.fixed()))
        diff = {k: (saved.get(k), mine[k]) for k in mine if saved.get(k) != mine[k]}
        if diff:
            raise InputError(f"{path}: the run in {self.cfg.out} was started with other settings {diff} (saved, now); use another --out or the same settings")
        try:
            self.unet.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
            self.ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}, strict=True)
            params = list(self.unet.parameters())
            state = {}
            for i in range(len(params)):
                if f"opt.{i}.step" in tensors:
                    state[i] = {"step": tensors[f"opt.{i}.step"], "exp_avg": tensors[f"opt.{i}.exp_avg"].to(self.device),
                                "exp_avg_sq": tensors[f"opt.{i}.exp_avg_sq"].to(self.device)}
            self.opt.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
            self.step = int(meta["step"])
        except (RuntimeError, KeyError, ValueError) as exc:  # tensors missing or of another shape: a damaged state file
            raise WeightsError(f"{path}: cannot resume from this training state ({exc}); delete it to start over, or use another --out") from exc
        log.info("resumed %s at step %d", path, self.step)

    def save(self) -> None:
        """Write the training state and the inference checkpoint (atomically)."""
        tensors = {f"model.{k}": v for k, v in self.unet.state_dict().items()}
        tensors.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
        sd = self.opt.state_dict()
        for i, st in sd["state"].items():
            tensors.update({f"opt.{i}.step": st["step"].reshape(()).float(), f"opt.{i}.exp_avg": st["exp_avg"], f"opt.{i}.exp_avg_sq": st["exp_avg_sq"]})
        meta = {"model": f"{self.cfg.model}-train-state", "step": str(self.step), "train_config": json.dumps(self.cfg.fixed()),
                "param_groups": json.dumps(sd["param_groups"]), "config": json.dumps(self.model_config)}
        save_safetensors(self.state_path, tensors, meta)
        self.family.save_model(self.model_path, self.ema, self.model_config, self.step)

    def adapter(self, options: SamplingOptions) -> Adapter:
        """An inference adapter on the current EMA weights (shared with the trainer: no copy)."""
        return self.family.adapter(self.ema, self.model_config, options, str(self.device))

    # -- loop -------------------------------------------------------------------------------------
    def train_step(self, lr: torch.Tensor, hr: torch.Tensor, step: int) -> float:
        """One optimisation step on a reflectance batch; returns the loss."""
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + step)
        x0 = self.values.to_model(hr).to(self.device)
        y_lr = self.values.to_model(lr).to(self.device)
        self.unet.train()
        loss = self.family.loss(self.unet, x0, y_lr, g, self)
        if not torch.isfinite(loss):
            raise WeightsError(f"training diverged at step {step} (loss {loss.item()}); lower --learning-rate or use --precision fp32")
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            loss.backward()
            self.opt.step()
        with torch.no_grad():
            decay = min(self.cfg.ema_decay, (1 + step) / (10 + step))
            for pe, p in zip(self.ema.parameters(), self.unet.parameters()):
                pe.lerp_(p.detach(), 1 - decay)
        return float(loss.item())

    def run(self, pairs: list[Pair], progress: Callable[[int, float], None] | None = None, validate: Validator | None = None) -> Path:
        """Train until ``cfg.steps``; returns the inference checkpoint path."""
        cfg = self.cfg
        log_path, val_path = cfg.out / LOG_FILE, cfg.out / VAL_LOG_FILE
        lines = log_path.read_text().splitlines() if log_path.is_file() else ["step,loss"]
        lines = lines[: 1 + self.step]  # drop entries written after the last saved state
        val_lines = _read_val_log(val_path, self.step) if validate and cfg.val_every else []
        if validate and cfg.val_every and self.step == 0 and not val_lines[1:]:
            val_lines = _val_row(val_lines, 0, validate(self))
        while self.step < cfg.steps:
            lr, hr = draw_batch(pairs, cfg, self.step)
            loss = self.train_step(lr, hr, self.step)
            self.step += 1
            lines.append(f"{self.step},{loss:.6g}")
            if validate and cfg.val_every and (self.step % cfg.val_every == 0 or self.step == cfg.steps):
                val_lines = _val_row(val_lines, self.step, validate(self))
            if progress:
                progress(self.step, loss)
            if self.step % cfg.save_every == 0 or self.step == cfg.steps:
                # logs first: rows past the saved state are cut on resume, rows missing before it could not be redone
                write_text_atomic(log_path, "\n".join(lines) + "\n")
                if val_lines:
                    write_text_atomic(val_path, "\n".join(val_lines) + "\n")
                self.save()
        if not self.model_path.is_file():
            self.save()
        return self.model_path


def _read_val_log(path: Path, step: int) -> list[str]:
    """Rows of ``val_log.csv`` up to the saved ``step`` (later rows belong to steps that will be redone)."""
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    return lines[:1] + [r for r in lines[1:] if int(r.split(",")[0]) <= step]


def _val_row(lines: list[str], step: int, values: dict[str, float]) -> list[str]:
    names = sorted(values)
    if not lines:
        lines = ["step," + ",".join(names)]
    return [*lines, f"{step}," + ",".join(f"{values[n]:.6g}" for n in names)]


def train(cfg: TrainConfig, progress: Callable[[int, float], None] | None = None, validate: Validator | None = None) -> Path:
    """Find the pairs and train (resuming from ``cfg.out`` when a state file is there)."""
    if not cfg.lr_dir.exists() or not cfg.hr_dir.exists():
        raise MissingFileError(f"--lr {cfg.lr_dir} or --hr {cfg.hr_dir} does not exist")
    if cfg.steps < 1 or cfg.batch < 1 or cfg.save_every < 1 or not math.isfinite(cfg.learning_rate):
        raise InputError("--steps, --batch and --save-every must be >= 1")
    pairs = find_pairs(cfg)
    return Trainer(cfg).run(pairs, progress, validate)
