"""LPIPS-Sat: a perceptual distance on self-supervised Sentinel-2 ResNet features.

Data flow of :meth:`LPIPSSat.forward` (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep
Features as a Perceptual Metric", eq. 1, on a Sentinel-2 backbone):

    validate -> scale (DN/10000) -> reorder bands -> normalise -> ResNet taps (one pass for both images)
    -> unit-normalise channels -> squared difference -> non-negative 1x1 head -> spatial mean -> sum over taps

"normalise" is the weights' ``input_norm``: ``global`` (v1: ``(x - mean) / std`` with the data's band statistics) or
``per-image`` (v2: each image standardised per band, so per-band gain/offset differences, the radiometric nuisance of
cross-sensor pairs, do not enter the distance; ``forward(..., radiometry=True)`` reports them separately).

Weights with ``register: translation`` (v5) add a step after "normalise": the global translation of ``sr`` against
``hr`` is estimated and removed (both images move halfway, :mod:`lpips_sat.register`);
misregistration is the geometric nuisance of cross-sensor pairs, and ``forward(..., registration=True)`` reports it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lpips_sat import hub
from lpips_sat.backbones import (
    TAPS,
    ResNetTaps,
    adapt_input_bands,
    distance_upper_bound,
    fill_bn_counters,
    infer_arch,
    load_strict,
    read_checkpoint,
    to_torchvision_keys,
)
from lpips_sat.bands import DEFAULT_BANDS, band_indices, resolve
from lpips_sat.errors import InputError, MissingFileError, WeightsError
from lpips_sat.register import DEFAULT_MAX_SHIFT, LANCZOS_A, REGISTER_MODES, estimate_shift, max_shift_of, register
from lpips_sat.registry import DEFAULT_NAME, REGISTRY, WeightsEntry, get_entry, load_weights, weights_dir

#: Smallest accepted image side: the deepest tap has stride 32.
MIN_SIZE = 32
#: Reflectance above this is implausible (bright cloud/snow TOA reflectance stays below ~1.6).
MAX_REFLECTANCE = 2.0
#: DN images whose maximum is at most this almost surely hold reflectance instead.
MIN_DN_MAX = 2.0
INPUT_RANGES = ("reflectance", "dn")
#: The lpips package's input conventions (``normalize=True``: [0, 1]; ``normalize=False``: [-1, 1]) and the
#: affine map of each to reflectance: ``reflectance = scale * x + offset``.
LPIPS_CONVENTIONS: dict[bool, tuple[tuple[float, float], float, float]] = {True: ((0.0, 1.0), 1.0, 0.0), False: ((-1.0, 1.0), 0.5, 0.5)}


@dataclass
class _Parts:
    """Everything a metric instance is built from (weights already loaded)."""

    backbone: ResNetTaps
    heads: list[torch.Tensor] | None
    model_bands: tuple[str, ...]
    mean: Sequence[float]
    std: Sequence[float]
    name: str
    sha256: str | None
    metadata: dict
    texture_heads: list[torch.Tensor] | None = None


#: Without a graph, taps larger than this (bytes; half of glibc's largest mmap threshold) are normalised and compared
#: image by image: their temporaries (squares, the difference, the texture term's squares) then reuse heap pages
#: instead of taking fresh mmap pages on every call (a 256 px batch-8 stem tap is 33.5 MB; docs/performance.md).
CHUNK_BYTES = 16 << 20


def stack_channels_last(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.cat([a, b])`` in channels-last layout, the backbone's, with one allocation and one copy of each image
    (the concatenation then a layout change copied everything twice: 53 -> 29 ms at 512 px batch 8)."""
    n = a.shape[0]
    out = torch.empty((n + b.shape[0], *a.shape[1:]), dtype=a.dtype, device=a.device, memory_format=torch.channels_last)
    out[:n].copy_(a)
    out[n:].copy_(b)
    return out


def normalize_channels(feat: torch.Tensor, eps: float = 1e-10, inplace: bool = False) -> torch.Tensor:
    """Unit-normalise each spatial feature vector over channels, in float32.

    ``eps`` sits *inside* the square root so the gradient stays finite where a feature vector is all zero
    (the NaN-gradient bug of LPIPS implementations that add eps after the sqrt). ``inplace`` overwrites a float32
    ``feat`` (no autograd graph allowed); above :data:`CHUNK_BYTES` image by image: the same numbers without
    feature-sized temporaries, whose fresh pages cost more than the arithmetic on large batches (docs/performance.md).
    """
    feat = feat.float()
    if not inplace:
        return feat * torch.rsqrt(feat.pow(2).sum(dim=1, keepdim=True) + eps)
    if feat.numel() * feat.element_size() <= CHUNK_BYTES:  # small taps: one batched pass (64 px batch 8: 0.8 -> 0.3 ms)
        return feat.mul_(torch.rsqrt(feat.pow(2).sum(dim=1, keepdim=True) + eps))
    for image in feat.split(1):
        image.mul_(torch.rsqrt(image.pow(2).sum(dim=1, keepdim=True) + eps))
    return feat


