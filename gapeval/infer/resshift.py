"""``resshift``: residual-shifting diffusion (Yue et al. 2023, ResShift), few-step, in a VQ-f4 latent; SinSR one-step.

Forward process (Yue et al. 2023, Eq. 3-5): with ``e0 = y0 - x0`` the residual between the upsampled low-resolution
latent ``y0`` and the high-resolution latent ``x0``, ``q(x_t | x0, y0) = N(x0 + eta_t e0, kappa^2 eta_t I)``,
``eta_1 -> 0``, ``eta_T -> 1``. Schedule (Eq. 10): ``sqrt(eta_t) = sqrt(eta_1) * (sqrt(eta_T)/sqrt(eta_1)) ** (((t-1)/(T-1)) ** p)``
with ``sqrt(eta_1) = min(min_noise_level / kappa, min_noise_level)`` as in the released configurations.

Reverse step from ``t`` to ``s < t`` (the Gaussian posterior, Eq. 7, for any earlier step, so fewer steps than the
trained ``T`` skip along the same chain): ``x_s ~ N((eta_s/eta_t) x_t + (1 - eta_s/eta_t) f(x_t), kappa^2 (eta_s/eta_t)(eta_t - eta_s) I)``,
``f`` the network's x0 prediction; the chain starts at ``x_T = y0 + kappa sqrt(eta_T) noise`` and the last step
returns ``f``. The network sees ``x_t / sqrt(kappa^2 eta_t + 1)`` (ResShift's input normalisation), the trained
step index ``t - 1`` and the low-resolution image. ``--steps 1`` is a single network call at ``t = T`` (the one-step
generation SinSR distils, Wang et al. 2024).

Checkpoint: a gapeval ``.safetensors`` with ``unet.*`` (:class:`~gapeval.infer.swin_unet.SwinUNet`) and ``vqvae.*``
(diffusers ``VQModel``) tensors and a JSON ``config`` in the metadata (see :func:`save_checkpoint`). Published
ResShift/SinSR ``.pth`` files use the authors' module names, for which no key map ships here. A checkpoint without a
``vqvae`` entry runs the same chain in pixel space (``x0``/``y0`` are the value-mapped HR image and the bicubically
upsampled LR image; ``scale`` in the config) — what ``gapeval train resshift`` writes for CPU-sized models.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gapeval.infer.base import Adapter, SamplingOptions, ValueMap, batch_randn, check_tile
from gapeval.infer.checkpoints import CheckpointSource, config_from_metadata, load_strict, save_safetensors, split_prefixed
from gapeval.infer.swin_unet import SwinUNet, SwinUNetConfig
from lpips_sat.bands import resolve
from lpips_sat.errors import InputError, WeightsError

NAME = "resshift"


@dataclass(frozen=True)
class ShiftSchedule:
    """ResShift's eta schedule; defaults are the 15-step x4 real-SR configuration (kappa 2, p 0.3)."""

    steps: int = 15
    kappa: float = 2.0
    min_noise_level: float = 0.04
    etas_end: float = 0.99
    power: float = 0.3

    def etas(self) -> np.ndarray:
        """``eta_t`` for t = 1..T (float64, increasing)."""
        sqrt_first = min(self.min_noise_level / self.kappa, self.min_noise_level)
        if self.steps == 1:
            return np.array([self.etas_end ** 2])
        frac = (np.arange(self.steps) / (self.steps - 1)) ** self.power
        return (sqrt_first * (self.etas_end / sqrt_first) ** frac) ** 2


def step_indices(trained: int, steps: int) -> list[int]:
    """``steps`` trained step indices (0-based, decreasing) from ``trained - 1`` down to 0 (just ``trained - 1`` for one step)."""
    if not 1 <= steps <= trained:
        raise InputError(f"{NAME}: --steps must lie in 1..{trained} (the trained chain length), got {steps}")
    if steps == 1:
        return [trained - 1]
    return [round(float(v)) for v in np.linspace(trained - 1, 0, steps)]


def unet_config(bands: int, width: int = 160, mult: Sequence[int] = (1, 2, 2, 4), layers: int = 2, swin_levels: Sequence[int] = (0, 1, 2, 3),
                norm_groups: int = 32, latent_channels: int | None = None, **extra) -> dict:
    """Config dict of the denoiser: ``latent_channels`` (default ``bands``: pixel space) in and out, ``bands`` as condition."""
    ch = latent_channels or bands
    cfg = SwinUNetConfig(in_channels=ch, cond_channels=bands, out_channels=ch, model_channels=width, channel_mult=tuple(mult),
                         num_res_blocks=layers, swin_levels=tuple(swin_levels), norm_groups=norm_groups)
    return {**cfg.as_dict(), **extra}


def build_unet(config: dict) -> SwinUNet:
    """An (untrained) denoiser from its config dict (as stored under ``unet`` in a checkpoint)."""
    return SwinUNet(SwinUNetConfig.from_dict(config))


