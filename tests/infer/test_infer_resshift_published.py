"""ResShift / SinSR as published: upstream ``UNetModelSwin`` names and shapes, the published schedules, and the .pth layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from infer_helpers import DATA, TRANSFORM, infer_32px_tile, ldm_autoencoder_shapes, random_state

from gapeval.infer import resshift as rs
from gapeval.infer.base import SamplingOptions
from gapeval.infer.registry import load_adapter
from gapeval.infer.swin_unet import SwinUNet, SwinUNetConfig
from lpips_sat.errors import WeightsError

UPSTREAM = json.loads((DATA / "resshift_unet_swin_state_dict.json").read_text())

#: The model.params of a tiny upstream-style YAML (ResShift's definition: in_channels = latent only, lq_size = image_size).
TINY_UPSTREAM = {"image_size": 16, "in_channels": 3, "model_channels": 32, "out_channels": 3, "attention_resolutions": [16, 8], "dropout": 0,
                 "channel_mult": [1, 2], "num_res_blocks": [1, 1], "conv_resample": True, "dims": 2, "use_fp16": False, "num_head_channels": 16,
                 "use_scale_shift_norm": True, "resblock_updown": False, "swin_depth": 2, "swin_embed_dim": 32, "window_size": 4, "mlp_ratio": 4,
                 "cond_lq": True, "lq_size": 16}


@pytest.mark.parametrize("variant", ["resshift", "sinsr"])
def test_full_size_network_reproduces_upstream_state_dict(variant: str) -> None:
    """Built from the published config on the meta device: upstream's 564 names and shapes, 118.59 M parameters and
    119.36 M state-dict elements (the '119.4 M' of the audit counts the 24 buffers too)."""
    cfg = SwinUNetConfig.from_upstream(UPSTREAM["configs"][variant])
    assert cfg == SwinUNetConfig()  # the defaults are the published network
    with torch.device("meta"):
        net = SwinUNet(cfg)
    state = net.state_dict()
    assert {k: list(v.shape) for k, v in state.items()} == UPSTREAM["shapes"]
    assert list(state) == list(UPSTREAM["shapes"])  # same order as upstream's module tree
    assert sum(p.numel() for p in net.parameters()) == UPSTREAM["counts"]["parameters"] == 118_593_583
    assert sum(v.numel() for v in state.values()) == UPSTREAM["counts"]["state_dict_elements"]
    assert sorted(k for k, _ in net.named_buffers()) == sorted(UPSTREAM["buffers"])
    assert round(UPSTREAM["counts"]["state_dict_elements"] / 1e6, 1) == 119.4 and len(state) == 564


def test_published_schedules() -> None:
    """The presets equal the published configs' diffusion settings, and the eta schedule equals upstream's exponential
    schedule written the way its code writes it (a per-step 'increaser' raised to a power-warped step index)."""
    published = {"resshift-v1": (15, 2.0, 0.04, 0.99, 0.3, 15), "resshift-v3": (4, 2.0, 0.2, 0.99, 0.3, 4), "sinsr": (15, 2.0, 0.04, 0.99, 0.3, 1)}
    for name, (steps, kappa, min_noise, etas_end, power, default) in published.items():
        schedule, default_steps = rs.PRESETS[name]
        assert (schedule.steps, schedule.kappa, schedule.min_noise_level, schedule.etas_end, schedule.power, default_steps) == published[name]
        start = min(min_noise / kappa, min_noise)
        increaser = np.exp(np.log(etas_end / start) / (steps - 1))
        sqrt_etas = start * increaser ** (np.linspace(0, 1, steps) ** power * (steps - 1))
        assert np.allclose(schedule.etas(), sqrt_etas ** 2, rtol=1e-12)
    assert rs.preset_for(Path("resshift_realsrx4_s4_v3.pth")) == "resshift-v3"
    assert rs.preset_for(Path("resshift_realsrx4_s15_v1.pth")) == "resshift-v1" and rs.preset_for(Path("SinSR_v1.pth")) == "sinsr"
    with pytest.raises(WeightsError, match="resshift.json"):
        rs.preset_for(Path("resshift_realsrx4_s7_v3.pth"))


def _published_folder(root: Path, net_name: str = "resshift_realsrx4_s4_v3.pth", wrap: str = "") -> Path:
    """A folder as the releases ship it: the denoiser .pth (upstream names) and autoencoder_vq_f4.pth (LDM VQModelTorch names)."""
    root.mkdir(parents=True)
    torch.manual_seed(0)
    net = SwinUNet(SwinUNetConfig.from_upstream(TINY_UPSTREAM))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    torch.save({wrap + k: v for k, v in net.state_dict().items()}, root / net_name)
    vq = random_state(ldm_autoencoder_shapes(3, 3, 32, (1, 2, 4), 1, 3, 3, n_embed=64), seed=2)
    torch.save({"state_dict": vq}, root / "autoencoder_vq_f4.pth")
    (root / "resshift.json").write_text(json.dumps({"model": TINY_UPSTREAM}))
    return root


def test_published_layout_loads_strictly_and_runs(tmp_path: Path) -> None:
    folder = _published_folder(tmp_path / "ckpt", wrap="module.")
    adapter, _ = load_adapter("resshift", str(folder), SamplingOptions())
    assert adapter.steps == 4 and adapter.schedule == rs.PRESETS["resshift-v3"][0]
    data, tags, transform, crs, desc = infer_32px_tile(tmp_path, "resshift", folder, seed=7)
    assert data.shape == (4, 128, 128) and np.isfinite(data).all() and desc == ("B04", "B03", "B02", "B08")
    assert transform == TRANSFORM @ TRANSFORM.scale(0.25) and crs.to_string() == "EPSG:32618" and tags["steps"] == "4"


def test_sinsr_defaults_to_one_step(tmp_path: Path) -> None:
    folder = _published_folder(tmp_path / "sinsr", net_name="SinSR_v1.pth")
    (folder / "resshift.json").write_text(json.dumps({"model": {**{k: v for k, v in TINY_UPSTREAM.items() if k != "lq_size"}, "in_channels": 6}}))
    adapter, _ = load_adapter("resshift", str(folder), SamplingOptions())
    assert adapter.steps == 1 and adapter.settings()["sampler"] == "resshift-one-step" and adapter.unet.config.in_channels == 3


@pytest.mark.parametrize("damage", ["missing", "renamed", "reshaped", "mask"])
def test_damaged_published_checkpoint_names_the_key(damage: str, tmp_path: Path) -> None:
    folder = _published_folder(tmp_path / "ckpt")
    path = folder / "resshift_realsrx4_s4_v3.pth"
    state = torch.load(path, weights_only=True)
    key = "input_blocks.3.1.blocks.0.attn.qkv.weight"
    assert key in state
    if damage == "missing":
        del state[key]
    elif damage == "renamed":
        state["input_blocks.3.1.blocks.0.attn.qkv_w"] = state.pop(key)
        key = "input_blocks.3.1.blocks.0.attn.qkv_w"
    elif damage == "reshaped":
        state[key] = state[key][:-3]
    else:
        key = "input_blocks.3.1.blocks.1.attn_mask"
        state[key] = torch.zeros_like(state[key])
    torch.save(state, path)
    with pytest.raises(WeightsError, match=key.replace(".", r"\.")):
        load_adapter("resshift", str(folder), SamplingOptions())


def test_single_pth_asks_for_the_folder(tmp_path: Path) -> None:
    folder = _published_folder(tmp_path / "ckpt")
    with pytest.raises(WeightsError, match="autoencoder_vq_f4.pth"):
        load_adapter("resshift", str(folder / "resshift_realsrx4_s4_v3.pth"), SamplingOptions())