#: Floor (reflectance) under each band's per-image standard deviation in :func:`standardize_per_image`: keeps a flat
#: patch (calm water) from amplifying sensor noise without bound; ~10 DN, far below the texture of land.
STD_FLOOR = 1e-3
INPUT_NORMS = ("global", "per-image")


def input_floor(metadata: dict, name: str = "weights") -> float:
    """The std floor of a weights file: its ``input_floor`` metadata (v3 and later), else :data:`STD_FLOOR` (v2)."""
    text = metadata.get("input_floor")
    if text is None:
        return STD_FLOOR
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise WeightsError(f"{name}: input_floor must be a positive number in the weights metadata, got {text!r}")
    return value


def standardize_per_image(x: torch.Tensor, floor: float = STD_FLOOR) -> torch.Tensor:
    """Per image and band, ``(x - mean) / sqrt(var + floor^2)`` over H, W (population variance).

    The result is unchanged by any per-band gain > 0 and offset (exactly, up to the floor): the radiometric nuisance of
    two sensors' calibrations (CONTEXT.md: PlanetScope/S2 band ratios 0.96-1.21) is removed before the backbone and
    reported on its own by :func:`radiometric_difference`. Computed with ``instance_norm`` (one fused kernel: 14x
    faster than ``var_mean`` plus arithmetic on a 8x4x256x256 batch, same numbers to 4e-7).
    """
    return F.instance_norm(x.float(), eps=floor * floor)


def texture_stats(feat: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) features -> (N, 2C): each channel's spatial mean, then its spatial standard deviation.

    ``E[f^2] - E[f]^2`` (features are channel-normalised, |f| <= 1, so float32 keeps ~1e-7): on channels-last tensors
    two plain means are ~20x faster than ``torch.var_mean`` (docs/performance.md)."""
    mean = feat.mean(dim=(2, 3))
    var = (feat.square().mean(dim=(2, 3)) - mean.square()).clamp_min(0.0)
    return torch.cat([mean, torch.sqrt(var + 1e-12)], dim=1)


def texture_differences(fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
    """(N, C) per channel ``(mu_a - mu_b)^2 + (sigma_a - sigma_b)^2`` of two (N, C, H, W) feature maps."""
    d = (texture_stats(fa) - texture_stats(fb)).pow(2)
    c = fa.shape[1]
    return d[:, :c] + d[:, c:]


def _tap_distance(fa: torch.Tensor, fb: torch.Tensor, head: torch.Tensor, tex: torch.Tensor | None,
                  graph: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
    """One tap of :meth:`LPIPSSat.distance`: the (N,) texture term (or None) and the (N, 1, H, W) weighted squared
    difference, computed in place on a fresh difference when there is no graph."""
    if graph or fa.numel() * fa.element_size() <= CHUNK_BYTES or fa.shape[0] == 1:
        texture = texture_distance(fa, fb, tex) if tex is not None else None
        diff = fa - fb
        return texture, F.conv2d(diff.pow(2) if graph else diff.square_(), head)  # in place without a graph: one buffer less
    parts = [_tap_distance(fa[i : i + 1], fb[i : i + 1], head, tex, graph) for i in range(fa.shape[0])]
    return (torch.cat([t for t, _ in parts]) if tex is not None else None), torch.cat([d for _, d in parts])


def texture_distance(fa: torch.Tensor, fb: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(N,) ``sum_c w_c ((mu_a - mu_b)^2 + (sigma_a - sigma_b)^2)``; ``weights`` is (1, C)."""
    return (texture_differences(fa, fb) * weights.float()).sum(1)