class ResShift(Adapter):
    """ResShift / SinSR: Swin-UNet x0-predictor + ``VQModel`` (or pixel space: ``vqvae=None``) + the residual-shifting sampler."""

    name = NAME
    default_tile = 64

    def __init__(self, unet: SwinUNet, vqvae, schedule: ShiftSchedule, bands: Sequence[str], values: ValueMap,
                 options: SamplingOptions, device="cpu", precision="auto", scale: int = 4) -> None:
        super().__init__(device, precision)
        self.unet = unet.to(self.device).eval()
        self.vqvae = vqvae.to(self.device).eval() if vqvae is not None else None
        self.schedule, self.bands, self.values = schedule, tuple(bands), values
        self.etas = torch.tensor(schedule.etas(), dtype=torch.float64)
        self.steps = options.steps or schedule.steps
        self.indices = step_indices(schedule.steps, self.steps)
        if vqvae is not None:
            self.scale = 2 ** (len(vqvae.config.block_out_channels) - 1)
            self.size_multiple = unet.size_multiple
        else:  # pixel space: the network runs on the x scale grid
            self.scale = int(scale)
            self.size_multiple = max(1, unet.size_multiple // math.gcd(unet.size_multiple, self.scale))
        if options.rgb_gain is not None and values.kind == "rgb_gain":
            self.values = ValueMap("rgb_gain", options.rgb_gain)

    def settings(self) -> dict[str, str]:
        s = self.schedule
        return {"steps": str(self.steps), "sampler": "resshift" if self.steps > 1 else "resshift-one-step", "eta": "n/a",
                "kappa": f"{s.kappa:g}", "trained_steps": str(s.steps), "value_map": self.values.describe()}

    @torch.inference_mode()
    def sample(self, lr: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        check_tile(lr, self)
        B = lr.shape[0]
        lq = self.values.to_model(lr.to(self.device, torch.float32))
        up = F.interpolate(lq, scale_factor=self.scale, mode="bicubic", align_corners=False)
        y0 = self.vqvae.encode(up).latents if self.vqvae is not None else up
        if lq.shape[-2:] != y0.shape[-2:]:
            lq = F.interpolate(lq, size=y0.shape[-2:], mode="bicubic", align_corners=False)
        kappa = self.schedule.kappa
        eta = [float(e) for e in self.etas]
        t0 = self.indices[0]
        x = y0 + kappa * math.sqrt(eta[t0]) * batch_randn(generators, y0.shape[1:], self.device)
        x0 = x
        for i, t in enumerate(self.indices):
            x_in = x / math.sqrt(kappa ** 2 * eta[t] + 1.0)
            with self.denoiser_autocast():
                x0 = self.unet(x_in, torch.full((B,), t, device=self.device, dtype=torch.long), lq).float()
            if i == len(self.indices) - 1:
                break
            s = self.indices[i + 1]
            ratio = eta[s] / eta[t]
            std = kappa * math.sqrt(ratio * (eta[t] - eta[s]))
            x = ratio * x + (1.0 - ratio) * x0 + std * batch_randn(generators, x.shape[1:], self.device)
        decoded = self.vqvae.decode(x0).sample if self.vqvae is not None else x0
        return self.values.from_model(decoded)


def save_checkpoint(path: str | Path, unet: SwinUNet, vqvae, schedule: ShiftSchedule = ShiftSchedule(),
                    bands: Sequence[str] = ("B04", "B03", "B02"), values: ValueMap | None = None, scale: int = 4,
                    metadata: dict[str, str] | None = None) -> str:
    """Write a ``resshift`` checkpoint (unet.* [+ vqvae.*] tensors, JSON config in the metadata); return its sha256.

    ``vqvae=None`` writes a pixel-space checkpoint (``scale`` is then the super-resolution factor)."""
    values = values or ValueMap()
    config = {"unet": unet.config.as_dict(), "schedule": asdict(schedule), "bands": list(bands),
              "value_map": {"kind": values.kind, "gain": values.gain}}
    tensors = {f"unet.{k}": v for k, v in unet.state_dict().items()}
    if vqvae is not None:
        config["vqvae"] = {k: v for k, v in dict(vqvae.config).items() if not k.startswith("_")}
        tensors.update({f"vqvae.{k}": v for k, v in vqvae.state_dict().items()})
    else:
        config["scale"] = int(scale)
    return save_safetensors(path, tensors, {"model": NAME, "config": json.dumps(config), **(metadata or {})})


def load(source: CheckpointSource, options: SamplingOptions, device="cpu", precision="auto") -> ResShift:
    """Build from a gapeval ``resshift`` safetensors checkpoint (strict loading)."""
    from diffusers import VQModel

    config = config_from_metadata(source, NAME)
    latent = "vqvae" in config
    parts = split_prefixed(source.tensors(), ("unet", "vqvae") if latent else ("unet",), str(source.path))
    try:
        ucfg = SwinUNetConfig.from_dict(config["unet"])
        schedule = ShiftSchedule(**config.get("schedule", {}))
        bands = tuple(b for b in resolve(config.get("bands", ["B04", "B03", "B02"])) if b)
        values = ValueMap(**config.get("value_map", {}))
        vqvae = VQModel.from_config(config["vqvae"]) if latent else None
        scale = int(config.get("scale", 4))
    except (KeyError, TypeError, ValueError) as exc:
        raise WeightsError(f"{source.path}: invalid resshift config in the metadata ({exc})") from exc
    if ucfg.cond_channels != len(bands):
        raise WeightsError(f"{source.path}: network conditions on {ucfg.cond_channels} bands but the config lists {list(bands)}")
    unet = SwinUNet(ucfg)
    load_strict(unet, parts["unet"], f"{source.path} (unet)")
    if vqvae is not None:
        load_strict(vqvae, parts["vqvae"], f"{source.path} (vqvae)")
    return ResShift(unet, vqvae, schedule, bands, values, options, device, precision, scale=scale)
