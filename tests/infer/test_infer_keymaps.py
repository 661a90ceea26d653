"""LDM -> diffusers key maps on state dicts shaped like the real LDSR-S2 checkpoint, and their numerics."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DModel, VQModel
from infer_helpers import TINY_LDSR, ldm_autoencoder_shapes, ldm_unet_shapes, ldsr_state_shapes, load_fixture_shapes, random_state

from gapeval.infer import ldm_keys as K
from gapeval.infer.ldsr_s2 import ema_key, split_checkpoint
from lpips_sat.errors import WeightsError


def _meta_state(shapes: dict) -> dict[str, torch.Tensor]:
    return {k: torch.empty(v, device="meta") for k, v in shapes.items()}


def test_layout_enumeration_matches_the_real_checkpoint_layout() -> None:
    """The test's independent LDM layout enumerator reproduces the key list generated from opensr-model (830 tensors)."""
    real = load_fixture_shapes()
    assert ldsr_state_shapes() == real


def test_full_size_ldsr_checkpoint_maps_onto_diffusers_modules() -> None:
    """Every tensor of the published layout lands on a diffusers key of the same shape, and nothing is left over."""
    state = _meta_state(load_fixture_shapes())
    state["loss.logvar"] = torch.empty((), device="meta")  # the published file also carries loss.* tensors
    unet_sd, vae_sd, betas = split_checkpoint(state, "fixture")
    assert betas is not None and tuple(betas.shape) == (1000,)
    ul, vl = K.infer_unet_layout(unet_sd), K.infer_autoencoder_layout(vae_sd)
    assert ul.block_channels == (160, 320, 320, 640) and ul.attention_levels == {3} and ul.num_res_blocks == 2
    assert (ul.in_channels, ul.out_channels) == (8, 4)
    assert vl.block_channels == (128, 256, 512) and vl.embed_dim == 4 and vl.n_embed is None
    with torch.device("meta"):
        unet = UNet2DModel(**K.unet2d_config(ul, 32))
        vae = AutoencoderKL(**K.autoencoder_config(vl))
    for module, converted in ((unet, K.convert_unet(unet_sd, ul, 32)), (vae, K.convert_autoencoder(vae_sd, vl))):
        own = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        assert {k: tuple(v.shape) for k, v in converted.items()} == own


def test_legacy_qkv_split_matches_ldm_attention_numerically() -> None:
    """LDM's AttentionBlock (legacy head-interleaved QKV), computed here by hand, equals the mapped diffusers attention."""
    torch.manual_seed(0)
    shapes = ldm_unet_shapes(4, 4, 32, (1, 2), 1, {1})
    sd = random_state(shapes, seed=3, std=0.2)
    layout = K.infer_unet_layout(sd)
    unet = UNet2DModel(**K.unet2d_config(layout, 16)).eval()
    unet.load_state_dict(K.convert_unet(sd, layout, 16), strict=True)
    x = torch.randn(2, 64, 4, 4)
    p = "middle_block.1"
    C, heads, d = 64, 4, 16
    h = torch.nn.functional.group_norm(x, 32, sd[f"{p}.norm.weight"], sd[f"{p}.norm.bias"], eps=1e-5).reshape(2, C, 16)
    qkv = torch.nn.functional.conv1d(h, sd[f"{p}.qkv.weight"], sd[f"{p}.qkv.bias"])  # (B, 3C, T)
    q, k, v = qkv.reshape(2 * heads, 3 * d, 16).split(d, dim=1)  # legacy order: per head [q k v]
    w = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / d ** 0.5, dim=-1)
    a = torch.einsum("bts,bcs->bct", w, v).reshape(2, C, 16)
    ref = x + torch.nn.functional.conv1d(a, sd[f"{p}.proj_out.weight"], sd[f"{p}.proj_out.bias"]).reshape(2, C, 4, 4)
    with torch.no_grad():
        got = unet.mid_block.attentions[0](x)
    assert torch.allclose(got, ref, atol=1e-5)


def test_time_embedding_is_cos_first_like_ldm() -> None:
    sd = random_state(ldm_unet_shapes(4, 4, 32, (1,), 1, set()), seed=4)
    layout = K.infer_unet_layout(sd)
    unet = UNet2DModel(**K.unet2d_config(layout, 32))
    t = torch.tensor([0.0, 37.0])
    half = 16
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(half) / half)
    expected = torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], dim=1)  # openaimodel.timestep_embedding
    assert torch.allclose(unet.time_proj(t), expected, atol=1e-6)


def test_vq_autoencoder_map_loads_strictly() -> None:
    sd = random_state(ldm_autoencoder_shapes(3, 3, 32, (1, 2, 4), 1, 3, 3, n_embed=64), seed=5)
    layout = K.infer_autoencoder_layout(sd)
    assert layout.n_embed == 64 and layout.downsampling == 4
    vq = VQModel(**K.autoencoder_config(layout))
    vq.load_state_dict(K.convert_autoencoder(sd, layout), strict=True)
    assert torch.equal(vq.quantize.embedding.weight, sd["quantize.embedding.weight"])
    assert torch.equal(vq.decoder.up_blocks[0].resnets[0].conv1.weight, sd["decoder.up.2.block.0.conv1.weight"])  # deepest first


def test_ema_weights_and_bad_checkpoints() -> None:
    state = random_state(ldsr_state_shapes(**TINY_LDSR), seed=6)
    unet, _, _ = split_checkpoint(state, "x", use_ema=True)
    key = "input_blocks.0.0.weight"
    assert torch.equal(unet[key], state[ema_key(key)]) and not torch.equal(unet[key], state["model.diffusion_model." + key])
    with pytest.raises(WeightsError, match="unexpected keys"):
        split_checkpoint({**state, "something.else": torch.zeros(1)}, "x")
    with pytest.raises(WeightsError, match="not an LDSR-S2"):
        split_checkpoint({"unet.conv_in.weight": torch.zeros(1)}, "x")
    no_ema = {k: v for k, v in state.items() if not k.startswith("model_ema.")}
    with pytest.raises(WeightsError, match="EMA"):
        split_checkpoint(no_ema, "x", use_ema=True)
    u = {k[len("model.diffusion_model."):]: v for k, v in state.items() if k.startswith("model.diffusion_model.")}
    with pytest.raises(WeightsError, match="not covered"):
        K.convert_unet({**u, "input_blocks.1.0.extra.weight": torch.zeros(1)}, K.infer_unet_layout(u), 32)


def test_ldsr_fallback_schedule_is_config_10m() -> None:
    """opensr-model config_10m.yaml: linear_start 0.0001, linear_end 0.0155, 1000 timesteps, LDM "linear" (sqrt-spaced) betas."""
    from gapeval.infer.ldsr_s2 import default_betas

    betas = default_betas()
    assert betas.shape == (1000,) and abs(float(betas[0]) - 1e-4) < 1e-12 and abs(float(betas[-1]) - 0.0155) < 1e-12
    assert abs(float(betas[500] ** 0.5) - (0.01 + (0.0155 ** 0.5 - 0.01) * 500 / 999)) < 1e-12
