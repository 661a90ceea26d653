"""The published checkpoint layouts (diffusers pre-0.17 attention names, opensr-model Lightning) load strictly and run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel, UNet2DModel, VQModel
from hub_layouts import (
    LDM_UNET_FULL,
    LDM_VQ_FULL,
    SD_UNET_FULL,
    SD_VAE_FULL,
    build,
    ldm_x4_folder,
    legacy_names,
    sd_x4_folder,
)
from infer_helpers import TRANSFORM, infer_32px_tile

from gapeval.infer.base import SamplingOptions
from gapeval.infer.checkpoints import rename_legacy_attention, select_hub_files
from gapeval.infer.registry import get, load_adapter
from lpips_sat.backbones import read_checkpoint
from lpips_sat.errors import WeightsError

LEGACY = (".query.", ".key.", ".value.", ".proj_attn.")


@pytest.mark.parametrize(("cls", "config", "total", "legacy", "example"), [
    (UNet2DModel, LDM_UNET_FULL, 330, 48, "mid_block.attentions.0.query.weight"),
    (VQModel, LDM_VQ_FULL, 205, 16, "encoder.mid_block.attentions.0.proj_attn.bias"),
    (UNet2DConditionModel, SD_UNET_FULL, 687, 0, None),
    (AutoencoderKL, SD_VAE_FULL, None, 16, "decoder.mid_block.attentions.0.key.weight"),
])
def test_full_size_legacy_names_map_back_exactly(cls, config, total, legacy, example) -> None:
    """Full-size published configs on the meta device: the legacy key counts the audit found (48 UNet + 16 VQ keys for
    the LDM x4, 16 VAE keys and 0 of 687 UNet keys for the SD upscaler), and renaming reproduces the module's keys and shapes."""
    module = build(cls, config, device="meta")
    own = module.state_dict()
    hub = legacy_names(own)
    assert sum(any(s in k for s in LEGACY) for k in hub) == legacy
    assert total is None or len(own) == total
    assert example is None or example in hub
    renamed = rename_legacy_attention(hub, set(own), "hub")
    assert {k: tuple(v.shape) for k, v in renamed.items()} == {k: tuple(v.shape) for k, v in own.items()}


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize("model", ["ldm-sr-x4", "sd-x4-upscaler"])
def test_hub_layout_loads_strictly_and_runs(model: str, fmt: str, tmp_path: Path) -> None:
    make = ldm_x4_folder if model == "ldm-sr-x4" else sd_x4_folder
    folder, current = make(tmp_path / "ckpt", fmt)
    weights = "diffusion_pytorch_model." + fmt
    vae_part = "vqvae" if model == "ldm-sr-x4" else "vae"
    assert sum(s in k for k in read_checkpoint(folder / vae_part / weights) for s in LEGACY) == 16  # the fixture really is legacy
    adapter, _ = load_adapter(model, str(folder), SamplingOptions(steps=2))
    vae = adapter.vqvae if model == "ldm-sr-x4" else adapter.vae
    # every tensor landed where today's diffusers names put it (a swapped query/key would differ)
    for module, part in ((adapter.unet, "unet"), (vae, vae_part)):
        loaded = module.state_dict()
        assert set(loaded) == set(current[part]) and all(torch.equal(loaded[k], current[part][k]) for k in loaded)
    data, tags, transform, crs, desc = infer_32px_tile(tmp_path, model, folder, "--steps", "2", seed=3, input_folder=True)
    assert data.shape == (4, 128, 128) and np.isfinite(data).all() and desc == ("B04", "B03", "B02", "B08")
    assert transform == TRANSFORM @ TRANSFORM.scale(0.25) and crs.to_string() == "EPSG:32618" and tags["model"] == model


@pytest.mark.parametrize("damage", ["missing", "renamed", "reshaped"])
def test_damaged_legacy_checkpoint_names_the_key(damage: str, tmp_path: Path) -> None:
    folder, _ = ldm_x4_folder(tmp_path / "ckpt", "safetensors")
    from safetensors.torch import load_file, save_file

    path = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    key = "mid_block.attentions.0.query.weight"
    assert key in state
    if damage == "missing":
        del state[key]
        expect = "mid_block.attentions.0.to_q.weight"
    elif damage == "renamed":
        state["mid_block.attentions.0.quer.weight"] = state.pop(key)
        expect = "mid_block.attentions.0.quer.weight"
    else:
        state[key] = state[key][:, :-1].contiguous()
        expect = "mid_block.attentions.0.to_q.weight"
    save_file(state, str(path))
    with pytest.raises(WeightsError, match=expect.replace(".", r"\.")) as err:
        load_adapter("ldm-sr-x4", str(folder), SamplingOptions(steps=1))
    if damage == "reshaped":  # the file's own name is given too
        assert "mid_block.attentions.0.to_q.weight <- mid_block.attentions.0.query.weight" in str(err.value)


