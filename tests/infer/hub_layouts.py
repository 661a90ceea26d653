"""Tiny checkpoints in the layouts the hub actually serves for the two diffusers-format adapters.

``CompVis/ldm-super-resolution-4x-openimages`` (written by diffusers 0.8) and ``stabilityai/stable-diffusion-x4-upscaler``
(diffusers 0.9/0.10) predate diffusers 0.17, which renamed the parameters of the old ``AttentionBlock``
(``group_norm``, ``query``, ``key``, ``value``, ``proj_attn``) to those of ``Attention`` (``to_q``, ``to_k``, ``to_v``,
``to_out.0``). The affected blocks are the attention layers that sit directly in a block's ``attentions`` list of a
``UNet2DModel``, ``VQModel`` or ``AutoencoderKL``; the transformer attentions of ``UNet2DConditionModel`` already had
today's names. Folder names, file names and config keys below are those of the hub repositories; sizes are tiny.
The full-size configurations (``*_FULL``) are the published ones (block widths, block types, attention settings).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

#: Today's name -> the pre-0.17 name, for parameters directly under ``….attentions.<i>.``.
_TO_LEGACY = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
_BLOCK_ATTENTION = re.compile(r"^(?P<path>(?:.+\.)?attentions\.\d+)\.(?P<leaf>to_q|to_k|to_v|to_out\.0)\.(?P<param>weight|bias)$")


def legacy_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rewrite a current diffusers state dict of a UNet2DModel/VQModel/AutoencoderKL with the pre-0.17 attention names."""
    out = {}
    for key, value in state.items():
        m = _BLOCK_ATTENTION.match(key)
        out[f"{m['path']}.{_TO_LEGACY[m['leaf']]}.{m['param']}" if m else key] = value
    return out


