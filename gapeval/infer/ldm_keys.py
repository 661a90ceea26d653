"""Key maps from CompVis latent-diffusion (LDM) checkpoints to diffusers modules.

LDM names (``openaimodel.UNetModel`` and ``ldm.modules.diffusionmodules.model.Encoder/Decoder``) and their
diffusers counterparts:

* UNet: ``input_blocks.{i}`` (conv_in, then per level ``num_res_blocks`` × [ResBlock(, AttentionBlock)] and a
  ``Downsample`` with its conv under ``.op``) -> ``conv_in``, ``down_blocks.{L}.resnets/attentions.{j}``,
  ``down_blocks.{L}.downsamplers.0.conv``; ``middle_block.{0,1,2}`` -> ``mid_block.resnets.0``,
  ``mid_block.attentions.0``, ``mid_block.resnets.1``; ``output_blocks.{i}`` (per level, deepest first,
  ``num_res_blocks + 1`` × [ResBlock(, AttentionBlock)(, Upsample)]) -> ``up_blocks.{k}…``;
  ``time_embed.{0,2}`` -> ``time_embedding.linear_{1,2}``; ``out.{0,2}`` -> ``conv_norm_out``, ``conv_out``.
  ResBlock: ``in_layers.{0,2}`` -> ``norm1``/``conv1``, ``emb_layers.1`` -> ``time_emb_proj``,
  ``out_layers.{0,3}`` -> ``norm2``/``conv2``, ``skip_connection`` -> ``conv_shortcut``.
  AttentionBlock: ``norm`` -> ``group_norm``; the fused 1-D conv ``qkv`` (3C, C, 1) is laid out head by head
  (``[q_0 k_0 v_0 q_1 k_1 v_1 …]``, the "legacy" QKV order) and is split into ``to_q/to_k/to_v`` (C, C);
  ``proj_out`` -> ``to_out.0``.
* Autoencoder: ``encoder.down.{i}.block.{j}`` -> ``encoder.down_blocks.{i}.resnets.{j}`` (``nin_shortcut`` ->
  ``conv_shortcut``), ``encoder.down.{i}.downsample.conv`` -> ``…downsamplers.0.conv``; ``mid.block_{1,2}`` ->
  ``mid_block.resnets.{0,1}``; ``mid.attn_1.{norm,q,k,v,proj_out}`` (1x1 convs) -> ``mid_block.attentions.0.
  {group_norm,to_q,to_k,to_v,to_out.0}`` (linear); ``norm_out`` -> ``conv_norm_out``; ``decoder.up.{i}`` is
  stored shallowest-first but runs deepest-first, so it maps to ``decoder.up_blocks.{n-1-i}``;
  ``quantize.embedding`` (VQ) is kept.

The maps are written from the module layouts (sources: CompVis/latent-diffusion ``openaimodel.py`` and
``model.py``; diffusers ``UNet2DModel``, ``Encoder``, ``Decoder``) and tested against a key list generated from
the ESA OpenSR LDSR-S2 model (tests/infer/data).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from lpips_sat.errors import WeightsError

Tensor = torch.Tensor


# --------------------------------------------------------------------------------------------------
# UNet
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class UNetLayout:
    """Architecture of an LDM ``UNetModel``, read off its state dict."""

    in_channels: int
    out_channels: int
    model_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    attention_levels: frozenset[int]

    @property
    def block_channels(self) -> tuple[int, ...]:
        return tuple(self.model_channels * m for m in self.channel_mult)


def infer_unet_layout(sd: Mapping[str, Tensor]) -> UNetLayout:
    """Read the layout of an LDM UNet from its (un-prefixed) state dict."""
    try:
        conv_in = sd["input_blocks.0.0.weight"]
        conv_out = sd["out.2.weight"]
    except KeyError as exc:
        raise WeightsError(f"not an LDM UNet state dict: missing {exc.args[0]!r}") from exc
    model_channels = int(conv_in.shape[0])
    indices = sorted({int(k.split(".")[1]) for k in sd if k.startswith("input_blocks.")})
    levels: list[list[tuple[int, bool]]] = [[]]  # per level: (out channels, has attention) of each ResBlock
    for i in indices[1:]:
        if f"input_blocks.{i}.0.op.weight" in sd:
            levels.append([])
        elif f"input_blocks.{i}.0.in_layers.2.weight" in sd:
            ch = int(sd[f"input_blocks.{i}.0.in_layers.2.weight"].shape[0])
            levels[-1].append((ch, f"input_blocks.{i}.1.qkv.weight" in sd))
        else:
            raise WeightsError(f"input_blocks.{i} is neither a ResBlock nor a Downsample; unsupported UNet variant")
    counts = {len(lv) for lv in levels}
    if len(counts) != 1 or 0 in counts:
        raise WeightsError(f"uneven number of ResBlocks per level {[len(lv) for lv in levels]}; unsupported UNet variant")
    mult = []
    for lv in levels:
        chans = {c for c, _ in lv}
        if len(chans) != 1 or next(iter(chans)) % model_channels:
            raise WeightsError(f"unexpected channel counts {sorted(chans)} in one UNet level")
        mult.append(next(iter(chans)) // model_channels)
    attn = frozenset(L for L, lv in enumerate(levels) if any(a for _, a in lv))
    return UNetLayout(int(conv_in.shape[1]), int(conv_out.shape[0]), model_channels, tuple(mult), counts.pop(), attn)


def unet2d_config(layout: UNetLayout, num_head_channels: int, sample_size: int | None = None) -> dict[str, Any]:
    """``diffusers.UNet2DModel`` keyword arguments equivalent to an LDM UNet (positional time embedding, cos first)."""
    n = len(layout.channel_mult)
    return {
        "sample_size": sample_size, "in_channels": layout.in_channels, "out_channels": layout.out_channels,
        "block_out_channels": layout.block_channels, "layers_per_block": layout.num_res_blocks,
        "down_block_types": tuple("AttnDownBlock2D" if L in layout.attention_levels else "DownBlock2D" for L in range(n)),
        "up_block_types": tuple("AttnUpBlock2D" if L in layout.attention_levels else "UpBlock2D" for L in reversed(range(n))),
        "attention_head_dim": num_head_channels, "flip_sin_to_cos": True, "freq_shift": 0, "downsample_padding": 1,
        "norm_num_groups": 32, "norm_eps": 1e-5, "act_fn": "silu", "add_attention": True, "time_embedding_type": "positional",
        "mid_block_type": "UNetMidBlock2D", "resnet_time_scale_shift": "default",
    }


_RES = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj", "out_layers.0": "norm2",
        "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}


def _resblock(sd: Mapping[str, Tensor], src: str, dst: str, out: dict[str, Tensor], used: set[str]) -> None:
    for old, new in _RES.items():
        for p in ("weight", "bias"):
            key = f"{src}.{old}.{p}"
            if key in sd:
                out[f"{dst}.{new}.{p}"] = sd[key]
                used.add(key)


def _attention(sd: Mapping[str, Tensor], src: str, dst: str, head_channels: int, out: dict[str, Tensor], used: set[str]) -> None:
    """Legacy fused QKV (3C, C, 1), head-interleaved -> separate (C, C) q/k/v linear weights."""
    qkv_w, qkv_b = sd[f"{src}.qkv.weight"], sd[f"{src}.qkv.bias"]
    channels = int(qkv_w.shape[1])
    if channels % head_channels:
        raise WeightsError(f"{src}: {channels} channels is not a multiple of num_head_channels={head_channels}")
    heads = channels // head_channels
    w = qkv_w.reshape(heads, 3, head_channels, channels)
    b = qkv_b.reshape(heads, 3, head_channels)
    for i, name in enumerate(("to_q", "to_k", "to_v")):
        out[f"{dst}.{name}.weight"] = w[:, i].reshape(channels, channels)
        out[f"{dst}.{name}.bias"] = b[:, i].reshape(channels)
    out[f"{dst}.group_norm.weight"], out[f"{dst}.group_norm.bias"] = sd[f"{src}.norm.weight"], sd[f"{src}.norm.bias"]
    out[f"{dst}.to_out.0.weight"] = sd[f"{src}.proj_out.weight"].reshape(channels, channels)
    out[f"{dst}.to_out.0.bias"] = sd[f"{src}.proj_out.bias"]
    used.update(f"{src}.{k}" for k in ("qkv.weight", "qkv.bias", "norm.weight", "norm.bias", "proj_out.weight", "proj_out.bias"))


def _copy(sd: Mapping[str, Tensor], src: str, dst: str, out: dict[str, Tensor], used: set[str]) -> None:
    for p in ("weight", "bias"):
        key = f"{src}.{p}"
        if key in sd:
            out[f"{dst}.{p}"] = sd[key]
            used.add(key)


def convert_unet(sd: Mapping[str, Tensor], layout: UNetLayout, num_head_channels: int) -> dict[str, Tensor]:
    """Map an (un-prefixed) LDM UNet state dict onto ``UNet2DModel`` keys; leftover keys -> :class:`WeightsError`."""
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    _copy(sd, "time_embed.0", "time_embedding.linear_1", out, used)
    _copy(sd, "time_embed.2", "time_embedding.linear_2", out, used)
    _copy(sd, "input_blocks.0.0", "conv_in", out, used)
    _copy(sd, "out.0", "conv_norm_out", out, used)
    _copy(sd, "out.2", "conv_out", out, used)
    n, nres = len(layout.channel_mult), layout.num_res_blocks
    idx = 1
    for L in range(n):
        for j in range(nres):
            _resblock(sd, f"input_blocks.{idx}.0", f"down_blocks.{L}.resnets.{j}", out, used)
            if L in layout.attention_levels:
                _attention(sd, f"input_blocks.{idx}.1", f"down_blocks.{L}.attentions.{j}", num_head_channels, out, used)
            idx += 1
        if L != n - 1:
            _copy(sd, f"input_blocks.{idx}.0.op", f"down_blocks.{L}.downsamplers.0.conv", out, used)
            idx += 1
    _resblock(sd, "middle_block.0", "mid_block.resnets.0", out, used)
    _attention(sd, "middle_block.1", "mid_block.attentions.0", num_head_channels, out, used)
    _resblock(sd, "middle_block.2", "mid_block.resnets.1", out, used)
    idx = 0
    for k, L in enumerate(reversed(range(n))):
        for j in range(nres + 1):
            _resblock(sd, f"output_blocks.{idx}.0", f"up_blocks.{k}.resnets.{j}", out, used)
            sub = 1
            if L in layout.attention_levels:
                _attention(sd, f"output_blocks.{idx}.1", f"up_blocks.{k}.attentions.{j}", num_head_channels, out, used)
                sub = 2
            if j == nres and L != 0:
                _copy(sd, f"output_blocks.{idx}.{sub}.conv", f"up_blocks.{k}.upsamplers.0.conv", out, used)
            idx += 1
    leftover = sorted(set(sd) - used)
    if leftover:
        raise WeightsError(f"LDM UNet keys not covered by the key map: {leftover[:8]}{' …' if len(leftover) > 8 else ''}")
    return out


# --------------------------------------------------------------------------------------------------
# Autoencoders (KL and VQ)
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AutoencoderLayout:
    """Architecture of an LDM first-stage model (``AutoencoderKL`` or ``VQModel``), read off its state dict."""

    in_channels: int
    out_channels: int
    block_channels: tuple[int, ...]
    num_res_blocks: int
    z_channels: int
    embed_dim: int
    n_embed: int | None  # VQ codebook size; None for KL

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.block_channels) - 1)


def infer_autoencoder_layout(sd: Mapping[str, Tensor]) -> AutoencoderLayout:
    """Read an LDM autoencoder's layout from its (un-prefixed) state dict."""
    try:
        conv_in, dec_out, dec_in, quant = sd["encoder.conv_in.weight"], sd["decoder.conv_out.weight"], sd["decoder.conv_in.weight"], sd["quant_conv.weight"]
    except KeyError as exc:
        raise WeightsError(f"not an LDM autoencoder state dict: missing {exc.args[0]!r}") from exc
    levels = sorted({int(k.split(".")[2]) for k in sd if k.startswith("encoder.down.")})
    chans = tuple(int(sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0]) for i in levels)
    nres = len({k.split(".")[4] for k in sd if k.startswith("encoder.down.0.block.")})
    if any(".attn." in k for k in sd if k.startswith(("encoder.down.", "decoder.up."))):
        raise WeightsError("autoencoder has attention inside its down/up levels (attn_resolutions); not supported by diffusers' Encoder/Decoder")
    n_embed = int(sd["quantize.embedding.weight"].shape[0]) if "quantize.embedding.weight" in sd else None
    z = int(dec_in.shape[1])
    embed = int(quant.shape[0]) if n_embed is not None else int(quant.shape[0]) // 2
    return AutoencoderLayout(int(conv_in.shape[1]), int(dec_out.shape[0]), chans, nres, z, embed, n_embed)


