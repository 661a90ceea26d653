"""ResNet feature taps with torchvision naming, and loaders for public Sentinel-2 checkpoints.

The backbone is a plain torchvision ResNet whose first convolution takes ``in_chans`` bands, so any
checkpoint written with torchvision or timm key names (``conv1.weight``, ``layer1.0.bn1.running_mean`` …)
loads unchanged. The classification head ``fc`` is not part of the backbone.

Key maps for public self-supervised checkpoints (SSL4EO-S12 MoCo/DINO, SeCo, Satlas) live here too:
each turns a foreign state dict into torchvision keys, and the result is loaded strictly.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from torch import nn
from torchvision.models import resnet

from lpips_sat.bands import S2_BANDS, canonical, nearest_band
from lpips_sat.errors import MissingFileError, OfflineError, WeightsError

log = logging.getLogger(__name__)

#: The taps of every ResNet, in forward order: stem (after the first ReLU) and the four stages.
TAPS: tuple[str, ...] = ("stem", "layer1", "layer2", "layer3", "layer4")

_ARCHS: dict[str, Callable[..., resnet.ResNet]] = {
    "resnet18": resnet.resnet18,
    "resnet34": resnet.resnet34,
    "resnet50": resnet.resnet50,
}


def tap_channels(arch: str) -> tuple[int, ...]:
    """Number of channels of each tap of ``arch`` (stem, layer1..layer4)."""
    if arch not in _ARCHS:
        raise WeightsError(f"Unknown backbone architecture {arch!r}; known: {sorted(_ARCHS)}")
    expansion = 4 if arch == "resnet50" else 1
    return (64,) + tuple(c * expansion for c in (64, 128, 256, 512))


class ResNetTaps(nn.Module):
    """A torchvision ResNet trunk returning the activations of :data:`TAPS`.

    Args:
        arch: ``resnet18``, ``resnet34`` or ``resnet50``.
        in_chans: number of input bands.
        width_div: divide every width by this (tiny random test networks only; 1 for real models).
    """

    def __init__(self, arch: str = "resnet18", in_chans: int = 4, width_div: int = 1) -> None:
        super().__init__()
        if arch not in _ARCHS:
            raise WeightsError(f"Unknown backbone architecture {arch!r}; known: {sorted(_ARCHS)}")
        net = _ARCHS[arch](weights=None)
        if width_div > 1:
            net = _narrow(net, width_div)
        stem_out = net.conv1.out_channels
        net.conv1 = nn.Conv2d(in_chans, stem_out, kernel_size=7, stride=2, padding=3, bias=False)
        self.arch, self.in_chans, self.width_div = arch, in_chans, width_div
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.channels = tuple(c // width_div for c in tap_channels(arch))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return ``[stem, layer1, layer2, layer3, layer4]`` activations (strides 2, 4, 8, 16, 32)."""
        stem = self.relu(self.bn1(self.conv1(x)))
        l1 = self.layer1(self.maxpool(stem))
        l2 = self.layer2(l1)
        l3 = self.layer3(l2)
        l4 = self.layer4(l3)
        return [stem, l1, l2, l3, l4]


def distance_upper_bound(heads: Sequence[torch.Tensor]) -> float:
    """Largest possible LPIPS distance with these non-negative heads on :class:`ResNetTaps` features.

    Every tap is a ReLU output, so its channel-normalised feature vectors are non-negative with norm <= 1 and
    ``|f_a - f_b|^2 = |f_a|^2 + |f_b|^2 - 2 f_a.f_b <= 2``; hence ``sum_c w_c (f_a - f_b)_c^2 <= 2 max_c w_c`` at every
    pixel of a tap, and spatial means or bilinear upsampling keep the bound: ``d <= 2 sum_l max_c w_lc``.
    """
    return 2.0 * float(sum(float(h.max()) for h in heads))


