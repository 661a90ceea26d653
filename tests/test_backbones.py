"""Loaders of public Sentinel-2 ResNet checkpoints, on synthetic state dicts shaped like the real files.

Each family below reproduces the key layout of a released checkpoint (learned from the authors' code, see
docs/backbones.md): SSL4EO-S12 MoCo-v2 / MoCo-v3 / DINO raw checkpoints, torchgeo/timm re-exports, SeCo
Lightning checkpoints and SatlasPretrain ResNets. The expectation is independent of ``lpips_sat``: every
family is also loaded with the *authors'* recipe into a plain torchvision module, and the tap activations
of both must agree.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from lpips_sat import LPIPSSat
from lpips_sat.backbones import read_checkpoint, to_torchvision_keys
from lpips_sat.errors import MissingFileError, OfflineError, WeightsError
from lpips_sat.registry import save_weights

S2_13 = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
RGB = ["B04", "B03", "B02"]


# ------------------------------------------------------------------------------------------------ builders
def _torchvision_net(arch: str, in_chans: int, seed: int) -> nn.Module:
    """A torchvision ResNet with ``in_chans`` inputs and non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    net = getattr(torchvision.models, arch)(weights=None)
    net.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0, 0.1)
    return net.eval()


_NETS: dict[tuple[str, int], dict[str, torch.Tensor]] = {}


def _tv_state(arch: str, in_chans: int) -> dict[str, torch.Tensor]:
    """torchvision-keyed state dict (with ``fc``), built once per (arch, bands) and copied."""
    if (arch, in_chans) not in _NETS:
        _NETS[(arch, in_chans)] = _torchvision_net(arch, in_chans, seed=in_chans).state_dict()
    return {k: v.clone() for k, v in _NETS[(arch, in_chans)].items()}


def _encoder(arch: str, in_chans: int) -> dict[str, torch.Tensor]:
    """Encoder without the classification layer."""
    return {k: v for k, v in _tv_state(arch, in_chans).items() if not k.startswith("fc.")}


def _feat_dim(arch: str) -> int:
    return 2048 if arch == "resnet50" else 512


def _prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state.items()}


def _optimizer_state() -> dict:
    return {"state": {}, "param_groups": [{"lr": 0.03, "momentum": 0.9, "weight_decay": 1e-4, "params": [0, 1, 2]}]}


@dataclass
class Family:
    """A synthetic checkpoint plus the authors' way of loading it into a torchvision module."""

    name: str
    arch: str
    bands: list[str]
    checkpoint: dict  # what torch.save writes (may be nested)
    flat: dict[str, torch.Tensor]  # the tensor state dict inside, as written to .safetensors
    reference: Callable[[dict[str, torch.Tensor]], list[nn.Module]]  # authors' recipe -> [conv1, bn1, relu, maxpool, l1..l4]


def _tv_modules(net: nn.Module) -> list[nn.Module]:
    return [net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4]


def _blank(arch: str, in_chans: int) -> nn.Module:
    net = getattr(torchvision.models, arch)(weights=None)
    net.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return net.eval()


def _moco_reference(arch: str, n_bands: int, prefix: str) -> Callable[[dict[str, torch.Tensor]], list[nn.Module]]:
    """SSL4EO-S12 linear_BE_moco.py / linear_BE_moco_v3.py: keep ``prefix*`` except ``prefix + fc``, strip the
    prefix, ``load_state_dict(strict=False)`` and accept only ``fc`` as missing."""
    def reference(st: dict[str, torch.Tensor]) -> list[nn.Module]:
        net = _blank(arch, n_bands)
        kept = {k[len(prefix):]: v for k, v in st.items() if k.startswith(prefix) and not k.startswith(prefix + "fc")}
        missing, unexpected = net.load_state_dict(kept, strict=False)
        assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected
        return _tv_modules(net)
    return reference


