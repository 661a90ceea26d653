"""``gapeval train sr3``: train the SR3 denoiser on paired low/high-resolution GeoTIFF folders, resumably.

Pairs are files with the same stem in ``--lr`` and ``--hr``; each HR image must be exactly ``scale`` times the LR
image (and, when both are georeferenced, on the matching grid). Each step draws ``batch`` random LR patches
(``patch`` px) and their HR patches (windowed reads), with random flips/rotations, and minimises the noise-prediction
loss ``|| eps - eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, bicubic(LR), t) ||^2`` (Ho et al. 2020; SR3,
Saharia et al. 2022) with AdamW and an EMA of the weights.

Everything random in step ``k`` derives from ``(seed, k)``, and the model, EMA and optimizer state are saved as
safetensors (``sr3_state.safetensors``, atomically, every ``save_every`` steps and at the end), so a resumed run
continues exactly as an uninterrupted one. ``sr3.safetensors`` (EMA weights + config) is what
``gapeval infer --model sr3`` loads; ``train_log.csv`` records the loss.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from affine import Affine

from gapeval.bands import select_bands
from gapeval.grids import Grid
from gapeval.infer.base import ValueMap, autocast, resolve_precision
from gapeval.infer.checkpoints import save_safetensors
from gapeval.infer.pipeline import list_inputs
from gapeval.infer.sr3 import DEFAULT_SCHEDULE, NAME, build_unet, condition, model_config, unet_config
from gapeval.reflectance import check_not_tiny, check_reflectance, declared_scale
from lpips_sat.atomic import make_folder, remove_stale_temporaries, write_text_atomic
from lpips_sat.bands import resolve
from lpips_sat.errors import InputError, MissingFileError, WeightsError
from lpips_sat.raster import band_gain_offset, raster_info, read_raster

log = logging.getLogger(__name__)

STATE_FILE, MODEL_FILE, LOG_FILE = "sr3_state.safetensors", "sr3.safetensors", "train_log.csv"


@dataclass
class TrainConfig:
    """Settings of one training run (the architecture/data fields must stay equal across resumes)."""

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
    schedule: dict = field(default_factory=lambda: dict(DEFAULT_SCHEDULE))

    #: fields that define the model and the data; a resume with other values is refused
    FIXED = ("bands", "scale", "lr_scale", "hr_scale", "patch", "batch", "learning_rate", "width", "channel_mult", "layers_per_block",
             "attention_levels", "norm_groups", "ref_max", "ema_decay", "seed", "schedule")

    def fixed(self) -> dict:
        d = asdict(self)
        return {k: (list(d[k]) if isinstance(d[k], tuple) else d[k]) for k in self.FIXED}


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
            declared = declared_scale(info, idx, g, o)
            check_not_tiny(check_reflectance(data, raster.valid, info.path, flag, declared), info.path, flag, declared)
        pairs.append(Pair(lr.path, hr.path, lr_idx, hr_idx, lr.height, lr.width, lg, lo, hg, ho))
    return pairs


def _centre(info, size: int):
    """A window of at most ``size`` px at the centre of a file (for the value-range check)."""
    from rasterio.windows import Window

    h, w = min(size, info.height), min(size, info.width)
    return Window((info.width - w) // 2, (info.height - h) // 2, w, h)


def draw_batch(pairs: list[Pair], cfg: TrainConfig, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (LR, HR) reflectance batch of ``step``: deterministic in (seed, step); patches with nodata are redrawn."""
    from rasterio.windows import Window

    rng = np.random.default_rng([cfg.seed, step])
    weights = np.array([p.height * p.width for p in pairs], dtype=np.float64)
    lrs, hrs = [], []
    p_, s = cfg.patch, cfg.scale
    for _ in range(cfg.batch):
        for _attempt in range(50):
            pair = pairs[rng.choice(len(pairs), p=weights / weights.sum())]
            y, x = int(rng.integers(0, pair.height - p_ + 1)), int(rng.integers(0, pair.width - p_ + 1))
            lr = read_raster(pair.lr, window=Window(x, y, p_, p_))
            hr = read_raster(pair.hr, window=Window(x * s, y * s, p_ * s, p_ * s))
            if lr.valid.mean() >= cfg.min_valid and hr.valid.mean() >= cfg.min_valid:
                break
        else:
            raise InputError(f"no patch with >= {cfg.min_valid:.0%} valid pixels found in 50 draws; check nodata in {cfg.lr_dir} / {cfg.hr_dir}")
        a = np.nan_to_num(lr.data[pair.lr_idx] * pair.lr_gain[:, None, None] + pair.lr_offset[:, None, None])
        b = np.nan_to_num(hr.data[pair.hr_idx] * pair.hr_gain[:, None, None] + pair.hr_offset[:, None, None])
        k, flip = int(rng.integers(0, 4)), bool(rng.integers(0, 2))
        a, b = np.rot90(a, k, axes=(1, 2)), np.rot90(b, k, axes=(1, 2))
        if flip:
            a, b = a[:, :, ::-1], b[:, :, ::-1]
        lrs.append(torch.from_numpy(np.ascontiguousarray(a)))
        hrs.append(torch.from_numpy(np.ascontiguousarray(b)))
    return torch.stack(lrs), torch.stack(hrs)


