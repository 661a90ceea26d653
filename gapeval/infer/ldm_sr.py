"""``ldm-sr-x4``: CompVis latent diffusion x4 super-resolution, the parts of diffusers' ``LDMSuperResolutionPipeline``.

A ``VQModel`` (VQ-f4, 3-channel latent) and a ``UNet2DModel`` whose input is the noisy latent concatenated with
the low-resolution RGB image in [-1, 1] (the latent has the low-resolution size). Sampling as the diffusers
pipeline: latent noise x ``init_noise_sigma``, the checkpoint's scheduler (DDIM, 100 steps, eta 1 by default),
VQ decode (with quantisation), clip to [-1, 1].

Band handling (RGB-only model on Sentinel-2): B04, B03, B02 reflectance -> ``clip(rgb_gain * refl, 0, 1) * 2 - 1``
(``rgb_gain`` 3.0 saturates at reflectance 0.33); the output is mapped back to reflectance; the pipeline appends
B08 as a bicubic x4 fallback (``--nir-fallback``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from gapeval.infer.base import Adapter, SamplingOptions, ValueMap, batch_randn, check_tile, scheduler_step
from gapeval.infer.checkpoints import CheckpointSource, build_diffusers_part, build_scheduler, folder_part
from lpips_sat.errors import WeightsError

log = logging.getLogger(__name__)

NAME = "ldm-sr-x4"
BANDS = ("B04", "B03", "B02")
DEFAULT_STEPS, DEFAULT_ETA, DEFAULT_GAIN = 100, 1.0, 3.0
#: Used only when a checkpoint folder has no scheduler/ (LDM super-resolution training schedule).
FALLBACK_SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.0015, "beta_end": 0.0155, "beta_schedule": "scaled_linear", "clip_sample": False}


class LDMSuperResolution(Adapter):
    """LDM x4: ``VQModel`` + ``UNet2DModel`` + scheduler."""

    name = NAME
    bands = BANDS
    default_tile = 128

    def __init__(self, unet, vqvae, scheduler, options: SamplingOptions, device="cpu", precision="auto") -> None:
        super().__init__(device, precision)
        self.unet, self.vqvae, self.scheduler = unet.to(self.device).eval(), vqvae.to(self.device).eval(), scheduler
        latent = int(vqvae.config.latent_channels)
        if unet.config.in_channels != latent + len(BANDS) or unet.config.out_channels != latent:
            raise WeightsError(f"{NAME}: UNet takes {unet.config.in_channels} -> {unet.config.out_channels} channels, expected "
                               f"{latent + len(BANDS)} -> {latent} for a {latent}-channel latent plus the RGB image")
        self.steps = options.steps or DEFAULT_STEPS
        self.eta = DEFAULT_ETA if options.eta is None else options.eta
        self.values = ValueMap("rgb_gain", options.rgb_gain or DEFAULT_GAIN)
        self.size_multiple = 2 ** (len(unet.config.block_out_channels) - 1)
        self.scale = 2 ** (len(vqvae.config.block_out_channels) - 1)

    def settings(self) -> dict[str, str]:
        return {"steps": str(self.steps), "sampler": type(self.scheduler).__name__, "eta": f"{self.eta:g}", "value_map": self.values.describe()}

    @torch.inference_mode()
    def sample(self, lr: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        check_tile(lr, self)
        image = self.values.to_model(lr.to(self.device, torch.float32))
        latents = batch_randn(generators, (self.vqvae.config.latent_channels, *image.shape[-2:]), self.device) * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(self.steps, device=self.device)
        for t in self.scheduler.timesteps:
            model_in = self.scheduler.scale_model_input(torch.cat([latents, image], dim=1), t)
            with self.denoiser_autocast():
                eps = self.unet(model_in, t).sample
            latents = scheduler_step(self.scheduler, eps, t, latents, generators, self.eta)
        decoded = self.vqvae.decode(latents).sample
        return self.values.from_model(decoded)


def load(source: CheckpointSource, options: SamplingOptions, device="cpu", precision="auto") -> LDMSuperResolution:
    """Build from a diffusers-layout folder (``unet/``, ``vqvae/``, ``scheduler/``), strictly loaded, no network."""
    from diffusers import UNet2DModel, VQModel

    if not source.is_folder:
        raise WeightsError(f"{source.path}: {NAME} needs a diffusers folder (unet/, vqvae/, scheduler/) or a hub id such as CompVis/ldm-super-resolution-4x-openimages")
    unet = build_diffusers_part(UNet2DModel, folder_part(source.path, ["unet"]))
    vqvae = build_diffusers_part(VQModel, folder_part(source.path, ["vqvae", "vae"]))
    sched_dir = source.path / "scheduler"
    if not sched_dir.is_dir():
        log.warning("%s has no scheduler/; using DDIM with the LDM super-resolution training schedule %s", source.path, FALLBACK_SCHEDULER)
    scheduler = build_scheduler(sched_dir if sched_dir.is_dir() else None, "DDIMScheduler", FALLBACK_SCHEDULER)
    return LDMSuperResolution(unet, vqvae, scheduler, options, device, precision)
