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

Checkpoints (``--checkpoint``):

* the published files, in one folder: the denoiser ``.pth`` (``resshift_realsrx4_s15_v1.pth``, ``…_s15_v2.pth``,
  ``…_s4_v3.pth`` or SinSR's ``SinSR_v1.pth``) and ResShift's VQ-f4 autoencoder ``autoencoder_vq_f4.pth``, both read with
  ``torch.load(weights_only=True)`` and loaded strictly: the denoiser under its own names
  (:class:`~gapeval.infer.swin_unet.SwinUNet` reproduces upstream ``UNetModelSwin``), the autoencoder through the LDM ->
  diffusers key map of :mod:`gapeval.infer.ldm_keys`. The schedule comes from :data:`PRESETS`, chosen from the file name
  or from ``{"preset": NAME}`` in an optional ``resshift.json`` next to them;
* a gapeval ``.safetensors`` with ``unet.*`` and ``vqvae.*`` tensors and a JSON ``config`` in the metadata
  (:func:`save_checkpoint`), e.g. written by a gapeval trainer. Without ``vqvae`` (no ``vqvae`` entry in the config)
  the same chain runs in **pixel space**: ``x0``/``y0`` are the value-mapped HR image and the bicubically upsampled LR
  image, ``scale`` comes from the config; this is what ``gapeval train resshift`` writes for CPU-sized models.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gapeval.infer.base import Adapter, SamplingOptions, ValueMap, batch_randn, check_tile
from gapeval.infer.checkpoints import CheckpointSource, config_from_metadata, load_strict, read_json, save_safetensors, split_prefixed
from gapeval.infer.ldm_keys import autoencoder_config, convert_autoencoder, infer_autoencoder_layout
from gapeval.infer.swin_unet import SwinUNet, SwinUNetConfig
from lpips_sat.backbones import read_checkpoint
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


#: Published schedules (ResShift configs/realsr_swinunet_realesrgan256.yaml = v1/v2, …_journal.yaml = v3; SinSR
#: configs/SinSR.yaml, distilled from v1 and sampled in one step) and the default number of sampling steps.
PRESETS: dict[str, tuple[ShiftSchedule, int]] = {
    "resshift-v1": (ShiftSchedule(steps=15, kappa=2.0, min_noise_level=0.04, etas_end=0.99, power=0.3), 15),
    "resshift-v2": (ShiftSchedule(steps=15, kappa=2.0, min_noise_level=0.04, etas_end=0.99, power=0.3), 15),
    "resshift-v3": (ShiftSchedule(steps=4, kappa=2.0, min_noise_level=0.2, etas_end=0.99, power=0.3), 4),
    "sinsr": (ShiftSchedule(steps=15, kappa=2.0, min_noise_level=0.04, etas_end=0.99, power=0.3), 1),
}
#: Wrapper prefixes of saved modules (DistributedDataParallel, torch.compile), stripped as upstream's loader does.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def step_indices(trained: int, steps: int) -> list[int]:
    """``steps`` trained step indices (0-based, decreasing) from ``trained - 1`` down to 0 (just ``trained - 1`` for one step)."""
    if not 1 <= steps <= trained:
        raise InputError(f"{NAME}: --steps must lie in 1..{trained} (the trained chain length), got {steps}")
    if steps == 1:
        return [trained - 1]
    return [round(float(v)) for v in np.linspace(trained - 1, 0, steps)]


def unet_config(bands: int, width: int = 160, mult: Sequence[int] = (1, 2, 2, 4), layers: int = 2, swin_levels: Sequence[int] = (0, 1, 2, 3),
                norm_groups: int = 32, latent_channels: int | None = None, **extra: Any) -> dict[str, Any]:
    """``SwinUNetConfig`` dict of a denoiser with ``latent_channels`` (default ``bands``: pixel space) in and out and ``bands``
    as condition; ``extra`` sets further fields (``window_size``, ``swin_embed_dim``, ``num_head_channels``, ``image_size`` …)."""
    ch = latent_channels or bands
    cfg = SwinUNetConfig(in_channels=ch, cond_channels=bands, out_channels=ch, model_channels=width, channel_mult=tuple(mult),
                         num_res_blocks=layers, swin_levels=tuple(swin_levels), norm_groups=norm_groups)
    return SwinUNetConfig.from_dict({**cfg.as_dict(), **extra}).as_dict()


class ResShift(Adapter):
    """ResShift / SinSR: Swin-UNet x0-predictor + ``VQModel`` (or pixel space: ``vqvae=None``) + the residual-shifting sampler."""

    name = NAME
    default_tile = 64

    def __init__(self, unet: SwinUNet, vqvae, schedule: ShiftSchedule, bands: Sequence[str], values: ValueMap,
                 options: SamplingOptions, device="cpu", precision="auto", default_steps: int | None = None, scale: int = 4) -> None:
        super().__init__(device, precision)
        self.unet = unet.to(self.device).eval()
        self.vqvae = vqvae.to(self.device).eval() if vqvae is not None else None
        self.schedule, self.bands, self.values = schedule, tuple(bands), values
        self.etas = torch.tensor(schedule.etas(), dtype=torch.float64)
        self.steps = options.steps or default_steps or schedule.steps
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
                    metadata: Mapping[str, str] | None = None) -> str:
    """Write a ``resshift`` checkpoint (unet.* [+ vqvae.*] tensors, JSON config in the metadata); return its sha256.

    ``vqvae=None`` writes a pixel-space checkpoint (``scale``: the super-resolution factor)."""
    values = values or ValueMap()
    config: dict[str, Any] = {"unet": unet.config.as_dict(), "schedule": asdict(schedule), "bands": list(bands),
                              "value_map": {"kind": values.kind, "gain": values.gain}}
    tensors = {f"unet.{k}": v for k, v in unet.state_dict().items()}
    if vqvae is not None:
        config["vqvae"] = {k: v for k, v in dict(vqvae.config).items() if not k.startswith("_")}
        tensors.update({f"vqvae.{k}": v for k, v in vqvae.state_dict().items()})
    else:
        config["scale"] = int(scale)
    return save_safetensors(path, tensors, {"model": NAME, "config": json.dumps(config), **(metadata or {})})


