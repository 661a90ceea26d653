"""``ldsr-s2``: ESA OpenSR latent diffusion for Sentinel-2 RGB-NIR x4 (``opensr-model`` LDSR-S2), on diffusers parts.

Model (opensr-model ``configs/config_10m.yaml``, checkpoints >= v1.0): a KL autoencoder (4 bands in/out,
channels 128/256/512, 4-channel latent at 1/4 of the high-resolution size) and a UNet with 8 input channels
(4 noisy latent + 4 conditioning latent), 4 output channels, block channels 160/320/320/640, attention in the
deepest level and the middle (32 channels per head), predicting noise (eps) on a 1000-step schedule whose betas
are stored in the checkpoint.

Sampling, as ``opensr_model.SRLatentDiffusion.forward``:
  1. the reflectance tile (B04, B03, B02, B08; no normalisation for v1 checkpoints) is upsampled x4 bilinearly
     and encoded; the conditioning latent is a draw from the encoder's Gaussian posterior;
  2. DDIM (``leading`` spacing with offset 1, final alpha = alphas_cumprod[0], i.e. the LDM ``make_ddim_timesteps``
     schedule) from pure noise, ``eta`` (default 0.95) and ``temperature`` scaling the per-step noise;
  3. decode, negatives set to 0. Histogram matching to the low-resolution input is done by the pipeline on the
     whole blended image (opensr-model matches each 128 px tile).

Checkpoint: the published PyTorch Lightning ``.ckpt`` (``state_dict`` with ``model.diffusion_model.*``,
``first_stage_model.*``, ``model_ema.*`` and the schedule buffers ``betas``, ``alphas_cumprod`` …), read with
``torch.load(weights_only=True)``, or the same tensors in a ``.safetensors`` file. Keys are converted with
:mod:`gapeval.infer.ldm_keys`; ``loss.*`` (the training loss network) is dropped, as opensr-model does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from gapeval.infer.base import Adapter, SamplingOptions, batch_randn, check_tile, scheduler_step
from gapeval.infer.checkpoints import CheckpointSource, load_strict
from gapeval.infer.ldm_keys import (
    autoencoder_config,
    convert_autoencoder,
    convert_unet,
    infer_autoencoder_layout,
    infer_unet_layout,
    unet2d_config,
)
from lpips_sat.errors import WeightsError

log = logging.getLogger(__name__)

NAME = "ldsr-s2"
BANDS = ("B04", "B03", "B02", "B08")
UNET_PREFIX, VAE_PREFIX, EMA_PREFIX = "model.diffusion_model.", "first_stage_model.", "model_ema."
#: Buffers of the LDM ``DDPM`` class; only ``betas`` is used (everything else derives from it).
SCHEDULE_BUFFERS = frozenset({"betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
                              "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
                              "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
                              "logvar", "lvlb_weights", "scale_factor"})
DEFAULT_STEPS, DEFAULT_ETA, NUM_HEAD_CHANNELS = 100, 0.95, 32
#: Fallback schedule when a checkpoint carries no ``betas`` (config_10m.yaml: LDM "linear", i.e. sqrt-linear).
LINEAR_START, LINEAR_END, TIMESTEPS = 1e-4, 0.0155, 1000


def ema_key(ldm_unet_key: str) -> str:
    """Name of a UNet tensor's EMA copy in an LDM checkpoint (``LitEma`` drops the dots)."""
    return EMA_PREFIX + ("diffusion_model." + ldm_unet_key).replace(".", "")


def split_checkpoint(state: Mapping[str, torch.Tensor], source: str, use_ema: bool = False) -> tuple[dict, dict, torch.Tensor | None]:
    """Split an LDSR-S2 Lightning state dict into (UNet, autoencoder, betas), LDM names, prefixes removed.

    Raises:
        WeightsError: keys of no known part (not an LDSR-S2 checkpoint), or a missing EMA copy with ``use_ema``.
    """
    unet, vae, stray = {}, {}, []
    for key, value in state.items():
        if key.startswith(UNET_PREFIX):
            unet[key[len(UNET_PREFIX):]] = value
        elif key.startswith(VAE_PREFIX):
            vae[key[len(VAE_PREFIX):]] = value
        elif key.startswith((EMA_PREFIX, "loss.", "cond_stage_model.")) or key in SCHEDULE_BUFFERS:
            continue
        else:
            stray.append(key)
    if stray or not unet or not vae:
        raise WeightsError(f"{source}: not an LDSR-S2 (opensr-model) checkpoint: "
                           + (f"unexpected keys {stray[:6]}" if stray else f"no '{UNET_PREFIX}*' or '{VAE_PREFIX}*' keys"))
    if use_ema:
        missing = [k for k in unet if ema_key(k) not in state]
        if missing:
            raise WeightsError(f"{source}: --use-ema asked but the EMA copy of {missing[:4]} is missing")
        unet = {k: state[ema_key(k)] for k in unet}
    return unet, vae, state.get("betas")


