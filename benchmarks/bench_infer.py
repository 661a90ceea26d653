"""Inference adapters on CPU: low-resolution tiles per second of ``adapter.sample`` with tiny random configurations.

The networks are the five adapters' architectures shrunk to test size (the same tiny configurations as
tests/infer: 16-32 channels, one or two levels), built in memory with random weights; 4 sampling steps, batch 4,
16 x 16 px LR tiles (64 x 64 px output, as in the tests). The figures show the relative cost of the samplers and the adapter
overhead, not the speed of the published models (those need a GPU: ``benchmarks/gpu_check_infer.py``).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import measure, summary

from gapeval.infer.base import SamplingOptions

ADAPTERS = ("ldsr-s2", "ldm-sr-x4", "sd-x4-upscaler", "resshift", "sr3")
STEPS, BATCH, TILE = 4, 4, 16


def _tiny_vq(seed: int):
    from diffusers import VQModel

    torch.manual_seed(seed)
    return VQModel(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                   block_out_channels=(16, 16, 16), layers_per_block=1, latent_channels=3, num_vq_embeddings=32, norm_num_groups=8)


def build(name: str):
    """A tiny random-weight adapter on the CPU (fp32)."""
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel, UNet2DModel

    from gapeval.infer import ldm_keys as K
    from gapeval.infer import ldm_sr, ldsr_s2, resshift, sd_upscaler, sr3
    from gapeval.infer.swin_unet import SwinUNet, SwinUNetConfig

    opts = SamplingOptions(steps=STEPS)
    torch.manual_seed(0)
    if name == "ldsr-s2":
        unet = UNet2DModel(**K.unet2d_config(K.UNetLayout(8, 4, 32, (1, 2), 1, frozenset({1})), 32))
        vae = AutoencoderKL(**K.autoencoder_config(K.AutoencoderLayout(4, 4, (32, 64, 128), 1, 4, 4, None)))
        return ldsr_s2.LDSRS2(unet, vae, ldsr_s2.default_betas(), opts, "cpu", "fp32")
    if name == "ldm-sr-x4":
        unet = UNet2DModel(in_channels=6, out_channels=3, block_out_channels=(16, 32), layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                           up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8, norm_num_groups=8)
        return ldm_sr.LDMSuperResolution(unet, _tiny_vq(1), DDIMScheduler(**ldm_sr.FALLBACK_SCHEDULER), opts, "cpu", "fp32")
    if name == "sd-x4-upscaler":
        unet = UNet2DConditionModel(in_channels=7, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
                                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                    cross_attention_dim=16, attention_head_dim=8, norm_num_groups=8, num_class_embeds=1000)
        vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                            block_out_channels=(16, 16, 16), layers_per_block=1, latent_channels=4, norm_num_groups=8, scaling_factor=0.08333)
        zeros = torch.zeros(1, 77, 16)
        return sd_upscaler.SDUpscaler(unet, vae, DDIMScheduler(**sd_upscaler.SCHEDULER_DEFAULTS), DDPMScheduler(**sd_upscaler.LOW_RES_DEFAULTS),
                                      zeros, zeros, opts, False, "cpu", "fp32")
    if name == "resshift":
        net = SwinUNet(SwinUNetConfig(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, swin_levels=(1,), swin_depth=2, swin_embed_dim=16,
                                      num_head_channels=8, window_size=4, image_size=16, norm_groups=8))
        return resshift.ResShift(net, _tiny_vq(4), resshift.ShiftSchedule(steps=STEPS), ("B04", "B03", "B02"), resshift.ValueMap(), opts, "cpu", "fp32")
    if name == "sr3":
        cfg = sr3.model_config(("B04", "B03", "B02", "B08"), 4, sr3.unet_config(4, width=16, mult=(1, 2), layers=1, attention_levels=(1,),
                                                                            norm_groups=8, head_channels=8))
        return sr3.SR3(sr3.build_unet(cfg), cfg, opts, "cpu", "fp32")
    raise ValueError(name)


@pytest.mark.parametrize("name", ADAPTERS)
def bench_adapter(benchmark: Any, name: str) -> None:
    adapter = build(name)
    g = torch.Generator().manual_seed(0)
    lr = torch.rand(BATCH, len(adapter.bands), TILE, TILE, generator=g) * 0.3
    gens = [torch.Generator().manual_seed(i) for i in range(BATCH)]
    out: list[torch.Tensor] = []
    rec = measure(benchmark, lambda: out.append(adapter.sample(lr, gens)), group="infer-tiny-cpu", label=name, rounds=3, warmup=1,
                  tiles=BATCH, steps=STEPS, tile=TILE)
    assert out[-1].shape == (BATCH, len(adapter.bands), 4 * TILE, 4 * TILE) and torch.isfinite(out[-1]).all()
    benchmark.extra_info["tiles_per_s"] = BATCH / rec["min"]


@summary
def infer_summary(results: dict) -> list[str]:
    rows = [(n, results.get(("infer-tiny-cpu", n))) for n in ADAPTERS]
    if not any(r for _, r in rows):
        return []
    lines = [f"## Inference adapters, tiny random configurations, CPU ({STEPS} steps, batch {BATCH}, {TILE}² px LR tiles)", "",
             "| adapter | s per batch | LR tiles/s | ms per tile per step |", "|---|---|---|---|"]
    for n, r in rows:
        if r:
            lines.append(f"| {n} | {r['min']:.3f} | {BATCH / r['min']:.2f} | {r['min'] / BATCH / STEPS * 1000:.1f} |")
    return lines
