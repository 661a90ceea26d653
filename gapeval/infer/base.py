"""What every inference adapter shares: the :class:`Adapter` interface, per-tile noise, precision and value mappings.

An adapter turns a batch of low-resolution tiles (reflectance, the adapter's bands) into super-resolved tiles
(reflectance, ``scale`` times larger). Everything else (reading, tiling, seeding, batching, writing) lives in
:mod:`gapeval.infer.pipeline`, so the five adapters only build their networks and run their samplers.

Randomness: every random draw an adapter makes goes through :func:`batch_randn` with one CPU
``torch.Generator`` per tile, so a tile's output depends only on its own seed, never on batch size,
tile order or device.
"""

from __future__ import annotations

import abc
import contextlib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lpips_sat.errors import InputError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class SamplingOptions:
    """User-facing sampling settings; ``None`` means "the adapter's default" (see ``gapeval models``).

    Attributes:
        steps: number of denoising steps.
        eta: DDIM stochasticity (0 = deterministic DDIM, 1 = DDPM-like).
        sampler: scheduler name where an adapter offers a choice (``ddim`` or ``ddpm``).
        temperature: multiplies the per-step DDIM noise (LDSR-S2 convention; 1 = unchanged).
        guidance: classifier-free guidance scale (``sd-x4-upscaler`` only).
        noise_level: noise added to the low-resolution input, 0..350 (``sd-x4-upscaler`` only).
        prompt: text prompt (``sd-x4-upscaler``; needs ``transformers`` and the checkpoint's text encoder).
        prompt_embeds: safetensors file with a precomputed ``prompt_embeds`` tensor (``sd-x4-upscaler``).
        rgb_gain: reflectance -> [0, 1] gain for RGB models trained on 8-bit photographs.
        num_head_channels: attention width per head of LDM-format UNets (not stored in their checkpoints).
        use_ema: load the EMA copy of the denoiser weights when the checkpoint carries one.
    """

    steps: int | None = None
    eta: float | None = None
    sampler: str | None = None
    temperature: float = 1.0
    guidance: float | None = None
    noise_level: int | None = None
    prompt: str | None = None
    prompt_embeds: str | None = None
    rgb_gain: float | None = None
    num_head_channels: int | None = None
    use_ema: bool = False


class Adapter(abc.ABC):
    """One diffusion SR model, ready to sample.

    Subclasses set the class attributes and implement :meth:`sample`. ``bands`` are the Sentinel-2 band ids the
    network consumes, in order; the SR output has the same bands.
    """

    name: str = ""
    scale: int = 4
    bands: tuple[str, ...] = ()
    default_tile: int = 128
    histogram_match: bool = False

    def __init__(self, device: str | torch.device = "cpu", precision: str = "auto") -> None:
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)

    #: The low-resolution tile side must be a multiple of this (down-sampling depth of the network).
    size_multiple: int = 8

    @abc.abstractmethod
    def sample(self, lr: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """Super-resolve ``lr`` (B, len(bands), h, w) reflectance on ``self.device``; return (B, C, scale*h, scale*w) reflectance.

        ``generators[i]`` is the only source of randomness for item ``i``.
        """

    @abc.abstractmethod
    def settings(self) -> dict[str, str]:
        """The effective sampling settings (steps, sampler, eta, …), written into the output tags."""

    def denoiser_autocast(self) -> contextlib.AbstractContextManager:
        """Autocast context for the denoiser only (autoencoders stay in fp32)."""
        return autocast(self.device, self.precision)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` on CUDA devices that support it, ``fp16`` on other CUDA devices, ``fp32`` on CPU."""
    if precision not in PRECISIONS:
        raise InputError(f"Unknown precision {precision!r}; use one of {PRECISIONS}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``bf16``/``fp16``; a no-op for ``fp32``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def batch_randn(generators: Sequence[torch.Generator], shape: Sequence[int], device: torch.device) -> torch.Tensor:
    """Standard-normal noise (len(generators), *shape), item ``i`` drawn from ``generators[i]`` on the CPU, then moved.

    Drawing on the CPU makes a tile's noise identical on every device and for every batch composition
    (the same convention as ``diffusers.utils.torch_utils.randn_tensor`` with a list of generators).
    """
    draws = [torch.randn((1, *shape), generator=g, dtype=torch.float32) for g in generators]
    return torch.cat(draws, dim=0).to(device)


@dataclass(frozen=True)
class ValueMap:
    """How reflectance maps to a network's value range, and back.

    ``rgb_gain`` (models trained on 8-bit photographs): ``clip(gain * refl, 0, 1) * 2 - 1``; reflectance above
    ``1 / gain`` saturates. ``linear`` (models trained on reflectance): ``2 * refl / gain - 1`` without clipping,
    ``gain`` being the reflectance mapped to +1 (``ref_max``).
    """

    kind: str = "rgb_gain"
    gain: float = 3.0

    def __post_init__(self) -> None:
        if self.kind not in ("rgb_gain", "linear") or not self.gain > 0:
            raise InputError(f"value map must be rgb_gain or linear with a positive gain, got {self.kind!r} {self.gain}")

    def to_model(self, refl: torch.Tensor) -> torch.Tensor:
        if self.kind == "rgb_gain":
            return (refl * self.gain).clamp(0.0, 1.0) * 2.0 - 1.0
        return refl * (2.0 / self.gain) - 1.0

    def from_model(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "rgb_gain":
            return (x.clamp(-1.0, 1.0) + 1.0) / (2.0 * self.gain)
        return (x + 1.0) * (self.gain / 2.0)

    def describe(self) -> str:
        return f"{self.kind}:{self.gain:g}"


def scheduler_step(scheduler, model_output: torch.Tensor, t, sample: torch.Tensor, generators: Sequence[torch.Generator],
                   eta: float = 0.0, temperature: float = 1.0) -> torch.Tensor:
    """One ``scheduler.step`` with per-tile noise: DDIM gets ``eta`` and ``variance_noise`` drawn from ``generators``
    (times ``temperature``); stochastic schedulers without ``variance_noise`` get the generator list."""
    params = inspect.signature(scheduler.step).parameters
    kwargs: dict = {}
    if "eta" in params:
        kwargs["eta"] = eta
        if eta > 0 and "variance_noise" in params:
            kwargs["variance_noise"] = batch_randn(generators, sample.shape[1:], sample.device) * temperature
    elif "generator" in params:
        kwargs["generator"] = list(generators)
    return scheduler.step(model_output.float(), t, sample, **kwargs).prev_sample


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA/CPU allocator out-of-memory errors (``torch.OutOfMemoryError`` or its message)."""
    return isinstance(exc, torch.OutOfMemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def check_tile(lr: torch.Tensor, adapter: Adapter) -> None:
    """Validate a tile batch against an adapter's band count and size multiple."""
    if lr.ndim != 4 or lr.shape[1] != len(adapter.bands):
        raise InputError(f"{adapter.name}: expected tiles of shape (B, {len(adapter.bands)}, h, w), got {tuple(lr.shape)}")
    if lr.shape[-1] % adapter.size_multiple or lr.shape[-2] % adapter.size_multiple:
        raise InputError(f"{adapter.name}: tile size {tuple(lr.shape[-2:])} is not a multiple of {adapter.size_multiple}")