def _narrow(net: resnet.ResNet, div: int) -> resnet.ResNet:
    """Rebuild ``net`` with every channel count divided by ``div`` (test-size networks)."""
    block = type(net.layer1[0])
    layers = [len(getattr(net, f"layer{i}")) for i in range(1, 5)]
    small = resnet.ResNet(block, layers)
    # torchvision has no width multiplier: rebuild by hand with narrower planes.
    small.inplanes = 64 // div
    small.conv1 = nn.Conv2d(3, 64 // div, 7, 2, 3, bias=False)
    small.bn1 = nn.BatchNorm2d(64 // div)
    small.layer1 = small._make_layer(block, 64 // div, layers[0])
    small.layer2 = small._make_layer(block, 128 // div, layers[1], stride=2)
    small.layer3 = small._make_layer(block, 256 // div, layers[2], stride=2)
    small.layer4 = small._make_layer(block, 512 // div, layers[3], stride=2)
    return small


# --------------------------------------------------------------------------------------------------
# Foreign checkpoints -> torchvision keys
# --------------------------------------------------------------------------------------------------

#: Keys *inside* the chosen encoder that a feature backbone does not use: classification or projection heads
#: (MoCo v2 ``fc.0``/``fc.2``, MoCo v3 ``fc.0``..``fc.4``, torchgeo/timm ``fc``, DINO ``head``).
_DROP = re.compile(r"^(fc|head|heads|projector|predictor|classifier)(\.|$)")

#: Sibling parts of a self-supervised training wrapper, *outside* the chosen encoder, dropped when a prefix is
#: stripped: momentum/key encoders, predictors, queues, projection heads, Satlas FPN/upsampling/task heads.
#: Any other key outside the encoder is kept, so the strict load reports it.
_SIBLINGS = re.compile(
    r"^(module\.)?(encoder_k|momentum_encoder|predictor|queue|queue_ptr|heads_q|heads_k|head|heads|fc|projector|"
    r"intermediates|upsample|fpn|student|teacher)(\.|$)"
)

#: Encoder prefixes, most specific first; the first one under which ``conv1.weight`` (or ``0.weight`` for
#: sequential encoders) exists wins. Each names the checkpoint family that writes it.
_PREFIXES: tuple[tuple[str, str], ...] = (
    ("module.encoder_q.", "MoCo v2 (SSL4EO-S12 raw, DataParallel)"),
    ("module.base_encoder.", "MoCo v3 (SSL4EO-S12 raw, DataParallel)"),
    ("encoder_q.", "MoCo v2 / SeCo (Lightning)"),
    ("base_encoder.", "MoCo v3 without DataParallel"),
    ("teacher.backbone.", "DINO teacher inside a flattened checkpoint"),
    ("teacher.module.backbone.", "DINO teacher (DataParallel)"),
    ("module.backbone.", "DINO (DataParallel)"),
    ("backbone.backbone.resnet.", "Satlas multi-image ResNet"),
    ("backbone.resnet.", "Satlas pretrain ResNet"),
    ("backbone.backbone.", "nested backbone"),
    ("backbone.", "DINO teacher / generic backbone"),
    ("model.", "timm/Lightning wrapper"),
    ("module.", "DataParallel"),
    ("state_dict.", "Lightning"),
)

#: SeCo (and other ``nn.Sequential(*resnet.children())`` encoders) index children by position:
#: 0 conv1, 1 bn1, 2 relu, 3 maxpool, 4..7 layer1..layer4, 8 avgpool (2, 3, 8 hold no tensors).
_SEQUENTIAL = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}


def unwrap_checkpoint(obj: object) -> dict[str, torch.Tensor]:
    """Find the tensor state dict inside a loaded checkpoint (``state_dict``/``model``/``teacher`` entries)."""
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)  # type: ignore[arg-type]
        for key in ("state_dict", "model", "teacher", "module", "net"):
            if key in obj:
                return unwrap_checkpoint(obj[key])
    raise WeightsError("Checkpoint holds no tensor state dict (looked for the dict itself and 'state_dict', 'model', 'teacher', 'module', 'net')")


def encoder_prefix(state: Mapping[str, torch.Tensor]) -> tuple[str, bool]:
    """Return ``(prefix, sequential)``: the key prefix of the ResNet encoder inside ``state``.

    ``sequential`` is true for ``nn.Sequential(*resnet.children())`` encoders (SeCo), whose keys are
    numbered (``0.weight`` is ``conv1.weight``). A torchvision/timm-keyed dict gives ``("", False)``.
    """
    if "conv1.weight" in state:
        return "", False
    for candidate, _family in _PREFIXES:
        if candidate + "conv1.weight" in state:
            return candidate, False
        if candidate + "0.weight" in state and candidate + "4.0.conv1.weight" in state:
            return candidate, True
    return "", False


def to_torchvision_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a public ResNet checkpoint's keys onto :class:`ResNetTaps` (torchvision) keys.

    Handles raw MoCo v2 (``module.encoder_q.``), MoCo v3 (``module.base_encoder.``), DINO teachers
    (``backbone.``), Satlas (``backbone.resnet.``), SeCo's sequential encoders (``encoder_q.0`` -> ``conv1``,
    ``encoder_q.4`` -> ``layer1``), and timm/torchgeo names. Projection/classification heads inside the encoder
    and the known sibling parts of the training wrapper (key/momentum encoder, predictor, queue, FPN) are
    dropped; every other key is kept, so :func:`load_strict` names it.
    """
    prefix, sequential = encoder_prefix(state)
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in state.items():
        if prefix:
            if not key.startswith(prefix):
                if _SIBLINGS.match(key):
                    dropped.append(key)
                else:
                    out[key] = value  # foreign key: strict load reports it
                continue
            key = key[len(prefix):]
        if sequential:
            first, _, rest = key.partition(".")
            if first in _SEQUENTIAL and rest:
                key = f"{_SEQUENTIAL[first]}.{rest}"
        if _DROP.match(key):
            dropped.append(key)
            continue
        out[key] = value
    if dropped:
        log.info("Encoder prefix %r: dropped %d head/sibling tensors (e.g. %s)", prefix, len(dropped), dropped[:3])
    return out


def fill_bn_counters(state: Mapping[str, torch.Tensor], module: nn.Module) -> dict[str, torch.Tensor]:
    """Add the ``num_batches_tracked`` counters that timm/SSL checkpoints often omit (they do not affect eval)."""
    out = dict(state)
    for key in module.state_dict():
        if key.endswith("num_batches_tracked") and key not in out and key.replace("num_batches_tracked", "running_mean") in out:
            out[key] = torch.tensor(0, dtype=torch.long)
    return out


def infer_arch(state: Mapping[str, torch.Tensor]) -> tuple[str, int]:
    """Guess ``(arch, in_chans)`` of a torchvision-keyed ResNet state dict."""
    if "conv1.weight" not in state:
        raise WeightsError("State dict has no 'conv1.weight'; is it a ResNet?")
    in_chans = int(state["conv1.weight"].shape[1])
    if "layer1.0.conv3.weight" in state:
        return "resnet50", in_chans
    n3 = len({k.split(".")[1] for k in state if k.startswith("layer3.")})
    return ("resnet34" if n3 == 6 else "resnet18"), in_chans


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with an error that names ``source`` and the offending keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise WeightsError(f"{source}: state dict does not match the {type(module).__name__}: missing keys {missing[:8]}{' …' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}{' …' if len(unexpected) > 8 else ''}")
    bad = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if bad:
        raise WeightsError(f"{source}: shape mismatch for {bad[:5]} (expected {[tuple(own[k].shape) for k in bad[:5]]}, got {[tuple(state[k].shape) for k in bad[:5]]})")
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


#: Checkpoint bands filled with zeros (not from a neighbour) when the input lacks them.
ZERO_FILL = frozenset({"B10"})


def adapt_input_bands(conv_weight: torch.Tensor, checkpoint_bands: Sequence[str], input_bands: Sequence[str]) -> torch.Tensor:
    """Re-order the first convolution's input channels from ``checkpoint_bands`` to ``input_bands``.

    A checkpoint band the input lacks is *filled from the spectrally nearest input band*: its filter is
    added onto that band's filter (equivalent to copying the nearest band into the missing one).
    This is the documented fallback for feeding 4-band R,G,B,NIR imagery to a 13-band SSL4EO-S12 model.
    Bands of :data:`ZERO_FILL` (the B10 cirrus band, near zero over clear land and zero-filled by the SSL4EO-S12
    authors for L2A input) are filled with zeros instead: their filter is dropped.
    """
    if conv_weight.shape[1] != len(checkpoint_bands):
        raise WeightsError(f"First convolution has {conv_weight.shape[1]} input channels but {len(checkpoint_bands)} checkpoint bands were declared")
    inputs = [canonical(b) for b in input_bands]
    out = conv_weight.new_zeros(conv_weight.shape[0], len(inputs), *conv_weight.shape[2:])
    for i, band in enumerate(checkpoint_bands):
        band = canonical(band)
        if band not in inputs and band in ZERO_FILL:
            log.info("Checkpoint band %s filled with zeros", band)
            continue
        target = band if band in inputs else nearest_band(band, inputs)
        out[:, inputs.index(target)] += conv_weight[:, i]
        if band not in inputs:
            log.info("Checkpoint band %s (%.0f nm) filled from input band %s", band, S2_BANDS[band][0], target)
    return out


def read_checkpoint(path_or_hub_id: str | Path, filename: str | None = None) -> dict[str, torch.Tensor]:
    """Read a checkpoint's tensors from a local file or a Hugging Face hub id.

    ``.safetensors`` files are read with safetensors; ``.pth/.pt/.ckpt`` only through
    ``torch.load(weights_only=True)``. A hub id (``owner/name``) that is not a local path is fetched with
    ``huggingface_hub.hf_hub_download``; offline, an :class:`OfflineError` says to pass a local file.
    """
    path = Path(path_or_hub_id)
    if not path.exists():
        text = str(path_or_hub_id)
        if re.fullmatch(r"[\w.-]+/[\w.-]+", text) and not text.endswith((".pth", ".pt", ".ckpt", ".safetensors")):
            path = _hub_download(text, filename)
        else:
            raise MissingFileError(f"Checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from exc
    try:
        # argparse.Namespace is a plain attribute container that DINO training scripts store as 'args'.
        allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
        with allow([argparse.Namespace]) if allow else contextlib.nullcontext():
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{path}: cannot be read with torch.load(weights_only=True) ({exc}); convert it to safetensors") from exc
    return unwrap_checkpoint(obj)


def _hub_download(repo_id: str, filename: str | None) -> Path:
    try:
        from huggingface_hub import hf_hub_download, list_repo_files
    except ImportError as exc:  # pragma: no cover - optional dependency
        raise OfflineError(f"{repo_id} looks like a hub id but huggingface-hub is not installed: pip install 'lpips-sat[eval]' or pass a local file") from exc
    try:
        if filename is None:
            files = [f for f in list_repo_files(repo_id) if f.endswith((".safetensors", ".pth", ".pt", ".ckpt"))]
            if not files:
                raise WeightsError(f"Hub repo {repo_id} has no .safetensors/.pth/.ckpt file")
            filename = sorted(files, key=lambda f: not f.endswith(".safetensors"))[0]
        return Path(hf_hub_download(repo_id, filename))
    except WeightsError:
        raise
    except Exception as exc:
        raise OfflineError(f"Could not fetch {repo_id}/{filename or ''} from the Hugging Face hub ({type(exc).__name__}: {exc}). Offline? Download the file elsewhere and pass its local path.") from exc