def moco_v2(arch: str, bands: list[str]) -> Family:
    """SSL4EO-S12 MoCo(-v2) full checkpoint: ``state_dict`` with ``module.encoder_q.`` / ``module.encoder_k.``,
    projection MLP ``fc.0``/``fc.2`` in both encoders, ``module.queue`` and ``module.queue_ptr``."""
    enc, dim = _encoder(arch, len(bands)), _feat_dim(arch)
    mlp = {"fc.0.weight": torch.randn(16, dim), "fc.0.bias": torch.randn(16), "fc.2.weight": torch.randn(8, 16), "fc.2.bias": torch.randn(8)}
    state = {**_prefixed("module.encoder_q.", {**enc, **mlp}),
             **_prefixed("module.encoder_k.", {k: v + 1.0 if v.is_floating_point() else v.clone() for k, v in {**enc, **mlp}.items()}),
             "module.queue": torch.randn(8, 64), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}

    ckpt = {"epoch": 100, "arch": arch, "state_dict": state, "optimizer": _optimizer_state()}
    return Family(f"ssl4eo-moco-v2-{arch}-{len(bands)}b", arch, bands, ckpt, state, _moco_reference(arch, len(bands), "module.encoder_q."))


def moco_v3(arch: str, bands: list[str]) -> Family:
    """MoCo-v3 full checkpoint: ``module.base_encoder.`` with a 2-layer BN projector ``fc.0``..``fc.4``,
    ``module.momentum_encoder.`` and ``module.predictor.``; a GradScaler state."""
    enc, dim = _encoder(arch, len(bands)), _feat_dim(arch)
    proj = {"fc.0.weight": torch.randn(16, dim), "fc.1.weight": torch.ones(16), "fc.1.bias": torch.zeros(16),
            "fc.1.running_mean": torch.zeros(16), "fc.1.running_var": torch.ones(16), "fc.1.num_batches_tracked": torch.tensor(5),
            "fc.3.weight": torch.randn(8, 16), "fc.4.running_mean": torch.zeros(8), "fc.4.running_var": torch.ones(8),
            "fc.4.num_batches_tracked": torch.tensor(5)}
    pred = {"0.weight": torch.randn(16, 8), "1.weight": torch.ones(16), "1.bias": torch.zeros(16), "1.running_mean": torch.zeros(16),
            "1.running_var": torch.ones(16), "1.num_batches_tracked": torch.tensor(5), "3.weight": torch.randn(8, 16)}
    state = {**_prefixed("module.base_encoder.", {**enc, **proj}), **_prefixed("module.momentum_encoder.", {k: v.clone() for k, v in {**enc, **proj}.items()}),
             **_prefixed("module.predictor.", pred)}

    ckpt = {"epoch": 100, "arch": arch, "state_dict": state, "optimizer": _optimizer_state(),
            "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000, "_growth_tracker": 0}}
    return Family(f"moco-v3-{arch}-{len(bands)}b", arch, bands, ckpt, state, _moco_reference(arch, len(bands), "module.base_encoder."))


def dino(arch: str, bands: list[str]) -> Family:
    """DINO full checkpoint: ``teacher`` (``backbone.*`` without fc, ``head.mlp.*``, weight-normed ``head.last_layer``),
    a different ``student`` under ``module.``, ``args`` as an ``argparse.Namespace`` and the loss centre."""
    enc, dim = _encoder(arch, len(bands)), _feat_dim(arch)
    head = {"head.mlp.0.weight": torch.randn(16, dim), "head.mlp.0.bias": torch.randn(16), "head.mlp.2.weight": torch.randn(16, 16),
            "head.mlp.2.bias": torch.randn(16), "head.mlp.4.weight": torch.randn(8, 16), "head.mlp.4.bias": torch.randn(8),
            "head.last_layer.weight_g": torch.ones(32, 1), "head.last_layer.weight_v": torch.randn(32, 8)}
    teacher = {**_prefixed("backbone.", enc), **head}
    student = {"module." + k: (v + 1.0 if v.is_floating_point() else v) for k, v in teacher.items()}

    def reference(st: dict[str, torch.Tensor]) -> list[nn.Module]:
        # SSL4EO-S12 dino utils.load_pretrained_weights: take 'teacher', drop 'module.' and 'backbone.', strict=False
        net = _blank(arch, len(bands))
        kept = {k.replace("module.", "").replace("backbone.", ""): v for k, v in st.items()}
        missing, unexpected = net.load_state_dict(kept, strict=False)
        assert set(missing) == {"fc.weight", "fc.bias"} and all(k.startswith("head.") for k in unexpected)
        return _tv_modules(net)

    ckpt = {"student": student, "teacher": teacher, "optimizer": _optimizer_state(), "epoch": 100,
            "args": argparse.Namespace(arch=arch, n_channels=len(bands), out_dim=32, lr=0.0005), "dino_loss": {"center": torch.zeros(1, 32)}}
    return Family(f"ssl4eo-dino-{arch}-{len(bands)}b", arch, bands, ckpt, teacher, reference)


def torchgeo(arch: str, bands: list[str], with_fc: bool = True) -> Family:
    """torchgeo re-export: a plain timm/torchvision-keyed state dict, ``fc`` present or not."""
    state = _tv_state(arch, len(bands)) if with_fc else _encoder(arch, len(bands))

    def reference(st: dict[str, torch.Tensor]) -> list[nn.Module]:
        # torchgeo models/resnet.py: load_state_dict(strict=False), only fc may be missing/unexpected
        net = _blank(arch, len(bands))
        missing, unexpected = net.load_state_dict(st, strict=False)
        assert set(missing) <= {"fc.weight", "fc.bias"} and set(unexpected) <= {"fc.weight", "fc.bias"}
        return _tv_modules(net)

    return Family(f"torchgeo-{arch}-{len(bands)}b{'-fc' if with_fc else ''}", arch, bands, state, state, reference)


def seco(arch: str) -> Family:
    """SeCo Lightning checkpoint: ``encoder_q = nn.Sequential(*resnet.children()[:-1], Flatten)`` so keys are
    ``encoder_q.0.weight`` (conv1), ``encoder_q.1.*`` (bn1), ``encoder_q.4``..``7`` (layer1..4); plus ``encoder_k``,
    ``heads_q``/``heads_k`` projection MLPs and the queue."""
    names = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}
    enc = {names[k.split(".", 1)[0]] + "." + k.split(".", 1)[1]: v for k, v in _encoder(arch, 3).items()}
    dim = _feat_dim(arch)
    heads = {"0.0.weight": torch.randn(16, dim), "0.0.bias": torch.randn(16), "0.2.weight": torch.randn(8, 16), "0.2.bias": torch.randn(8)}
    state = {**_prefixed("encoder_q.", enc), **_prefixed("encoder_k.", {k: v.clone() for k, v in enc.items()}), **_prefixed("heads_q.", heads),
             **_prefixed("heads_k.", {k: v.clone() for k, v in heads.items()}),
             "queue": torch.randn(1, 8, 64), "queue_ptr": torch.zeros(1, 1, dtype=torch.long)}

    def reference(st: dict[str, torch.Tensor]) -> list[nn.Module]:
        # SeCo moco2_module.py: encoder_q is the sequential trunk; load it strictly with its own keys
        trunk = nn.Sequential(*list(_blank(arch, 3).children())[:-1], nn.Flatten()).eval()
        trunk.load_state_dict({k[len("encoder_q."):]: v for k, v in st.items() if k.startswith("encoder_q.")}, strict=True)
        return [trunk[i] for i in range(8)]

    ckpt = {"epoch": 199, "global_step": 12345, "pytorch-lightning_version": "1.1.0", "state_dict": state,
            "optimizer_states": [_optimizer_state()], "lr_schedulers": []}
    return Family(f"seco-{arch}-rgb", arch, RGB, ckpt, state, reference)