def autoencoder_config(layout: AutoencoderLayout) -> dict[str, Any]:
    """Keyword arguments of ``diffusers.AutoencoderKL`` (KL) or ``diffusers.VQModel`` (VQ) for ``layout``."""
    n = len(layout.block_channels)
    common = {"in_channels": layout.in_channels, "out_channels": layout.out_channels, "down_block_types": ("DownEncoderBlock2D",) * n,
                  "up_block_types": ("UpDecoderBlock2D",) * n, "block_out_channels": layout.block_channels,
                  "layers_per_block": layout.num_res_blocks, "act_fn": "silu", "norm_num_groups": 32, "scaling_factor": 1.0}
    if layout.n_embed is None:
        if layout.z_channels != layout.embed_dim:
            raise WeightsError(f"KL autoencoder with z_channels={layout.z_channels} != embed_dim={layout.embed_dim} has no diffusers equivalent")
        return dict(common, latent_channels=layout.embed_dim)
    return dict(common, latent_channels=layout.z_channels, vq_embed_dim=layout.embed_dim, num_vq_embeddings=layout.n_embed)


_AE_RES = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
_AE_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def _ae_key(key: str, n_levels: int) -> str:
    """One LDM autoencoder key -> its diffusers name."""
    m = re.match(r"^(encoder|decoder)\.(.*)$", key)
    if m is None:
        return key  # quant_conv, post_quant_conv, quantize.embedding
    part, rest = m.groups()
    rules = (
        (r"^down\.(\d+)\.block\.(\d+)\.(\w+)\.(weight|bias)$", lambda g: f"down_blocks.{g[0]}.resnets.{g[1]}.{_AE_RES.get(g[2], g[2])}.{g[3]}"),
        (r"^down\.(\d+)\.downsample\.conv\.(weight|bias)$", lambda g: f"down_blocks.{g[0]}.downsamplers.0.conv.{g[1]}"),
        (r"^up\.(\d+)\.block\.(\d+)\.(\w+)\.(weight|bias)$", lambda g: f"up_blocks.{n_levels - 1 - int(g[0])}.resnets.{g[1]}.{_AE_RES.get(g[2], g[2])}.{g[3]}"),
        (r"^up\.(\d+)\.upsample\.conv\.(weight|bias)$", lambda g: f"up_blocks.{n_levels - 1 - int(g[0])}.upsamplers.0.conv.{g[1]}"),
        (r"^mid\.block_(\d)\.(\w+)\.(weight|bias)$", lambda g: f"mid_block.resnets.{int(g[0]) - 1}.{_AE_RES.get(g[1], g[1])}.{g[2]}"),
        (r"^mid\.attn_1\.(\w+)\.(weight|bias)$", lambda g: f"mid_block.attentions.0.{_AE_ATTN.get(g[0], g[0])}.{g[1]}"),
        (r"^norm_out\.(weight|bias)$", lambda g: f"conv_norm_out.{g[0]}"),
        (r"^conv_(in|out)\.(weight|bias)$", lambda g: f"conv_{g[0]}.{g[1]}"),
    )
    for pattern, fn in rules:
        mm = re.match(pattern, rest)
        if mm:
            return f"{part}.{fn(mm.groups())}"
    raise WeightsError(f"LDM autoencoder key {key!r} is not covered by the key map")


def convert_autoencoder(sd: Mapping[str, Tensor], layout: AutoencoderLayout) -> dict[str, Tensor]:
    """Map an (un-prefixed) LDM autoencoder state dict onto diffusers ``AutoencoderKL``/``VQModel`` keys."""
    n = len(layout.block_channels)
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        new = _ae_key(key, n)
        if ".mid_block.attentions.0.to_" in new and new.endswith(".weight") and value.ndim == 4:
            value = value.reshape(value.shape[0], value.shape[1])  # 1x1 conv -> linear
        out[new] = value
    return out