def default_betas() -> torch.Tensor:
    """LDM "linear" schedule of config_10m.yaml: ``linspace(sqrt(start), sqrt(end), T) ** 2`` (float64)."""
    return torch.linspace(LINEAR_START ** 0.5, LINEAR_END ** 0.5, TIMESTEPS, dtype=torch.float64) ** 2


def make_scheduler(betas: torch.Tensor):
    """The LDM DDIM schedule as a diffusers ``DDIMScheduler`` (timesteps ``0, c, 2c, …`` + 1; last alpha_prev = alphas_cumprod[0])."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=int(betas.numel()), trained_betas=betas.double().cpu().numpy(), clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading", prediction_type="epsilon")


class LDSRS2(Adapter):
    """LDSR-S2 on a diffusers ``UNet2DModel`` + ``AutoencoderKL`` with a ``DDIMScheduler``."""

    name = NAME
    bands = BANDS
    default_tile = 128
    histogram_match = True

    def __init__(self, unet, vae, betas: torch.Tensor, options: SamplingOptions, device="cpu", precision="auto") -> None:
        super().__init__(device, precision)
        self.unet, self.vae = unet.to(self.device).eval(), vae.to(self.device).eval()
        self.scheduler = make_scheduler(betas)
        self.steps = options.steps or DEFAULT_STEPS
        self.eta = DEFAULT_ETA if options.eta is None else options.eta
        self.temperature = options.temperature
        if not 1 <= self.steps <= int(betas.numel()):
            raise WeightsError(f"{NAME}: --steps must lie in 1..{betas.numel()}, got {self.steps}")
        self.size_multiple = 2 ** (len(unet.config.block_out_channels) - 1)
        self.scale = 2 ** (len(vae.config.block_out_channels) - 1)

    def settings(self) -> dict[str, str]:
        return {"steps": str(self.steps), "sampler": "ddim", "eta": f"{self.eta:g}", "temperature": f"{self.temperature:g}"}

    @torch.inference_mode()
    def sample(self, lr: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        check_tile(lr, self)
        lr = lr.to(self.device, torch.float32)
        up = F.interpolate(lr, scale_factor=self.scale, mode="bilinear", align_corners=False)
        posterior = self.vae.encode(up).latent_dist
        cond = posterior.mean + posterior.std * batch_randn(generators, posterior.mean.shape[1:], self.device)
        z = batch_randn(generators, cond.shape[1:], self.device)
        self.scheduler.set_timesteps(self.steps, device=self.device)
        for t in self.scheduler.timesteps:
            with self.denoiser_autocast():
                eps = self.unet(torch.cat([z, cond], dim=1), t).sample
            z = scheduler_step(self.scheduler, eps, t, z, generators, self.eta, self.temperature)
        out = self.vae.decode(z).sample
        return out.clamp_min(0.0)


def load(source: CheckpointSource, options: SamplingOptions, device="cpu", precision="auto") -> LDSRS2:
    """Build the adapter from an LDSR-S2 checkpoint (keys converted, strict loading)."""
    from diffusers import AutoencoderKL, UNet2DModel

    unet_sd, vae_sd, betas = split_checkpoint(source.tensors(), str(source.path), use_ema=options.use_ema)
    heads = options.num_head_channels or NUM_HEAD_CHANNELS
    ulayout = infer_unet_layout(unet_sd)
    vlayout = infer_autoencoder_layout(vae_sd)
    if vlayout.n_embed is not None:
        raise WeightsError(f"{source.path}: LDSR-S2 uses a KL autoencoder, the checkpoint has a VQ codebook")
    if ulayout.in_channels != 2 * vlayout.embed_dim or ulayout.out_channels != vlayout.embed_dim:
        raise WeightsError(f"{source.path}: UNet channels {ulayout.in_channels}->{ulayout.out_channels} do not fit a {vlayout.embed_dim}-channel latent with concatenated conditioning")
    if vlayout.in_channels != len(BANDS):
        raise WeightsError(f"{source.path}: autoencoder takes {vlayout.in_channels} bands, LDSR-S2 expects {len(BANDS)} ({','.join(BANDS)})")
    unet = UNet2DModel(**unet2d_config(ulayout, heads))
    load_strict(unet, convert_unet(unet_sd, ulayout, heads), f"{source.path} (UNet)")
    vae = AutoencoderKL(**autoencoder_config(vlayout))
    load_strict(vae, convert_autoencoder(vae_sd, vlayout), f"{source.path} (autoencoder)")
    if betas is None:
        log.warning("%s carries no 'betas'; using the config_10m.yaml schedule (linear %g..%g, %d steps)", source.path, LINEAR_START, LINEAR_END, TIMESTEPS)
        betas = default_betas()
    betas = betas.double()
    if betas.ndim != 1 or not bool(((betas > 0) & (betas < 1)).all()):
        raise WeightsError(f"{source.path}: 'betas' must be a 1-D tensor in (0, 1)")
    return LDSRS2(unet, vae, betas, options, device, precision)