def satlas(arch: str) -> Family:
    """SatlasPretrain ResNet file: ``backbone.resnet.*`` (torchvision ResNet, fc kept) plus FPN ``intermediates.0.*``,
    ``upsample.*`` and task ``heads.*``."""
    extra = {"intermediates.0.fpn.inner_blocks.0.0.weight": torch.randn(8, 256, 1, 1), "intermediates.0.fpn.inner_blocks.0.0.bias": torch.randn(8),
             "upsample.layers.0.0.weight": torch.randn(8, 8, 3, 3), "heads.0.layers.0.0.weight": torch.randn(4, 8, 3, 3)}
    state = {**_prefixed("backbone.resnet.", _tv_state(arch, 3)), **extra}

    def reference(st: dict[str, torch.Tensor]) -> list[nn.Module]:
        # satlaspretrain_models: keep keys containing 'backbone', remove 'backbone.', load strictly into ResnetBackbone.resnet
        holder = nn.Module()
        holder.resnet = _blank(arch, 3)
        holder.load_state_dict({k.replace("backbone.", ""): v for k, v in st.items() if "backbone" in k}, strict=True)
        return _tv_modules(holder.resnet)

    return Family(f"satlas-{arch}-rgb", arch, RGB, state, state, reference)


FAMILIES: dict[str, Callable[[], Family]] = {
    "ssl4eo-moco-v2-rn18-13b": lambda: moco_v2("resnet18", S2_13),
    "ssl4eo-moco-v2-rn18-rgb": lambda: moco_v2("resnet18", RGB),
    "moco-v3-rn50-13b": lambda: moco_v3("resnet50", S2_13),
    "ssl4eo-dino-rn18-13b": lambda: dino("resnet18", S2_13),
    "torchgeo-rn18-13b-fc": lambda: torchgeo("resnet18", S2_13, with_fc=True),
    "torchgeo-rn18-rgb-nofc": lambda: torchgeo("resnet18", RGB, with_fc=False),
    "seco-rn18-rgb": lambda: seco("resnet18"),
    "satlas-rn50-rgb": lambda: satlas("resnet50"),
}

