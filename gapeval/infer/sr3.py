"""``sr3``: an SR3-style trainable baseline, pixel-space conditional diffusion on a diffusers ``UNet2DModel``.

What it shares with SR3 (Saharia et al. 2022): eps-prediction on the noisy HR image concatenated with the bicubically
upsampled LR image. What it does NOT implement: SR3's conditioning on the continuous noise level sqrt(alpha_bar)
(sampled between steps during training) and its linear 1e-6..1e-2 schedule over 2000 training steps; this UNet
takes the discrete timestep of a 1000-step linear 1e-4..2e-2 schedule (the DDPM defaults). No SR3 weights were
published, so nothing is lost for loading; results are those of "an SR3-like model", not of SR3.

The UNet predicts the noise (eps) of the noisy high-resolution image given ``[x_t, bicubic x scale of the LR]``
concatenated on channels (SR3's conditioning). Values: reflectance -> ``2 * refl / ref_max - 1`` (``ref_max`` in the
checkpoint, default 0.5), no clipping. Sampling: DDIM (default 50 steps, eta 0) or DDPM (``--sampler ddpm``,
default 50 steps of the respaced chain) from the checkpoint's training schedule. Weights come from
``gapeval train sr3`` (:mod:`gapeval.infer.train`), so the training domain (synthetic ``gapeval degrade`` pairs
or real cross-sensor pairs) is the user's choice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from gapeval.infer.base import Adapter, SamplingOptions, ValueMap, batch_randn, check_tile, scheduler_step
from gapeval.infer.checkpoints import CheckpointSource, config_from_metadata, load_strict, split_prefixed
from lpips_sat.bands import resolve
from lpips_sat.errors import InputError, WeightsError

NAME = "sr3"
SAMPLERS = ("ddim", "ddpm")
DEFAULT_STEPS = 50
DEFAULT_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 2e-2, "beta_schedule": "linear", "prediction_type": "epsilon", "clip_sample": False}


def unet_config(bands: int, width: int = 64, mult: Sequence[int] = (1, 2, 2, 4), layers: int = 2, attention_levels: Sequence[int] = (3,),
                norm_groups: int = 32, head_channels: int = 32) -> dict[str, Any]:
    """``UNet2DModel`` kwargs of an SR3 denoiser: ``2 * bands`` in (noisy HR + upsampled LR), ``bands`` out."""
    n = len(mult)
    return {"in_channels": 2 * bands, "out_channels": bands, "block_out_channels": tuple(width * m for m in mult), "layers_per_block": layers,
                "down_block_types": tuple("AttnDownBlock2D" if L in attention_levels else "DownBlock2D" for L in range(n)),
                "up_block_types": tuple("AttnUpBlock2D" if L in attention_levels else "UpBlock2D" for L in reversed(range(n))),
                "norm_num_groups": norm_groups, "attention_head_dim": head_channels, "add_attention": True}


def model_config(bands: Sequence[str], scale: int, unet: dict[str, Any], ref_max: float = 0.5, schedule: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON config stored in an sr3 checkpoint."""
    return {"bands": list(bands), "scale": scale, "unet": unet, "value_map": {"kind": "linear", "gain": ref_max},
            "scheduler": dict(schedule or DEFAULT_SCHEDULE)}


def build_unet(config: dict[str, Any]):
    """An (untrained) ``UNet2DModel`` from a checkpoint config."""
    from diffusers import UNet2DModel

    cfg = dict(config["unet"])
    for k in ("block_out_channels", "down_block_types", "up_block_types"):
        cfg[k] = tuple(cfg[k])
    return UNet2DModel(**cfg)


def condition(lr_model: torch.Tensor, scale: int) -> torch.Tensor:
    """SR3 conditioning: the (value-mapped) LR image upsampled x ``scale`` bicubically."""
    return F.interpolate(lr_model, scale_factor=scale, mode="bicubic", align_corners=False)


class SR3(Adapter):
    """SR3: ``UNet2DModel`` on [x_t, upsampled LR], DDIM or DDPM sampling."""

    name = NAME
    default_tile = 64

    def __init__(self, unet, config: dict[str, Any], options: SamplingOptions, device="cpu", precision="auto") -> None:
        from diffusers import DDIMScheduler, DDPMScheduler

        super().__init__(device, precision)
        self.unet = unet.to(self.device).eval()
        self.bands = tuple(b for b in resolve(config["bands"]) if b)
        self.scale = int(config["scale"])
        self.values = ValueMap(**config["value_map"])
        self.sampler = options.sampler or "ddim"
        if self.sampler not in SAMPLERS:
            raise InputError(f"{NAME}: --sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        cls = DDIMScheduler if self.sampler == "ddim" else DDPMScheduler
        self.scheduler = cls.from_config({"clip_sample": False, **config["scheduler"]})  # x0 clipping only where the checkpoint asks
        self.steps = options.steps or DEFAULT_STEPS
        if not 1 <= self.steps <= self.scheduler.config.num_train_timesteps:
            raise InputError(f"{NAME}: --steps must lie in 1..{self.scheduler.config.num_train_timesteps}")
        self.eta = 0.0 if options.eta is None else options.eta
        depth = 2 ** (len(unet.config.block_out_channels) - 1)
        self.size_multiple = depth // math.gcd(depth, self.scale)

    def settings(self) -> dict[str, str]:
        return {"steps": str(self.steps), "sampler": self.sampler, "eta": f"{self.eta:g}" if self.sampler == "ddim" else "n/a",
                "value_map": self.values.describe()}

    @torch.inference_mode()
    def sample(self, lr: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        check_tile(lr, self)
        cond = condition(self.values.to_model(lr.to(self.device, torch.float32)), self.scale)
        x = batch_randn(generators, cond.shape[1:], self.device) * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(self.steps, device=self.device)
        for t in self.scheduler.timesteps:
            model_in = torch.cat([self.scheduler.scale_model_input(x, t), cond], dim=1)
            with self.denoiser_autocast():
                eps = self.unet(model_in, t).sample
            x = scheduler_step(self.scheduler, eps, t, x, generators, self.eta)
        return self.values.from_model(x)


def load(source: CheckpointSource, options: SamplingOptions, device="cpu", precision="auto") -> SR3:
    """Build from a ``gapeval train sr3`` checkpoint (``unet.*`` tensors + JSON config), strictly loaded."""
    config = config_from_metadata(source, NAME)
    parts = split_prefixed(source.tensors(), ("unet",), str(source.path))
    try:
        unet = build_unet(config)
    except (KeyError, TypeError, ValueError) as exc:
        raise WeightsError(f"{source.path}: invalid sr3 config in the metadata ({exc})") from exc
    load_strict(unet, parts["unet"], f"{source.path} (unet)")
    return SR3(unet, config, options, device, precision)