LDM_UNET_FULL = {
    "_class_name": "UNet2DModel", "_diffusers_version": "0.8.0.dev0", "act_fn": "silu", "attention_head_dim": 32,
    "block_out_channels": [160, 320, 320, 640], "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D"], "downsample_padding": 1,
    "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 6, "layers_per_block": 2, "mid_block_scale_factor": 1,
    "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 3, "sample_size": 256, "time_embedding_type": "positional",
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"],
}
LDM_VQ_FULL = {
    "_class_name": "VQModel", "_diffusers_version": "0.8.0.dev0", "act_fn": "silu", "block_out_channels": [128, 256, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 3, "in_channels": 3, "latent_channels": 3, "layers_per_block": 2,
    "norm_num_groups": 32, "num_vq_embeddings": 8192, "out_channels": 3, "sample_size": 256, "up_block_types": ["UpDecoderBlock2D"] * 3,
}
LDM_SCHEDULER = {"_class_name": "DDIMScheduler", "_diffusers_version": "0.8.0.dev0", "beta_end": 0.0155, "beta_schedule": "scaled_linear",
                 "beta_start": 0.0015, "clip_sample": False, "num_train_timesteps": 1000, "set_alpha_to_one": True, "steps_offset": 0,
                 "trained_betas": None}
LDM_INDEX = {"_class_name": "LDMSuperResolutionPipeline", "_diffusers_version": "0.8.0.dev0", "scheduler": ["diffusers", "DDIMScheduler"],
             "unet": ["diffusers", "UNet2DModel"], "vqvae": ["diffusers", "VQModel"]}

SD_UNET_FULL = {
    "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.10.0.dev0", "act_fn": "silu", "attention_head_dim": 8,
    "block_out_channels": [256, 512, 512, 1024], "center_input_sample": False, "cross_attention_dim": 1024,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1, "dual_cross_attention": False, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 7,
    "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "num_class_embeds": 1000,
    "only_cross_attention": [True, True, True, False], "out_channels": 4, "sample_size": 128,
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "upcast_attention": False,
    "use_linear_projection": True,
}
SD_VAE_FULL = {
    "_class_name": "AutoencoderKL", "_diffusers_version": "0.10.0.dev0", "act_fn": "silu", "block_out_channels": [128, 256, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 3, "in_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "norm_num_groups": 32, "out_channels": 3, "sample_size": 256, "scaling_factor": 0.08333, "up_block_types": ["UpDecoderBlock2D"] * 3,
}
SD_SCHEDULER = {"_class_name": "DDIMScheduler", "_diffusers_version": "0.10.0.dev0", "beta_end": 0.02, "beta_schedule": "scaled_linear",
                "beta_start": 0.0001, "clip_sample": False, "num_train_timesteps": 1000, "prediction_type": "v_prediction",
                "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None}
SD_LOW_RES_SCHEDULER = {"_class_name": "DDPMScheduler", "_diffusers_version": "0.10.0.dev0", "beta_end": 0.02, "beta_schedule": "scaled_linear",
                        "beta_start": 0.0001, "clip_sample": False, "num_train_timesteps": 1000, "trained_betas": None, "variance_type": "fixed_small"}
SD_INDEX = {"_class_name": "StableDiffusionUpscalePipeline", "_diffusers_version": "0.10.0.dev0", "low_res_scheduler": ["diffusers", "DDPMScheduler"],
            "max_noise_level": 350, "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
#: The text encoder's config keys as on the hub (OpenCLIP ViT-H text tower), tiny sizes; its weights are not written
#: (only read with --prompt, which needs transformers).
SD_TEXT_ENCODER = {"_name_or_path": "hf-models/stable-diffusion-x4-upscaler/text_encoder", "architectures": ["CLIPTextModel"],
                   "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0, "eos_token_id": 2, "hidden_act": "gelu", "hidden_size": 16,
                   "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 32, "layer_norm_eps": 1e-05,
                   "max_position_embeddings": 77, "model_type": "clip_text_model", "num_attention_heads": 2, "num_hidden_layers": 1,
                   "pad_token_id": 1, "projection_dim": 16, "torch_dtype": "float32", "transformers_version": "4.25.0.dev0", "vocab_size": 64}


def tiny(full: dict, **over) -> dict:
    """A full-size config with small sizes substituted (same keys)."""
    cfg = dict(full)
    cfg.update(over)
    return cfg


LDM_UNET_TINY = tiny(LDM_UNET_FULL, attention_head_dim=8, block_out_channels=[16, 32], down_block_types=["DownBlock2D", "AttnDownBlock2D"],
                     up_block_types=["AttnUpBlock2D", "UpBlock2D"], layers_per_block=1, norm_num_groups=8, sample_size=32)
LDM_VQ_TINY = tiny(LDM_VQ_FULL, block_out_channels=[16, 16, 16], layers_per_block=1, norm_num_groups=8, num_vq_embeddings=32, sample_size=32)
SD_UNET_TINY = tiny(SD_UNET_FULL, block_out_channels=[16, 32], cross_attention_dim=16, down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
                    up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"], layers_per_block=1, norm_num_groups=8, only_cross_attention=[True, False],
                    sample_size=32)
SD_VAE_TINY = tiny(SD_VAE_FULL, block_out_channels=[16, 16, 16], layers_per_block=1, norm_num_groups=8, sample_size=32)


def build(cls, config: dict, device: str | None = None):
    """A diffusers module from a hub config (``_*`` keys dropped), optionally on the meta device."""
    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    if device == "meta":
        with torch.device("meta"):
            return cls.from_config(kwargs)
    return cls.from_config(kwargs)


def write_part(folder: Path, config: dict, state: dict[str, torch.Tensor], fmt: str) -> None:
    """``folder/config.json`` + the weights as ``diffusion_pytorch_model.safetensors`` or ``.bin`` (a plain torch.save dict)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.detach().contiguous() for k, v in state.items()}
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
    else:
        torch.save(state, folder / "diffusion_pytorch_model.bin")


def write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))


def ldm_x4_folder(root: Path, fmt: str, seed: int = 0) -> tuple[Path, dict[str, dict[str, torch.Tensor]]]:
    """``CompVis/ldm-super-resolution-4x-openimages`` at tiny size; returns the folder and the current-name state dicts."""
    from diffusers import UNet2DModel, VQModel

    torch.manual_seed(seed)
    unet, vq = build(UNet2DModel, LDM_UNET_TINY), build(VQModel, LDM_VQ_TINY)
    write_part(root / "unet", LDM_UNET_TINY, legacy_names(unet.state_dict()), fmt)
    write_part(root / "vqvae", LDM_VQ_TINY, legacy_names(vq.state_dict()), fmt)
    write_json(root / "scheduler" / "scheduler_config.json", LDM_SCHEDULER)
    write_json(root / "model_index.json", LDM_INDEX)
    return root, {"unet": unet.state_dict(), "vqvae": vq.state_dict()}


def sd_x4_folder(root: Path, fmt: str, seed: int = 0) -> tuple[Path, dict[str, dict[str, torch.Tensor]]]:
    """``stabilityai/stable-diffusion-x4-upscaler`` at tiny size (UNet with current names, VAE with legacy ones)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(seed)
    unet, vae = build(UNet2DConditionModel, SD_UNET_TINY), build(AutoencoderKL, SD_VAE_TINY)
    write_part(root / "unet", SD_UNET_TINY, legacy_names(unet.state_dict()), fmt)
    write_part(root / "vae", SD_VAE_TINY, legacy_names(vae.state_dict()), fmt)
    write_json(root / "scheduler" / "scheduler_config.json", SD_SCHEDULER)
    write_json(root / "low_res_scheduler" / "scheduler_config.json", SD_LOW_RES_SCHEDULER)
    write_json(root / "text_encoder" / "config.json", SD_TEXT_ENCODER)
    write_json(root / "tokenizer" / "tokenizer_config.json", {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "model_max_length": 77,
                                                           "pad_token": "!", "tokenizer_class": "CLIPTokenizer", "unk_token": "<|endoftext|>"})
    write_json(root / "tokenizer" / "special_tokens_map.json", {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "!",
                                                             "unk_token": "<|endoftext|>"})
    write_json(root / "tokenizer" / "vocab.json", {"!": 0, "<|startoftext|>": 1, "<|endoftext|>": 2})
    (root / "tokenizer" / "merges.txt").write_text("#version: 0.2\n")
    write_json(root / "model_index.json", SD_INDEX)
    return root, {"unet": unet.state_dict(), "vae": vae.state_dict()}