#: (family, file format): every family as .pth (what the authors release); the flat ones also as .safetensors.
#: ResNet-50 cases run once each (they cost seconds on a busy 2-core machine); key names do not depend on depth.
CASES = [pytest.param(name, "pth", marks=[pytest.mark.slow] if "rn50" in name else []) for name in FAMILIES] + [
    (name, "safetensors") for name in ("ssl4eo-moco-v2-rn18-13b", "ssl4eo-dino-rn18-13b", "torchgeo-rn18-13b-fc", "seco-rn18-rgb")]


def _taps(mods: list[nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
    conv1, bn1, relu, maxpool, *layers = mods
    out = [relu(bn1(conv1(x)))]
    h = maxpool(out[0])
    for layer in layers:
        h = layer(h)
        out.append(h)
    return out


def _save(family: Family, folder: Path, fmt: str) -> Path:
    if fmt == "pth":
        path = folder / f"{family.name}.pth"
        torch.save(family.checkpoint, path)
    else:
        path = folder / f"{family.name}.safetensors"
        save_file({k: v.contiguous() for k, v in family.flat.items()}, str(path))
    return path


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max())))


# ------------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("family_name, fmt", CASES)
def test_family_loads_and_matches_authors_recipe(family_name: str, fmt: str, tmp_path: Path) -> None:
    family = FAMILIES[family_name]()
    path = _save(family, tmp_path, fmt)
    metric = LPIPSSat.from_backbone(path, checkpoint_bands=family.bands, model_bands=family.bands)
    assert metric.backbone.arch == family.arch
    ref = family.reference(family.flat)
    x = torch.rand(2, len(family.bands), 32, 32) * 0.4
    with torch.no_grad():
        ours, theirs = metric.backbone(metric.prepare(x)), _taps(ref, x)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a.shape == b.shape, f"tap {i}"
        assert _close(a, b), f"{family_name}: tap {i} differs from the authors' loading recipe"
    y = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    d = metric(x, y)
    assert torch.all(metric(x, x) == 0) and torch.all(d > 0)


def test_dino_loads_teacher_not_student(tmp_path: Path) -> None:
    family = dino("resnet18", RGB)
    path = _save(family, tmp_path, "pth")
    metric = LPIPSSat.from_backbone(path, checkpoint_bands=RGB, model_bands=RGB)
    teacher_w = family.checkpoint["teacher"]["backbone.layer2.0.conv1.weight"]
    assert torch.equal(metric.backbone.layer2[0].conv1.weight, teacher_w)


def test_infer_arch_and_bands_without_hints(tmp_path: Path) -> None:
    """13-band and 3-band checkpoints are recognised from conv1 (S2 L1C order / R,G,B); arch from the keys."""
    path = _save(torchgeo("resnet18", S2_13), tmp_path, "safetensors")
    metric = LPIPSSat.from_backbone(path)  # default model bands R,G,B,NIR
    assert metric.backbone.arch == "resnet18" and metric.backbone.in_chans == 4
    assert metric.metadata["checkpoint_bands"] == str(S2_13).replace("'", '"')


def test_moco_prefix_mapping_lists_only_backbone_keys() -> None:
    family = moco_v2("resnet18", S2_13)
    mapped = to_torchvision_keys(family.flat)
    expected = set(_encoder("resnet18", 13))
    assert set(mapped) == expected