def test_both_legacy_and_current_name_is_an_error() -> None:
    state = {"a.attentions.0.query.weight": torch.zeros(1), "a.attentions.0.to_q.weight": torch.zeros(1)}
    with pytest.raises(WeightsError, match="both the legacy key"):
        rename_legacy_attention(state, {"a.attentions.0.to_q.weight"}, "x")
    # a key the module expects under its old name (an unrelated module called 'key') is left alone
    assert rename_legacy_attention({"m.key.weight": torch.zeros(1)}, {"m.key.weight", "m.to_k.weight"}, "x") == {"m.key.weight": torch.zeros(1)}


def test_hub_download_selects_one_weights_format_per_part() -> None:
    files = ["model_index.json", "README.md", "unet/config.json", "unet/diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.safetensors",
             "unet/diffusion_pytorch_model.fp16.safetensors", "vae/config.json", "vae/diffusion_pytorch_model.bin", "text_encoder/model.safetensors",
             "scheduler/scheduler_config.json", "low_res_scheduler/scheduler_config.json", "tokenizer/merges.txt", "tokenizer/vocab.json"]
    chosen = select_hub_files(files, get("sd-x4-upscaler").hub_parts)
    assert sorted(chosen) == sorted(["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
                                     "vae/diffusion_pytorch_model.bin", "scheduler/scheduler_config.json", "low_res_scheduler/scheduler_config.json"])
    assert select_hub_files(files, ("tokenizer",)) == ["model_index.json", "tokenizer/merges.txt", "tokenizer/vocab.json"]
    assert get("ldm-sr-x4").hub_parts == ("unet", "vqvae", "scheduler")


def test_fixture_configs_are_the_hub_keys(tmp_path: Path) -> None:
    folder, _ = sd_x4_folder(tmp_path / "sd", "safetensors")
    assert sorted(p.name for p in folder.iterdir()) == ["low_res_scheduler", "model_index.json", "scheduler", "text_encoder", "tokenizer", "unet", "vae"]
    unet = json.loads((folder / "unet" / "config.json").read_text())
    assert unet["num_class_embeds"] == 1000 and unet["use_linear_projection"] and unet["in_channels"] == 7


def test_hub_id_fetches_only_the_selected_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """At the huggingface_hub boundary: the listing is filtered to one weights file per part before snapshot_download."""
    import huggingface_hub

    folder, _ = ldm_x4_folder(tmp_path / "snap", "bin")
    listing = ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.safetensors",
               "vqvae/config.json", "vqvae/diffusion_pytorch_model.bin", "scheduler/scheduler_config.json", "README.md", "images/x.png"]
    calls = []
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda repo_id, **kw: listing)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, allow_patterns=None, **kw: calls.append(allow_patterns) or str(folder))
    adapter, source = load_adapter("ldm-sr-x4", "CompVis/ldm-super-resolution-4x-openimages", SamplingOptions(steps=1))
    assert source.hub_id == "CompVis/ldm-super-resolution-4x-openimages" and adapter.unet is not None
    assert sorted(calls[0]) == sorted(["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "vqvae/config.json",
                                       "vqvae/diffusion_pytorch_model.bin", "scheduler/scheduler_config.json"])


def test_ldsr_lightning_layout_runs_on_a_32px_tile(ldsr_ckpt: Path, tmp_path: Path) -> None:
    """The fourth published layout (opensr-model Lightning .ckpt, tiny, real key names) through the same 32 px check."""
    data, tags, transform, crs, desc = infer_32px_tile(tmp_path, "ldsr-s2", ldsr_ckpt, "--steps", "2", seed=3)
    assert data.shape == (4, 128, 128) and np.isfinite(data).all() and desc == ("B04", "B03", "B02", "B08")
    assert transform == TRANSFORM @ TRANSFORM.scale(0.25) and crs.to_string() == "EPSG:32618" and tags["model"] == "ldsr-s2"