def build_unet(config: Mapping[str, Any]) -> SwinUNet:
    """An untrained :class:`SwinUNet` from a ``resshift`` checkpoint config (its ``"unet"`` entry, ``SwinUNetConfig.as_dict()``).

    The stable entry point for trainers: ``save_checkpoint`` writes ``{"unet": unet.config.as_dict(), …}`` and ``load``
    rebuilds the network with this function (``sr3.build_unet`` is its pixel-space counterpart).
    """
    return SwinUNet(SwinUNetConfig.from_dict(config["unet"]))


def preset_for(path: Path) -> str:
    """The :data:`PRESETS` name of a published denoiser file (``…_s4_v3.pth`` -> ``resshift-v3``; ``SinSR…`` -> ``sinsr``)."""
    name = path.name.lower()
    if "sinsr" in name:
        return "sinsr"
    m = re.search(r"_s(\d+)_v(\d+)", name)
    if m and f"resshift-v{m.group(2)}" in PRESETS and PRESETS[f"resshift-v{m.group(2)}"][0].steps == int(m.group(1)):
        return f"resshift-v{m.group(2)}"
    raise WeightsError(f"{path}: cannot tell the schedule from the file name; put {{\"preset\": NAME}} ({', '.join(PRESETS)}) "
                       f"in {path.parent / 'resshift.json'}")


def strip_wrappers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove a ``module.``/``_orig_mod.`` prefix that every key carries."""
    out = dict(state)
    for prefix in WRAPPER_PREFIXES:
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix):]: v for k, v in out.items()}
    return out


def load_unet_state(unet: SwinUNet, state: Mapping[str, torch.Tensor], source: str) -> SwinUNet:
    """Load ``state`` (upstream ``UNetModelSwin`` names; a DDP/compile prefix is stripped) strictly into ``unet``,
    after checking its position-index and shift-mask buffers against their definition."""
    state = strip_wrappers(state)
    try:
        unet.check_buffers(state, source)
    except ValueError as exc:
        raise WeightsError(str(exc)) from exc
    load_strict(unet, state, source)
    return unet


def load_published_vq(state: Mapping[str, torch.Tensor], source: str):
    """ResShift's VQ-f4 autoencoder (LDM ``VQModelTorch`` names) as a diffusers ``VQModel``, strictly loaded."""
    from diffusers import VQModel

    state = strip_wrappers(state)
    layout = infer_autoencoder_layout(state)
    if layout.n_embed is None:
        raise WeightsError(f"{source}: not a VQ autoencoder (no quantize.embedding.weight)")
    vq = VQModel(**autoencoder_config(layout))
    load_strict(vq, convert_autoencoder(state, layout), source)
    return vq