# ---- strictness
def _moco_file(tmp_path: Path, edit: Callable[[dict], None]) -> Path:
    family = moco_v2("resnet18", S2_13)
    edit(family.checkpoint["state_dict"])
    return _save(family, tmp_path, "pth")


@pytest.mark.parametrize("edit, needle", [
    (lambda st: st.pop("module.encoder_q.layer2.0.bn1.running_var"), "layer2.0.bn1.running_var"),
    (lambda st: st.__setitem__("module.encoder_q.layer5.0.conv1.weight", torch.zeros(1)), "layer5.0.conv1.weight"),
    (lambda st: st.__setitem__("module.encoder_q.layer1.0.bn1.extra_stat", torch.zeros(64)), "layer1.0.bn1.extra_stat"),
    (lambda st: st.__setitem__("module.unknown_part.weight", torch.zeros(3)), "module.unknown_part.weight"),
    (lambda st: st.__setitem__("module.encoder_q.layer1.0.conv1.weight", torch.zeros(64, 64, 1, 1)), "layer1.0.conv1.weight"),
], ids=["missing", "extra-layer", "extra-buffer", "unknown-sibling", "shape"])
def test_strict_loading_refuses_mismatch(tmp_path: Path, edit, needle: str) -> None:
    path = _moco_file(tmp_path, edit)
    with pytest.raises(WeightsError) as info:
        LPIPSSat.from_backbone(path, checkpoint_bands=S2_13)
    assert needle in str(info.value) and path.name in str(info.value)


def test_not_a_resnet_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "vit.safetensors"
    save_file({"patch_embed.proj.weight": torch.zeros(8, 13, 16, 16), "blocks.0.attn.qkv.weight": torch.zeros(24, 8)}, str(path))
    with pytest.raises(WeightsError, match="conv1.weight"):
        LPIPSSat.from_backbone(path, checkpoint_bands=S2_13)


def test_declared_band_count_must_match_conv1(tmp_path: Path) -> None:
    path = _save(torchgeo("resnet18", S2_13), tmp_path, "safetensors")
    with pytest.raises(WeightsError, match="13 bands"):
        LPIPSSat.from_backbone(path, checkpoint_bands=RGB)


def test_undeclared_unusual_band_count_asks_for_bands(tmp_path: Path) -> None:
    path = tmp_path / "five.safetensors"
    state = _encoder("resnet18", 13)
    state["conv1.weight"] = state["conv1.weight"][:, :5].contiguous()
    save_file(state, str(path))
    with pytest.raises(WeightsError, match="checkpoint_bands"):
        LPIPSSat.from_backbone(path)


# ---- band adaptation
#: Nearest S2 band (centre wavelength, ESA S2A SRF) among R,G,B,NIR for each of the 13 L1C bands, by hand:
#: B01 443 -> B02 492; B05 704 -> B04 665 (39 nm vs 129 to B08); B06 740 -> B04 (76 vs 92); B07 783 -> B08 (50);
#: B8A/B09/B11/B12 -> B08 (the longest available wavelength); B10 (cirrus) is zero-filled.
NEAREST_OF_RGBN = {"B01": "B02", "B02": "B02", "B03": "B03", "B04": "B04", "B05": "B04", "B06": "B04", "B07": "B08",
                   "B08": "B08", "B8A": "B08", "B09": "B08", "B10": None, "B11": "B08", "B12": "B08"}


def test_13_band_network_adapted_to_4_bands_equals_filled_13_band_input(tmp_path: Path) -> None:
    family = moco_v2("resnet18", S2_13)
    path = _save(family, tmp_path, "pth")
    adapted = LPIPSSat.from_backbone(path, checkpoint_bands="s2-l1c-13", model_bands="s2-rgbn")
    assert adapted.backbone.conv1.weight.shape[1] == 4
    original = family.reference(family.flat)  # untouched 13-band network
    x4 = torch.rand(2, 4, 64, 64) * 0.5  # R, G, B, NIR = B04, B03, B02, B08
    rgbn = ["B04", "B03", "B02", "B08"]
    x13 = torch.stack([x4[:, rgbn.index(NEAREST_OF_RGBN[b])] if NEAREST_OF_RGBN[b] else torch.zeros_like(x4[:, 0]) for b in S2_13], dim=1)
    with torch.no_grad():
        ours, theirs = adapted.backbone(adapted.prepare(x4)), _taps(original, x13)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert _close(a, b), f"tap {i}: adapted 4-band network differs from the 13-band network on the filled image"


