"""The inference adapters ``gapeval infer`` knows: what each expects and where its weights come from.

One table, one row per adapter. The adapter module is imported only when the model is used, so
``gapeval models`` needs neither diffusers nor a GPU.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass

from gapeval.infer.base import Adapter, SamplingOptions
from gapeval.infer.checkpoints import CheckpointSource, resolve
from lpips_sat.errors import InputError


@dataclass(frozen=True)
class AdapterInfo:
    """What a user must know to run one adapter correctly.

    Attributes:
        name: ``--model`` value.
        family: the diffusion SR family it represents.
        module: Python module with ``load(source, options, device, precision) -> Adapter``.
        bands: Sentinel-2 bands the network consumes, in order (the SR output bands).
        scale: output/input pixel ratio.
        normalisation: how reflectance is mapped to the network's input range.
        sampler: sampler and its defaults.
        tile: default low-resolution tile side (px).
        checkpoint: what ``--checkpoint`` takes.
        weights: where published weights are (never downloaded unless a hub id is given).
        licence: licence of code and weights.
        source: paper / code the adapter follows.
        hub_parts: part folders fetched for a hub repository id (diffusers layouts; one weights format each).
    """

    name: str
    family: str
    module: str
    bands: tuple[str, ...]
    scale: int
    normalisation: str
    sampler: str
    tile: int
    checkpoint: str
    weights: str
    licence: str
    source: str
    hub_parts: tuple[str, ...] | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    def resolve_checkpoint(self, spec: str) -> CheckpointSource:
        """Resolve ``--checkpoint`` (downloading hub ids: this adapter's part folders, one weights format each)."""
        return resolve(spec, hub_parts=self.hub_parts)

    def load(self, source: CheckpointSource, options: SamplingOptions, device: str = "cpu", precision: str = "auto") -> Adapter:
        """Build the adapter from a resolved checkpoint."""
        return importlib.import_module(self.module).load(source, options, device=device, precision=precision)


_RGB = "reflectance x rgb_gain (default 3.0) clipped to [0, 1], mapped to [-1, 1]; NIR: bicubic fallback (--nir-fallback)"

ADAPTERS: dict[str, AdapterInfo] = {a.name: a for a in (
    AdapterInfo(
        name="ldsr-s2", family="latent diffusion, Sentinel-2 native (ESA OpenSR LDSR-S2)", module="gapeval.infer.ldsr_s2",
        bands=("B04", "B03", "B02", "B08"), scale=4, normalisation="reflectance (DN/10000) as is (checkpoints >= v1.0)",
        sampler="DDIM, 100 steps, eta 0.95, betas from the checkpoint; histogram matching to the LR on", tile=128,
        checkpoint="opensr-model Lightning .ckpt (or the same tensors as .safetensors); hub: owner/name:file.ckpt",
        weights="huggingface.co/simon-donike/RS-SR-LTDF (opensr-model releases)",
        licence="code MIT (opensr-model, CompVis LDM); weights: see the model card", source="Donike et al., ESA OpenSR opensr-model (LDSR-S2)"),
    AdapterInfo(
        name="ldm-sr-x4", family="latent diffusion, natural images (CompVis LDM x4)", module="gapeval.infer.ldm_sr",
        bands=("B04", "B03", "B02"), scale=4, normalisation=_RGB, sampler="DDIM, 100 steps, eta 1.0 (scheduler config of the checkpoint)",
        tile=128, checkpoint="diffusers folder (unet/, vqvae/, scheduler/) or hub id", weights="huggingface.co/CompVis/ldm-super-resolution-4x-openimages",
        licence="Apache-2.0 (see the model card)", source="Rombach et al. 2022, High-Resolution Image Synthesis with Latent Diffusion Models",
        hub_parts=("unet", "vqvae", "scheduler")),
    AdapterInfo(
        name="sd-x4-upscaler", family="text-conditioned latent diffusion upscaler (Stable Diffusion x4)", module="gapeval.infer.sd_upscaler",
        bands=("B04", "B03", "B02"), scale=4, normalisation=_RGB,
        sampler="scheduler config of the checkpoint, 75 steps, noise_level 20, guidance 1 without prompt (zero text embedding) / 9 with one",
        tile=128, checkpoint="diffusers folder (unet/, vae/, scheduler/, low_res_scheduler/[, text_encoder/, tokenizer/]) or hub id",
        weights="huggingface.co/stabilityai/stable-diffusion-x4-upscaler", licence="CreativeML Open RAIL++-M (use restrictions apply)",
        source="Stability AI, Stable Diffusion x4 upscaler",
        hub_parts=("unet", "vae", "scheduler", "low_res_scheduler")),
    AdapterInfo(
        name="resshift", family="residual-shifting diffusion, few-step (ResShift; SinSR one-step)", module="gapeval.infer.resshift",
        bands=("B04", "B03", "B02"), scale=4, normalisation="per checkpoint (default: " + _RGB + ")",
        sampler="ResShift Markov chain (eta schedule, kappa) in a VQ-f4 latent: v1 15 steps, v3 4 steps, SinSR 1 step (the defaults)", tile=64,
        checkpoint="folder with the published denoiser .pth (resshift_realsrx4_s15_v1 / _s4_v3, SinSR_v1) + autoencoder_vq_f4.pth "
                   "(schedule from the file name or resshift.json), or a gapeval resshift .safetensors",
        weights="github.com/zsyOAOA/ResShift and github.com/wyf0912/SinSR releases (loaded strictly under upstream's names)",
        licence="ResShift/SinSR weights: NTU S-Lab License 1.0 (non-commercial); gapeval code Apache-2.0",
        source="Yue et al. 2023 (ResShift, NeurIPS); Wang et al. 2024 (SinSR, CVPR)"),
    AdapterInfo(
        name="sr3", family="SR3-style trainable baseline (pixel-space conditional diffusion; not SR3's published noise-level conditioning or schedule)", module="gapeval.infer.sr3",
        bands=("B04", "B03", "B02", "B08"), scale=4, normalisation="per checkpoint: 2 * reflectance / ref_max - 1 (default ref_max 0.5)",
        sampler="DDIM 50 steps eta 0 (default) or DDPM (--sampler ddpm)", tile=64,
        checkpoint="gapeval sr3 .safetensors written by `gapeval train sr3`", weights="trained by the user (gapeval train sr3)",
        licence="yours (subject to the training data's licence)", source="after Saharia et al. 2022 (SR3): same [x_t, bicubic LR] conditioning, but the UNet is conditioned on the discrete timestep with a linear 1e-4..2e-2 / 1000-step schedule, not on the continuous noise level sqrt(alpha_bar) with SR3's 1e-6..1e-2 / 2000-step schedule"),
)}


def get(name: str) -> AdapterInfo:
    """The adapter called ``name``; an error lists the known ones."""
    if name not in ADAPTERS:
        raise InputError(f"Unknown model {name!r}; known: {', '.join(ADAPTERS)} (see `gapeval models`)")
    return ADAPTERS[name]


def load_adapter(name: str, checkpoint: str, options: SamplingOptions, device: str = "cpu", precision: str = "auto") -> tuple[Adapter, CheckpointSource]:
    """Resolve ``checkpoint`` and build adapter ``name``."""
    info = get(name)
    source = info.resolve_checkpoint(checkpoint)
    return info.load(source, options, device=device, precision=precision), source