class Trainer:
    """SR3 training loop with exact resume (see module docstring)."""

    def __init__(self, cfg: TrainConfig) -> None:
        from diffusers import DDPMScheduler

        self.cfg = cfg
        self.device = torch.device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        bands = tuple(b for b in resolve(cfg.bands) if b)
        if cfg.patch * cfg.scale % 2 ** (len(cfg.channel_mult) - 1):
            raise InputError(f"--patch {cfg.patch} x scale {cfg.scale} must be a multiple of {2 ** (len(cfg.channel_mult) - 1)} (UNet depth)")
        self.model_config = model_config(bands, cfg.scale, unet_config(len(bands), cfg.width, cfg.channel_mult, cfg.layers_per_block,
                                                                       cfg.attention_levels, cfg.norm_groups), cfg.ref_max, cfg.schedule)
        torch.manual_seed(cfg.seed)  # weight initialisation
        self.unet = build_unet(self.model_config).to(self.device)
        self.ema = copy.deepcopy(self.unet).eval().requires_grad_(False)
        self.opt = torch.optim.AdamW(self.unet.parameters(), lr=cfg.learning_rate, weight_decay=0.0)
        self.scheduler = DDPMScheduler.from_config(cfg.schedule)
        self.values = ValueMap("linear", cfg.ref_max)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self.step = 0
        make_folder(cfg.out, "--out")
        remove_stale_temporaries(cfg.out)
        self._resume()

    # -- state ------------------------------------------------------------------------------------
    def _resume(self) -> None:
        path = self.cfg.out / STATE_FILE
        if not path.is_file():
            return
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open is not a dict
        saved = json.loads(meta.get("train_config", "{}"))
        mine = json.loads(json.dumps(self.cfg.fixed()))
        diff = {k: (saved.get(k), mine[k]) for k in mine if saved.get(k) != mine[k]}
        if diff:
            raise InputError(f"{path}: the run in {self.cfg.out} was started with other settings {diff} (saved, now); use another --out or the same settings")
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
        log.info("resumed %s at step %d", path, self.step)

    def save(self) -> None:
        """Write the training state and the inference checkpoint (atomically)."""
        tensors = {f"model.{k}": v for k, v in self.unet.state_dict().items()}
        tensors.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
        sd = self.opt.state_dict()
        for i, st in sd["state"].items():
            tensors.update({f"opt.{i}.step": st["step"].reshape(()).float(), f"opt.{i}.exp_avg": st["exp_avg"], f"opt.{i}.exp_avg_sq": st["exp_avg_sq"]})
        meta = {"model": "sr3-train-state", "step": str(self.step), "train_config": json.dumps(self.cfg.fixed()),
                "param_groups": json.dumps(sd["param_groups"]), "config": json.dumps(self.model_config)}
        save_safetensors(self.cfg.out / STATE_FILE, tensors, meta)
        save_safetensors(self.cfg.out / MODEL_FILE, {f"unet.{k}": v for k, v in self.ema.state_dict().items()},
                         {"model": NAME, "config": json.dumps(self.model_config), "step": str(self.step), "weights": "ema"})

    # -- loop -------------------------------------------------------------------------------------
    def train_step(self, lr: torch.Tensor, hr: torch.Tensor, step: int) -> float:
        """One optimisation step on a reflectance batch; returns the loss."""
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + step)
        x0 = self.values.to_model(hr).to(self.device)
        cond = condition(self.values.to_model(lr).to(self.device), self.cfg.scale)
        noise = torch.randn(x0.shape, generator=g).to(self.device)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (x0.shape[0],), generator=g).to(self.device)
        x_t = self.scheduler.add_noise(x0, noise, t)
        self.unet.train()
        with autocast(self.device, self.precision):
            pred = self.unet(torch.cat([x_t, cond], dim=1), t).sample
        loss = F.mse_loss(pred.float(), noise)
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

    def run(self, pairs: list[Pair], progress: Callable[[int, float], None] | None = None) -> Path:
        """Train until ``cfg.steps``; returns the inference checkpoint path."""
        log_path = self.cfg.out / LOG_FILE
        lines = log_path.read_text().splitlines() if log_path.is_file() else ["step,loss"]
        lines = lines[: 1 + self.step]  # drop entries written after the last saved state
        while self.step < self.cfg.steps:
            lr, hr = draw_batch(pairs, self.cfg, self.step)
            loss = self.train_step(lr, hr, self.step)
            self.step += 1
            lines.append(f"{self.step},{loss:.6g}")
            if progress:
                progress(self.step, loss)
            if self.step % self.cfg.save_every == 0 or self.step == self.cfg.steps:
                self.save()
                write_text_atomic(log_path, "\n".join(lines) + "\n")
        if not (self.cfg.out / MODEL_FILE).is_file():
            self.save()
        return self.cfg.out / MODEL_FILE


def train(cfg: TrainConfig, progress: Callable[[int, float], None] | None = None) -> Path:
    """Find the pairs and train (resuming from ``cfg.out`` when a state file is there)."""
    if not cfg.lr_dir.exists() or not cfg.hr_dir.exists():
        raise MissingFileError(f"--lr {cfg.lr_dir} or --hr {cfg.hr_dir} does not exist")
    if cfg.steps < 1 or cfg.batch < 1 or cfg.save_every < 1 or not math.isfinite(cfg.learning_rate):
        raise InputError("--steps, --batch and --save-every must be >= 1")
    pairs = find_pairs(cfg)
    return Trainer(cfg).run(pairs, progress)