def band_stats(x: torch.Tensor, floor: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and band mean and ``sqrt(var + floor^2)`` over H, W, each (N, C, 1, 1)."""
    var, mean = torch.var_mean(x.float(), dim=(2, 3), keepdim=True, correction=0)
    return mean, torch.sqrt(var + floor * floor)


def radiometric_difference(mean_a: torch.Tensor, std_a: torch.Tensor, mean_b: torch.Tensor, std_b: torch.Tensor) -> torch.Tensor:
    """(N,) radiometric part of a distance: RMS over bands of the differences of band means and band std (reflectance).

    A band-common gain g on an image of mean m and std s gives about sqrt(((g-1) m)^2 + ((g-1) s)^2); an offset
    o gives |o|. Zero for images that differ only in structure at equal band statistics.
    """
    dm = (mean_a - mean_b).flatten(1)
    ds = (std_a - std_b).flatten(1)
    return torch.sqrt((dm.pow(2) + ds.pow(2)).mean(1))


class LPIPSSat(nn.Module):
    """Learned perceptual distance between two multispectral images (Sentinel-2 reflectance).

    Args:
        weights: registry name (default: the shipped ``lpips-sat-s2-rn18``), a path to a ``.safetensors``
            file written by ``lpips-sat calibrate``, or a model folder written by :meth:`save_pretrained`
            (hub ids: :meth:`from_pretrained`).
        bands: band order of the tensors you pass (preset such as ``"planetscope-4b"``, or band names);
            default: the model's own order (R, G, B, NIR = B04, B03, B02, B08).
        input_range: ``"reflectance"`` (DN / 10000, about 0..1.5) or ``"dn"`` (divided by 10000 here).
        normalize: the lpips package's convention, for inputs that are *reflectance* scaled to a fixed interval:
            ``True``: values in [0, 1] are reflectance 0..1 (DN / 10000 clipped at 1, as SSL4EO-S12);
            ``False``: values in [-1, 1] are reflectance 0..1 via ``(x + 1) / 2``; ``None`` (default): no lpips
            convention, ``input_range`` applies. A value outside the declared interval is an error, never clipped.
            A display stretch (e.g. reflectance / 0.3) is not reflectance: undo it before the metric.
        spatial: return an (N, 1, H, W) distance map instead of (N,) distances.
        register: ``"translation"``: estimate the global shift of ``sr`` against ``hr`` (at most ``max_shift`` px),
            move both halfway (Lanczos-3; a strip a shift exposes takes the other image's pixels) before the backbone;
            shifts under 0.15 px are left alone, ramping to fully removed at 0.5 px;
            ``"none"``: compare pixel by pixel. Default: the weights' own form (translation for v5, none before).
        max_shift: largest shift registered (px; default: the weights', else 3). Larger shifts are left as damage.

    Attributes:
        lower_better: ``True`` (pyiqa's name; torchmetrics' ``higher_is_better=False``): a smaller distance is better.
        score_range: ``(0, upper)`` with ``upper = 2 * sum over taps of the largest head weight`` (see the property).

    Example:
        >>> import torch
        >>> from lpips_sat import LPIPSSat
        >>> metric = LPIPSSat()
        >>> hr = torch.rand(2, 4, 64, 64) * 0.3
        >>> metric(hr, hr).tolist()
        [0.0, 0.0]
    """

    lower_better = True

    def __init__(self, weights: str | Path | _Parts = DEFAULT_NAME, *, bands: str | Sequence[str] | None = None,
                 input_range: str = "reflectance", normalize: bool | None = None, spatial: bool = False, eps: float = 1e-10,
                 register: str | None = None, max_shift: float | None = None) -> None:
        super().__init__()
        parts = weights if isinstance(weights, _Parts) else _parts_from_weights(weights)
        if input_range not in INPUT_RANGES:
            raise InputError(f"input_range must be one of {INPUT_RANGES}, got {input_range!r}")
        if normalize not in (None, True, False):
            raise InputError(f"normalize must be True ([0, 1] inputs), False ([-1, 1] inputs) or None (reflectance), got {normalize!r}")
        if normalize is not None and input_range != "reflectance":
            raise InputError(f"normalize={normalize} declares [0, 1] / [-1, 1] inputs; it cannot be combined with input_range={input_range!r}")
        # channels-last weights and inputs: 1.1-1.25x faster ResNet forward on CPU (oneDNN) and the usual layout on
        # CUDA; numbers agree with the default layout to float32 rounding (docs/performance.md)
        self.backbone = parts.backbone.to(memory_format=torch.channels_last)
        channels = self.backbone.channels
        heads = parts.heads if parts.heads is not None else [torch.ones(1, c, 1, 1) for c in channels]
        self.heads = nn.ParameterList([nn.Parameter(h.reshape(1, c, 1, 1).float(), requires_grad=False) for h, c in zip(heads, channels)])
        self.texture_heads = None
        if parts.texture_heads is not None:
            self.texture_heads = nn.ParameterList([nn.Parameter(h.reshape(1, c).float(), requires_grad=False) for h, c in zip(parts.texture_heads, channels)])
        if any(bool((h < 0).any()) for h in (*self.heads, *(self.texture_heads or []))):
            raise WeightsError(f"{parts.name}: calibration heads must be non-negative")
        self.model_bands = tuple(parts.model_bands)
        self.bands = resolve(bands) if bands is not None else self.model_bands
        self._order = band_indices(self.bands, self.model_bands)
        self.register_buffer("mean", torch.tensor(list(parts.mean), dtype=torch.float32).reshape(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(parts.std), dtype=torch.float32).reshape(1, -1, 1, 1), persistent=False)
        self.input_range, self.normalize, self.spatial, self.eps = input_range, normalize, spatial, eps
        self.name, self.sha256, self.metadata = parts.name, parts.sha256, parts.metadata
        self._norm = (list(parts.mean), list(parts.std))  # as loaded (exact decimal values for save_pretrained)
        self.input_norm = str(parts.metadata.get("input_norm", "global"))
        if self.input_norm not in INPUT_NORMS:
            raise WeightsError(f"{parts.name}: unknown input_norm {self.input_norm!r} in the weights metadata; known: {INPUT_NORMS}")
        self.input_floor = input_floor(parts.metadata, parts.name)
        self.max_shift = _max_shift(parts, register, max_shift)
        self.requires_grad_(False)
        self.eval()

    # ---------------------------------------------------------------- construction helpers
    @classmethod
    def from_backbone(cls, checkpoint: str | Path, *, arch: str | None = None, checkpoint_bands: str | Sequence[str] | None = None,
                      model_bands: str | Sequence[str] = DEFAULT_BANDS, mean: Sequence[float] | None = None,
                      std: Sequence[float] | None = None, heads: str | Path | None = None, **kwargs) -> LPIPSSat:
        """Build an (uncalibrated, all-ones heads) metric on a public ResNet checkpoint.

        Args:
            checkpoint: registry name of an external backbone (e.g. ``ssl4eo-s12-rn18-moco-13b``) whose file is
                fetched from the hub, a local ``.safetensors``/``.pth``/``.ckpt`` file, or a hub id ``owner/name``.
            arch, checkpoint_bands: architecture and input bands of the checkpoint (taken from the registry
                entry, else ``arch`` is inferred from the keys; bands must then be given).
            model_bands: bands the metric feeds the backbone; checkpoint bands missing from them are filled from
                the spectrally nearest band (see :func:`lpips_sat.backbones.adapt_input_bands`).
            mean, std: normalisation applied to reflectance (default: the entry's, else identity as for SSL4EO-S12).
            heads: optional safetensors file of calibrated heads (``heads.{i}.weight``) for this backbone.
        """
        entry: WeightsEntry | None = None
        text = str(checkpoint)
        try:
            entry = get_entry(text)
        except WeightsError:
            entry = None
        if entry is not None:
            source = entry.hub_id if not Path(text).exists() else text
            if not source:
                raise WeightsError(f"{entry.name} has no hub location; download {entry.hub_filename} yourself and pass its path")
            state = read_checkpoint(source, entry.hub_filename)
            arch, checkpoint_bands = arch or entry.arch, checkpoint_bands or entry.bands
        else:
            state = read_checkpoint(checkpoint)
        state = to_torchvision_keys(state)
        guessed_arch, in_chans = infer_arch(state)
        arch = arch or guessed_arch
        if checkpoint_bands is None:
            if in_chans == 13:
                checkpoint_bands = "s2-l1c-13"
            elif in_chans == 3:
                checkpoint_bands = "s2-rgb"
            elif in_chans == 4:
                checkpoint_bands = DEFAULT_BANDS
            else:
                raise WeightsError(f"{checkpoint}: first convolution takes {in_chans} bands; pass checkpoint_bands=[...] naming them")
        ck_bands = [b for b in resolve(checkpoint_bands) if b is not None]
        if len(ck_bands) != in_chans:
            raise WeightsError(f"{checkpoint}: first convolution takes {in_chans} bands but checkpoint_bands has {len(ck_bands)}")
        model_bands = tuple(b for b in resolve(model_bands) if b is not None)
        state["conv1.weight"] = adapt_input_bands(state["conv1.weight"], ck_bands, model_bands)
        backbone = ResNetTaps(arch, in_chans=len(model_bands))
        load_strict(backbone, fill_bn_counters(state, backbone), str(checkpoint))
        head_tensors = None
        if heads is not None:
            tensors, _ = load_weights(heads)
            head_tensors = [tensors[f"heads.{i}.weight"] for i in range(len(TAPS))]
        n = len(model_bands)
        if entry is not None and mean is None and std is None and len(entry.mean) == len(ck_bands):
            # the entry's normalisation is per checkpoint band: carry it to the model bands that feed them
            mean = [entry.mean[ck_bands.index(b)] if b in ck_bands else 0.0 for b in model_bands]
            std = [entry.std[ck_bands.index(b)] if b in ck_bands else 1.0 for b in model_bands]
        parts = _Parts(backbone, head_tensors, model_bands, list(mean) if mean else [0.0] * n, list(std) if std else [1.0] * n,
                       name=entry.name if entry else Path(text).name, sha256=None,
                       metadata={"arch": arch, "checkpoint": text, "checkpoint_bands": json.dumps(ck_bands)})
        return cls(parts, **kwargs)

    @classmethod
    def random(cls, arch: str = "resnet18", *, width_div: int = 8, model_bands: Sequence[str] = DEFAULT_BANDS, seed: int = 0,
               input_norm: str = "global", texture: bool = False, **kwargs) -> LPIPSSat:
        """A random-weight metric (tiny by default) for tests and benchmarks; nothing is loaded from disk.

        ``texture=True`` adds random texture heads (the v3 distance form, :meth:`distance`)."""
        gen = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            backbone = ResNetTaps(arch, in_chans=len(model_bands), width_div=width_div)
        heads = [torch.rand(1, c, 1, 1, generator=gen) for c in backbone.channels]
        n = len(model_bands)
        texture_heads = [torch.rand(1, c, generator=gen) for c in backbone.channels] if texture else None
        parts = _Parts(backbone, heads, tuple(model_bands), [0.1] * n, [0.1] * n, name=f"random-{arch}-div{width_div}-seed{seed}", sha256=None,
                       metadata={"arch": arch, "input_norm": input_norm}, texture_heads=texture_heads)
        return cls(parts, **kwargs)

    # ---------------------------------------------------------------- hub model folders (lpips_sat.hub)
    @classmethod
    def from_pretrained(cls, repo_or_dir: str | Path, *, revision: str | None = None, cache_dir: str | Path | None = None,
                        force_download: bool = False, token: str | bool | None = None, local_files_only: bool = False, **kwargs) -> LPIPSSat:
        """Load a model folder written by :meth:`save_pretrained`, a hub repo holding one, or a registry name.

        Args:
            repo_or_dir: a local folder (``config.json`` + ``model.safetensors``), a hub id ``owner/name`` (downloaded
                into the hub cache with ``huggingface_hub``), or a registry name such as the shipped
                ``lpips-sat-s2-rn18`` (loaded offline from the wheel, as ``LPIPSSat(name)``).
            revision, cache_dir, force_download, token, local_files_only: as ``huggingface_hub.hf_hub_download``.
            **kwargs: :class:`LPIPSSat` options (``bands``, ``input_range``, ``normalize``, ``spatial``).
        Raises:
            WeightsError: the folder's sha256 or config does not match its weights. OfflineError: the hub is unreachable.
        """
        text = str(repo_or_dir)
        folder = Path(text)
        from_hub = not folder.is_dir()
        if from_hub:
            if _known_name(text):  # the lookup also registers the shipped weights
                return cls(text, **kwargs)
            if not hub.is_hub_id(text):
                raise MissingFileError(f"{text} is neither a model folder, a registry name ({', '.join(sorted(REGISTRY))}) nor a hub id owner/name")
            folder = hub.download(text, revision=revision, cache_dir=cache_dir, force_download=force_download, token=token,
                                  local_files_only=local_files_only)
        parts = _parts_from_folder(folder)
        if from_hub:
            parts.name = text  # a hub model is known by its repo id
        return cls(parts, **kwargs)

    def export(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """The tensors (``backbone.*``, ``heads.{i}.weight``) and safetensors metadata that reproduce this metric."""
        tensors = {f"backbone.{k}": v for k, v in self.backbone.state_dict().items()}
        tensors.update({f"heads.{i}.weight": h.detach() for i, h in enumerate(self.heads)})
        tensors.update({f"texture_heads.{i}.weight": h.detach() for i, h in enumerate(self.texture_heads or [])})
        meta = {str(k): str(v) for k, v in self.metadata.items() if k not in ("register", "max_shift")}
        if self.registers:  # the instance's own form, also when chosen with LPIPSSat(..., register=...)
            meta.update({"register": "translation", "max_shift": f"{self.max_shift:g}"})
        mean, std = self._norm
        meta.update({"name": self.name, "arch": self.backbone.arch, "width_div": str(self.backbone.width_div), "taps": json.dumps(list(TAPS)),
                     "bands": json.dumps(list(self.model_bands)), "mean": json.dumps(mean), "std": json.dumps(std)})
        return tensors, meta

    def save_pretrained(self, save_directory: str | Path, *, license: str | None = None, tags: Sequence[str] = (), datasets: Sequence[str] = (),
                        dtype: torch.dtype = torch.float32, push_to_hub: bool = False, repo_id: str | None = None, **push_kwargs) -> Path:
        """Write a hub model folder: ``model.safetensors``, ``config.json`` (bands, normalisation, arch, taps, sha256)
        and a model card ``README.md`` (YAML metadata: license, library_name, tags, datasets).

        ``license`` defaults to the hub id found in the weights' licence text (else ``other``). With ``push_to_hub``,
        the folder is then uploaded to ``repo_id`` (see :meth:`push_to_hub` for ``push_kwargs``).
        """
        tensors, meta = self.export()
        folder = hub.save_folder(save_directory, tensors, meta, license=license, tags=tags, datasets=datasets, dtype=dtype)
        if push_to_hub:
            if not repo_id:
                raise InputError("save_pretrained(push_to_hub=True) needs repo_id='owner/name'")
            hub.upload(folder, repo_id, **push_kwargs)
        return folder

    def push_to_hub(self, repo_id: str, *, token: str | None = None, private: bool | None = None, commit_message: str | None = None,
                    branch: str | None = None, create_pr: bool = False, license: str | None = None, tags: Sequence[str] = (),
                    datasets: Sequence[str] = ()) -> str:
        """Create the hub repo ``repo_id`` if needed and upload a :meth:`save_pretrained` folder as one commit; returns its URL."""
        return hub.push_folder(lambda tmp: self.save_pretrained(tmp, license=license, tags=tags, datasets=datasets), repo_id, token=token,
                               private=private, commit_message=commit_message, branch=branch, create_pr=create_pr)

    def train(self, mode: bool = True) -> LPIPSSat:
        """The metric is always in eval mode (frozen BatchNorm statistics), also inside a training model."""
        return super().train(False)

    # ---------------------------------------------------------------- the metric
    def prepare(self, x: torch.Tensor, name: str = "input") -> torch.Tensor:
        """Validate ``x`` and turn it into normalised backbone input (float32, model band order)."""
        x = self.reflectance(x, name)
        if self.input_norm == "per-image":
            return standardize_per_image(x, self.input_floor)
        return (x - self.mean) / self.std

    def reflectance(self, x: torch.Tensor, name: str = "input") -> torch.Tensor:
        """Validate ``x`` and return it as float32 reflectance in the model's band order (before normalisation)."""
        if not isinstance(x, torch.Tensor):
            raise InputError(f"Expected `{name}` to be a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 4:
            hint = " (add a batch dimension: x[None])" if x.ndim == 3 else ""
            raise InputError(f"Expected `{name}` to have (N, C, H, W) shape, got {tuple(x.shape)}{hint}")
        if x.shape[1] != len(self.bands):
            raise InputError(f"`{name}` has {x.shape[1]} bands but the metric expects {len(self.bands)} ({', '.join(map(str, self.bands))}); select those bands or pass bands=... with your band order")
        if min(x.shape[-2:]) < MIN_SIZE:
            raise InputError(f"`{name}` is {x.shape[-2]}x{x.shape[-1]} px; LPIPS-Sat needs at least {MIN_SIZE}x{MIN_SIZE} (the deepest tap has stride 32)")
        if not x.is_floating_point():
            if self.input_range != "dn":
                raise InputError(f"`{name}` is an integer tensor ({x.dtype}); pass float reflectance (DN / 10000) or input_range='dn'")
        x = x.float()
        if x.shape[0] == 0:  # an empty batch has no values to check; its distances are an empty tensor
            return x[:, self._order]
        lo, hi = torch.stack(torch.aminmax(x)).tolist()  # one pass, no copy; NaN/inf anywhere make lo or hi non-finite
        if not (math.isfinite(lo) and math.isfinite(hi)):
            bad = int((~torch.isfinite(x)).sum())
            raise InputError(f"`{name}` contains {bad} NaN/inf values; mask or fill nodata before calling the metric")
        if self.normalize is not None:
            (low, high), gain, offset = LPIPS_CONVENTIONS[self.normalize]
            if lo < low or hi > high:
                raise InputError(f"`{name}` has values {lo:g}..{hi:g} outside [{low:g}, {high:g}], the range declared by normalize={self.normalize}; "
                                 "clamp the network output to that range, or pass reflectance with normalize=None")
            x = x * gain + offset if gain != 1.0 or offset != 0.0 else x
        elif self.input_range == "reflectance":
            if hi > MAX_REFLECTANCE:
                raise InputError(f"`{name}` looks like digital numbers (max {hi:g} > {MAX_REFLECTANCE}); divide by 10000 (Sentinel-2 L1C/L2A) or pass input_range='dn'")
            if lo < -0.5:
                raise InputError(f"`{name}` has reflectance down to {lo:g}; expected roughly 0..1.5 (was an offset such as -1000 DN applied twice?)")
        else:
            if hi <= MIN_DN_MAX:
                raise InputError(f"`{name}` was declared input_range='dn' but its maximum is {hi:g}: it looks like reflectance already; use input_range='reflectance'")
            x = x / 10000.0
        if self._order != list(range(len(self._order))):
            x = x[:, self._order]
        return x

    def prepare_pair(self, sr: torch.Tensor, hr: torch.Tensor, names: tuple[str, str] = ("sr", "hr")) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`prepare` both images and check that they have the same shape (every input check of :meth:`forward`);
        ``names`` name them in error messages."""
        a, b = self.prepare(sr, names[0]), self.prepare(hr, names[1])
        if a.shape != b.shape:
            raise InputError(f"`{names[0]}` and `{names[1]}` must have the same shape, got {tuple(sr.shape)} and {tuple(hr.shape)}")
        return a, b

    def _register(self, a: torch.Tensor, b: torch.Tensor, estimate: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Prepared ``a``, ``b`` registered when the metric registers, with the (N, 2) shift; a metric that does not
        register returns them as they are, with the shift estimated only when ``estimate`` (else ``None``)."""
        if self.max_shift > 0:
            if math.ceil(self.max_shift) + LANCZOS_A >= min(a.shape[-2:]):
                raise InputError(f"`sr` is {a.shape[-2]}x{a.shape[-1]} px, too small to register shifts up to max_shift={self.max_shift:g} px; "
                                 "pass larger images or a smaller max_shift")
            return register(a, b, self.max_shift)
        return a, b, (estimate_shift(a, b, DEFAULT_MAX_SHIFT) if estimate else None)

    def pair_features(self, sr: torch.Tensor, hr: torch.Tensor, names: tuple[str, str] = ("sr", "hr")
                      ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """Tap features of ``sr`` and ``hr`` as :meth:`forward` compares them (prepared, registered when :attr:`registers`),
        from one backbone pass, and the (N, 2) shift of ``sr`` against ``hr`` (estimated also when not removed): for
        callers that want the distance and its map (:meth:`distance`) without running the network twice. ``names``
        name the images in error messages."""
        a, b = self.prepare_pair(sr, hr, names)
        a, b, shift = self._register(a, b, True)
        feats = self.features(stack_channels_last(a, b), prepared=True)
        n = a.shape[0]
        return [f[:n] for f in feats], [f[n:] for f in feats], shift

    def features(self, x: torch.Tensor, name: str = "input", prepared: bool = False) -> list[torch.Tensor]:
        """Channel-normalised tap features of ``x`` (float32), reusable with :meth:`distance` (e.g. cached targets)."""
        if not prepared:
            x = self.prepare(x, name)
        taps = self.backbone(x.contiguous(memory_format=torch.channels_last))
        for i, tap in enumerate(taps):  # without a graph the raw taps are normalised in place (nothing else holds them)
            taps[i] = normalize_channels(tap, self.eps, inplace=not (torch.is_grad_enabled() and tap.requires_grad))
        return taps

    def distance(self, feats_a: Sequence[torch.Tensor], feats_b: Sequence[torch.Tensor], *, spatial: bool = False,
                 size: tuple[int, int] | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Weighted squared feature difference summed over taps: returns ``(total, per_tap)``.

        Per tap ``l``: ``d_l = mean_hw sum_c w_lc (f_a - f_b)^2``; with ``spatial=True`` each tap's map is
        bilinearly upsampled to ``size`` and the result has shape (N, 1, H, W).

        Weights with texture heads ``t`` (v3) add, per tap, the texture term of DISTS (Ding et al. 2020, eq. 7-8) in
        squared form: ``sum_c t_lc ((mu_a - mu_b)^2 + (sigma_a - sigma_b)^2)`` over each channel's spatial mean and
        standard deviation. It ignores *where* a texture is (sub-pixel shifts, another acquisition's small changes)
        and sees new texture (stripes, blocks, quantisation contours). In a spatial map it is spread evenly over
        the image, so the map still averages to the distance.
        """
        parts = []
        graph = torch.is_grad_enabled() and any(f.requires_grad for f in (*feats_a, *feats_b))
        textures = self.texture_heads if self.texture_heads is not None else [None] * len(self.heads)
        for fa, fb, head, tex in zip(feats_a, feats_b, self.heads, textures):
            texture, per_pixel = _tap_distance(fa, fb, head.float(), tex, graph)
            if spatial:
                if size is None:
                    raise InputError("distance(spatial=True) needs size=(H, W)")
                part = F.interpolate(per_pixel, size=size, mode="bilinear", align_corners=False)
                parts.append(part if texture is None else part + texture.reshape(-1, 1, 1, 1))
            else:
                part = per_pixel.mean(dim=(2, 3)).squeeze(1)
                parts.append(part if texture is None else part + texture)
        return torch.stack(parts).sum(0), parts

    def forward(self, sr: torch.Tensor, hr: torch.Tensor, spatial: bool | None = None, per_layer: bool = False,
                radiometry: bool = False, registration: bool = False):
        """Distance between ``sr`` and ``hr`` (same shape, (N, C, H, W)).

        Returns:
            (N,) distances, or (N, 1, H, W) maps when ``spatial``; with ``per_layer=True`` a tuple
            ``(total, [stem, layer1, layer2, layer3, layer4] contributions)``; with ``radiometry=True`` the (N,)
            radiometric difference (:func:`radiometric_difference`, reflectance units) is appended to the result:
            ``(total, radiometry)`` or ``(total, per_layer, radiometry)``. It is *not* part of ``total`` for
            per-image-normalised weights (v2), which ignore per-band gain/offset by design. With ``registration=True``
            the (N, 2) shift ``(dy, dx)`` in px of ``sr`` against ``hr`` (:func:`lpips_sat.register.estimate_shift`) is
            appended last; it is the shift that was removed when the metric registers (:attr:`max_shift` > 0), else
            only an estimate (within 3 px).
        Raises:
            InputError: wrong type, rank, band count, size, dtype, non-finite values, or DN/reflectance mix-up.
        """
        spatial = self.spatial if spatial is None else spatial
        if self.input_norm == "global" and not radiometry:
            a, b = self.prepare_pair(sr, hr)
        else:
            ra, rb = self.reflectance(sr, "sr"), self.reflectance(hr, "hr")
            if ra.shape != rb.shape:
                raise InputError(f"`sr` and `hr` must have the same shape, got {tuple(sr.shape)} and {tuple(hr.shape)}")
            if self.input_norm == "per-image":
                a, b = standardize_per_image(ra, self.input_floor), standardize_per_image(rb, self.input_floor)
            else:
                a, b = (ra - self.mean) / self.std, (rb - self.mean) / self.std
            if radiometry:
                (ma, sa), (mb, sb) = band_stats(ra), band_stats(rb)
        a, b, shift = self._register(a, b, registration)
        if torch.is_grad_enabled() and a.requires_grad != b.requires_grad:
            # used as a loss: only one side needs a graph, so the other runs without one (1.2-1.9x faster forward +
            # backward than one concatenated pass, which back-propagates through both halves; docs/performance.md)
            with torch.no_grad():
                fixed = self.features(b if a.requires_grad else a, prepared=True)
            moving = self.features(a if a.requires_grad else b, prepared=True)
            fa, fb = (moving, fixed) if a.requires_grad else (fixed, moving)
        else:  # one pass over both images
            feats = self.features(stack_channels_last(a, b), prepared=True)
            n = a.shape[0]
            fa, fb = [f[:n] for f in feats], [f[n:] for f in feats]
        total, parts = self.distance(fa, fb, spatial=spatial, size=tuple(a.shape[-2:]))
        out = (total, parts) if per_layer else (total,)
        if radiometry:
            out = out + (radiometric_difference(ma, sa, mb, sb),)
        if registration:
            out = out + (shift,)
        return out if len(out) > 1 else total

    @property
    def score_range(self) -> tuple[float, float]:
        """``(0, upper)``: every distance (and every value of a spatial map) lies in this interval.

        ``upper = 2 * sum over taps of the largest head weight`` (:func:`lpips_sat.backbones.distance_upper_bound`);
        it is reached only by disjoint feature supports, so real distances stay far below it. Texture heads add the
        same bound of their own: per channel ``mu^2 + sigma^2 = mean_hw f^2``, so each image's (mu, sigma) vector
        has norm <= 1 in the non-negative orthant and two of them are at most sqrt(2) apart.
        """
        return 0.0, distance_upper_bound(self.heads) + (distance_upper_bound(self.texture_heads) if self.texture_heads is not None else 0.0)

    @property
    def registers(self) -> bool:
        """Whether :meth:`forward` removes a global shift before the distance (then :meth:`features` and :meth:`distance`
        alone, which compare pixel by pixel, do not give :meth:`forward`'s numbers)."""
        return self.max_shift > 0

    def extra_repr(self) -> str:
        norm = "" if self.normalize is None else f", normalize={self.normalize}"
        reg = f", register='translation', max_shift={self.max_shift:g}" if self.registers else ""
        return f"name={self.name!r}, bands={list(self.bands)}, input_range={self.input_range!r}{norm}, spatial={self.spatial}{reg}"


def _max_shift(parts: _Parts, register: str | None, max_shift: float | None) -> float:
    """The metric's registration (0: none) from the weights' metadata and the ``register``/``max_shift`` options."""
    try:
        own = max_shift_of(parts.metadata, parts.name)
    except ValueError as exc:
        raise WeightsError(str(exc)) from exc
    if register is not None and register not in REGISTER_MODES:
        raise InputError(f"register must be one of {REGISTER_MODES}, got {register!r}")
    if max_shift is not None and (isinstance(max_shift, bool) or not (isinstance(max_shift, (int, float)) and math.isfinite(max_shift) and max_shift > 0)):
        raise InputError(f"max_shift must be a positive number of pixels, got {max_shift!r}")
    if max_shift is not None and (register == "none" or (register is None and own == 0)):
        raise InputError(f"max_shift={max_shift:g} applies to a registering metric, but {parts.name} compares pixel by pixel"
                         + (" (register='none')" if register == "none" else "; pass register='translation' too"))
    if register == "none":
        return 0.0
    if register == "translation" or own > 0:
        return float(max_shift if max_shift is not None else own or DEFAULT_MAX_SHIFT)
    return 0.0


def _known_name(text: str) -> bool:
    try:
        get_entry(text)
    except WeightsError:
        return False
    return True


def _parts_from_folder(folder: Path) -> _Parts:
    """Load a model folder (:mod:`lpips_sat.hub` layout), checking its sha256 and config against the weights file."""
    config = hub.read_config(folder)
    parts = _parts_from_weights(folder / hub.WEIGHTS_NAME, sha256=config["sha256"])
    hub.check_consistent(config, parts.metadata, str(folder))
    parts.name = config["name"] or folder.name
    return parts


def _parts_from_weights(weights: str | Path, sha256: str | None = None) -> _Parts:
    """Load a registry name, a model folder or a safetensors path into :class:`_Parts`, verifying sha256 (shipped
    files, folders, or ``sha256``)."""
    text = str(weights)
    if Path(text).is_dir():
        return _parts_from_folder(Path(text))
    if text.endswith(".safetensors") or Path(text).is_file():
        tensors, meta = load_weights(text, sha256=sha256)
        name, sha = Path(text).name, sha256
    else:
        entry = get_entry(text)
        if entry.file is None:
            raise WeightsError(f"{entry.name} is an external backbone without shipped heads; use LPIPSSat.from_backbone({entry.name!r}) with a local checkpoint path or online hub access")
        tensors, meta = load_weights(weights_dir() / entry.file, sha256=entry.sha256)
        name, sha = entry.name, entry.sha256
    for key in ("arch", "bands", "mean", "std"):
        if key not in meta:
            raise WeightsError(f"{text}: metadata lacks {key!r}; not an lpips-sat weights file")
    bands = tuple(json.loads(meta["bands"]))
    backbone = ResNetTaps(meta["arch"], in_chans=len(bands), width_div=int(meta.get("width_div", "1")))
    state = {k[len("backbone."):]: v for k, v in tensors.items() if k.startswith("backbone.")}
    load_strict(backbone, state, text)
    head_keys = [f"heads.{i}.weight" for i in range(len(TAPS))]
    texture_keys = [f"texture_heads.{i}.weight" for i in range(len(TAPS))]
    has_texture = any(k in tensors for k in texture_keys)
    expected = head_keys + (texture_keys if has_texture else [])
    extra = sorted(set(tensors) - set(expected) - {f"backbone.{k}" for k in state})
    missing = [k for k in expected if k not in tensors]
    if missing or extra:
        raise WeightsError(f"{text}: missing head tensors {missing} / unexpected tensors {extra}")
    heads = [tensors[k] for k in head_keys]
    texture_heads = [tensors[k] for k in texture_keys] if has_texture else None
    return _Parts(backbone, heads, bands, json.loads(meta["mean"]), json.loads(meta["std"]), name, sha, meta, texture_heads)