def _published_folder(folder: Path) -> tuple[Path, Path, str, SwinUNetConfig]:
    """(denoiser file, autoencoder file, preset, network config) of a folder of published ResShift/SinSR files.

    An optional ``resshift.json`` may name the ``preset`` and give ``model``: the ``model.params`` section of the
    upstream YAML (for non-published network sizes); without it the file name picks the preset and the network is the
    published one.
    """
    files = sorted(p for p in folder.iterdir() if p.suffix in (".pth", ".pt", ".ckpt", ".safetensors"))
    vq = [p for p in files if "autoencoder" in p.name.lower() or "vq" in p.name.lower()]
    nets = [p for p in files if p not in vq]
    if len(vq) != 1 or len(nets) != 1:
        raise WeightsError(f"{folder}: expected one denoiser file (e.g. resshift_realsrx4_s4_v3.pth, SinSR_v1.pth) and one autoencoder "
                           f"(autoencoder_vq_f4.pth); found {[p.name for p in files]}")
    extra = folder / "resshift.json"
    settings = read_json(extra) if extra.is_file() else {}
    preset = settings.get("preset") or preset_for(nets[0])
    if preset not in PRESETS:
        raise WeightsError(f"{extra}: 'preset' must be one of {list(PRESETS)}, got {preset!r}")
    try:
        config = SwinUNetConfig.from_upstream(settings["model"]) if "model" in settings else SwinUNetConfig()
    except (KeyError, TypeError, ValueError) as exc:
        raise WeightsError(f"{extra}: invalid 'model' section ({exc})") from exc
    return nets[0], vq[0], preset, config


def load(source: CheckpointSource, options: SamplingOptions, device="cpu", precision="auto") -> ResShift:
    """Build from a folder of published ResShift/SinSR files or a gapeval ``resshift`` safetensors checkpoint (strict loading)."""
    from diffusers import VQModel

    if source.is_folder:
        net_path, vq_path, preset, config = _published_folder(source.path)
        unet = load_unet_state(SwinUNet(config), read_checkpoint(net_path), str(net_path))
        vqvae = load_published_vq(read_checkpoint(vq_path), str(vq_path))
        schedule, default_steps = PRESETS[preset]
        return ResShift(unet, vqvae, schedule, ("B04", "B03", "B02"), ValueMap(), options, device, precision, default_steps=default_steps)
    if source.path.suffix != ".safetensors":
        raise WeightsError(f"{source.path}: a published ResShift/SinSR .pth needs its autoencoder: pass the folder holding it and "
                           "autoencoder_vq_f4.pth")
    config = config_from_metadata(source, NAME)
    latent = "vqvae" in config
    parts = split_prefixed(source.tensors(), ("unet", "vqvae") if latent else ("unet",), str(source.path))
    try:
        unet = build_unet(config)
        schedule = ShiftSchedule(**config.get("schedule", {}))
        bands = tuple(b for b in resolve(config.get("bands", ["B04", "B03", "B02"])) if b)
        values = ValueMap(**config.get("value_map", {}))
        vqvae = VQModel.from_config(config["vqvae"]) if latent else None
        scale = int(config.get("scale", 4))
    except (KeyError, TypeError, ValueError) as exc:
        raise WeightsError(f"{source.path}: invalid resshift config in the metadata ({exc})") from exc
    if unet.config.cond_channels != len(bands):
        raise WeightsError(f"{source.path}: network conditions on {unet.config.cond_channels} bands but the config lists {list(bands)}")
    load_unet_state(unet, parts["unet"], f"{source.path} (unet)")
    if vqvae is not None:
        load_strict(vqvae, parts["vqvae"], f"{source.path} (vqvae)")
    return ResShift(unet, vqvae, schedule, bands, values, options, device, precision, scale=scale)
