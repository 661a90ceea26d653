"""The inference adapters ``gapeval infer`` knows: what each expects and where its weights come from.

One table of built-in adapters (one row each; the adapter module is imported only when the model is used, so
``gapeval models`` needs neither diffusers nor a GPU), plus plug-ins: installed packages that declare an entry point
in the group ``gapeval.adapters`` (``NAME = "package.module:factory"``). :func:`get` is the one lookup everything
uses (``gapeval models``, ``gapeval infer --model``, study configs): built-ins first, then plug-ins.

A plug-in factory is called as ``factory(source, options, device=..., precision=...)`` with a resolved
:class:`~gapeval.infer.checkpoints.CheckpointSource` and :class:`~gapeval.infer.base.SamplingOptions`, and must
return an :class:`~gapeval.infer.base.Adapter`. Optional attributes on the factory fill the ``gapeval models``
table: ``family``, ``bands``, ``scale``, ``tile``, ``normalisation``, ``sampler``, ``checkpoint``, ``weights``,
``licence``, ``source``. A plug-in that fails to import, is not callable, shadows a built-in name or returns
something other than an ``Adapter`` is reported by name (:func:`broken_plugins`, and when used) without affecting
the others.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

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
    plugin: str | None = None
    factory: Callable[..., Adapter] | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "factory"}

    def resolve_checkpoint(self, spec: str) -> CheckpointSource:
        """Resolve ``--checkpoint`` (downloading hub ids: this adapter's part folders, one weights format each)."""
        return resolve(spec, hub_parts=self.hub_parts)

    def load(self, source: CheckpointSource, options: SamplingOptions, device: str = "cpu", precision: str = "auto") -> Adapter:
        """Build the adapter from a resolved checkpoint (a plug-in's result must be an :class:`Adapter`)."""
        if self.factory is None:
            return importlib.import_module(self.module).load(source, options, device=device, precision=precision)
        adapter = self.factory(source, options, device=device, precision=precision)
        if not isinstance(adapter, Adapter):
            raise InputError(f"plug-in model {self.name!r} ({self.plugin}): its factory returned {type(adapter).__name__}, "
                             "not a gapeval.infer.base.Adapter")
        return adapter


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


ENTRY_POINT_GROUP = "gapeval.adapters"
log = logging.getLogger(__name__)
_PLUGINS: tuple[dict[str, AdapterInfo], dict[str, str]] | None = None


def _plugin_info(ep: importlib.metadata.EntryPoint, factory: Callable[..., Adapter]) -> AdapterInfo:
    """An :class:`AdapterInfo` for a plug-in, from the optional attributes of its factory."""
    dist = getattr(ep, "dist", None)
    origin = f"{ep.value}" + (f" from {dist.name} {dist.version}" if dist is not None else "")

    def attr(key: str, default):
        return getattr(factory, key, default)

    return AdapterInfo(name=ep.name, family=str(attr("family", "plug-in model")), module=ep.value, bands=tuple(attr("bands", ())),
                       scale=int(attr("scale", 4)), normalisation=str(attr("normalisation", "see the plug-in")),
                       sampler=str(attr("sampler", "see the plug-in")), tile=int(attr("tile", 128)),
                       checkpoint=str(attr("checkpoint", "see the plug-in")), weights=str(attr("weights", "see the plug-in")),
                       licence=str(attr("licence", "see the plug-in")), source=str(attr("source", origin)), plugin=origin, factory=factory)


def discover_plugins(refresh: bool = False) -> tuple[dict[str, AdapterInfo], dict[str, str]]:
    """(working plug-ins by name, broken plug-ins: name -> reason) from the ``gapeval.adapters`` entry points (cached)."""
    global _PLUGINS
    if _PLUGINS is not None and not refresh:
        return _PLUGINS
    good: dict[str, AdapterInfo] = {}
    broken: dict[str, str] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in ADAPTERS:
            broken[ep.name] = f"{ep.value}: the name is a built-in adapter's; rename the entry point"
            continue
        if ep.name in good or ep.name in broken:
            broken[ep.name] = f"{ep.value}: another installed package declares the same name"
            good.pop(ep.name, None)
            continue
        try:
            factory = ep.load()
        except Exception as exc:  # noqa: BLE001 - any failure of third-party code is reported, not raised
            broken[ep.name] = f"{ep.value}: cannot be imported ({type(exc).__name__}: {exc})"
            continue
        if not callable(factory):
            broken[ep.name] = f"{ep.value}: is a {type(factory).__name__}, not a callable factory"
            continue
        try:
            good[ep.name] = _plugin_info(ep, factory)
        except (TypeError, ValueError) as exc:
            broken[ep.name] = f"{ep.value}: invalid description attributes ({exc})"
    for name, reason in broken.items():
        log.warning("gapeval plug-in model %r is broken: %s", name, reason)
    _PLUGINS = (good, broken)
    return _PLUGINS


def broken_plugins() -> dict[str, str]:
    """Plug-ins that could not be used: name -> reason."""
    return dict(discover_plugins()[1])


def all_adapters() -> dict[str, AdapterInfo]:
    """Built-in adapters, then working plug-ins."""
    return {**ADAPTERS, **discover_plugins()[0]}


def get(name: str) -> AdapterInfo:
    """The adapter called ``name`` (built-in or plug-in); an error names a broken plug-in's problem or lists the known ones."""
    if name in ADAPTERS:
        return ADAPTERS[name]
    good, broken = discover_plugins()
    if name in good:
        return good[name]
    if name in broken:
        raise InputError(f"plug-in model {name!r} is broken: {broken[name]}")
    raise InputError(f"Unknown model {name!r}; known: {', '.join(all_adapters())} (see `gapeval models`)")


def load_adapter(name: str, checkpoint: str, options: SamplingOptions, device: str = "cpu", precision: str = "auto") -> tuple[Adapter, CheckpointSource]:
    """Resolve ``checkpoint`` and build adapter ``name``."""
    info = get(name)
    source = info.resolve_checkpoint(checkpoint)
    return info.load(source, options, device=device, precision=precision), source