def test_rgb_checkpoint_ignores_extra_nir_band(tmp_path: Path) -> None:
    path = _save(torchgeo("resnet18", RGB), tmp_path, "safetensors")
    metric = LPIPSSat.from_backbone(path, checkpoint_bands=RGB)  # model bands R,G,B,NIR
    assert torch.count_nonzero(metric.backbone.conv1.weight[:, 3]) == 0
    x = torch.rand(1, 4, 64, 64) * 0.3
    x_other_nir = x.clone()
    x_other_nir[:, 3] = torch.rand(64, 64) * 0.6
    with torch.no_grad():
        assert torch.equal(metric.backbone(metric.prepare(x))[-1], metric.backbone(metric.prepare(x_other_nir))[-1])


def test_input_band_order_is_declared_not_guessed(tmp_path: Path) -> None:
    path = _save(torchgeo("resnet18", S2_13), tmp_path, "safetensors")
    rgbn = LPIPSSat.from_backbone(path)
    planet = LPIPSSat.from_backbone(path, bands="planetscope-4b")  # blue, green, red, NIR
    x, y = torch.rand(2, 4, 64, 64) * 0.4, torch.rand(2, 4, 64, 64) * 0.4
    order = [2, 1, 0, 3]  # R,G,B,NIR -> B,G,R,NIR is its own inverse
    assert torch.allclose(rgbn(x, y), planet(x[:, order], y[:, order]), rtol=1e-5)


def test_calibrated_heads_file_is_used(tmp_path: Path) -> None:
    path = _save(torchgeo("resnet18", S2_13), tmp_path, "safetensors")
    chans = (64, 64, 128, 256, 512)
    heads = {f"heads.{i}.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(chans)}
    heads_path = tmp_path / "heads.safetensors"
    save_weights(heads_path, heads, {"arch": "resnet18"}, dtype=torch.float32)
    metric = LPIPSSat.from_backbone(path, heads=heads_path)
    for i, c in enumerate(chans):
        assert torch.equal(metric.heads[i].reshape(-1), heads[f"heads.{i}.weight"].reshape(-1))


# ---- hub and file access
def _offline(*args, **kwargs):
    raise OSError("We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them in the cached files.")


@pytest.mark.parametrize("source", ["ssl4eo-s12-rn18-moco-13b", "someone/some-backbone"])
def test_hub_offline_says_pass_a_local_path(monkeypatch: pytest.MonkeyPatch, source: str) -> None:
    huggingface_hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _offline)
    monkeypatch.setattr(huggingface_hub, "list_repo_files", _offline)
    with pytest.raises(OfflineError, match="local path"):
        LPIPSSat.from_backbone(source)


def test_missing_local_file(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match="does-not-exist.pth"):
        LPIPSSat.from_backbone(tmp_path / "does-not-exist.pth")


_TRIPPED: list[str] = []


def _trip() -> "Payload":
    _TRIPPED.append("executed")
    return Payload()


class Payload:
    """A custom class in a checkpoint: unpickling it would run ``_trip`` (arbitrary code)."""

    def __reduce__(self):
        return (_trip, ())


def test_pth_is_read_with_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    state = {**_encoder("resnet18", 3), "payload": Payload()}
    with open(path, "wb") as fh:
        torch.save(state, fh)
    _TRIPPED.clear()
    with pytest.raises(WeightsError, match="weights_only"):
        read_checkpoint(path)
    assert not _TRIPPED, "the custom class was unpickled"
    torch.load(path, weights_only=False)  # the payload is live: an unguarded load runs it
    assert _TRIPPED == ["executed"]


def test_corrupt_safetensors_refused(tmp_path: Path) -> None:
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}" + bytes(64))
    with pytest.raises(WeightsError, match="broken.safetensors"):
        read_checkpoint(path)


def test_checkpoint_without_tensors_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.pth"
    torch.save({"epoch": 3, "arch": "resnet18"}, path)
    with pytest.raises(WeightsError, match="no tensor state dict"):
        read_checkpoint(path)
