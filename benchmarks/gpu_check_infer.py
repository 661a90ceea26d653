"""GPU check of ``gapeval infer``: every adapter at (near) published size with random weights, on CUDA.

Prints, per adapter and precision, tiles per second of ``adapter.sample`` and the peak GPU memory; then runs the
whole pipeline (read -> tiles -> batches -> blend -> COG) on a synthetic Sentinel-2-like GeoTIFF with an
absurd batch size, so that real CUDA out-of-memory errors exercise the halve-and-retry back-off.

Random weights: the numbers measure speed and memory, not quality. Architectures: LDSR-S2 exactly as
opensr-model config_10m.yaml; the others approximate the published configurations (see ``CONFIGS`` below).

    python benchmarks/gpu_check_infer.py                  # CUDA, all adapters, fp32 and bf16
    python benchmarks/gpu_check_infer.py --device cpu --quick   # smoke run on a CPU (tiny tiles, one step)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gapeval.infer.base import SamplingOptions
from gapeval.infer.checkpoints import CheckpointSource


def build(name: str, device: str, precision: str, steps: int):
    """An adapter with random weights at (near) published size."""
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel, UNet2DModel, VQModel

    from gapeval.infer import ldm_keys as K
    from gapeval.infer import ldm_sr, ldsr_s2, resshift, sd_upscaler, sr3
    from gapeval.infer.swin_unet import SwinUNet, SwinUNetConfig

    opts = SamplingOptions(steps=steps)
    torch.manual_seed(0)
    vq_f4 = {"in_channels": 3, "out_channels": 3, "down_block_types": ("DownEncoderBlock2D",) * 3, "up_block_types": ("UpDecoderBlock2D",) * 3,
                 "block_out_channels": (128, 256, 512), "layers_per_block": 2, "latent_channels": 3, "num_vq_embeddings": 8192}
    if name == "ldsr-s2":  # opensr-model config_10m.yaml
        unet = UNet2DModel(**K.unet2d_config(K.UNetLayout(8, 4, 160, (1, 2, 2, 4), 2, frozenset({3})), 32))
        vae = AutoencoderKL(**K.autoencoder_config(K.AutoencoderLayout(4, 4, (128, 256, 512), 2, 4, 4, None)))
        return ldsr_s2.LDSRS2(unet, vae, ldsr_s2.default_betas(), opts, device, precision)
    if name == "ldm-sr-x4":  # CompVis LDM-SR x4 (approximate UNet config)
        unet = UNet2DModel(in_channels=6, out_channels=3, block_out_channels=(160, 320, 320, 640), layers_per_block=2, attention_head_dim=32,
                           down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                           up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
        sched = DDIMScheduler(**ldm_sr.FALLBACK_SCHEDULER)
        return ldm_sr.LDMSuperResolution(unet, VQModel(**vq_f4), sched, opts, device, precision)
    if name == "sd-x4-upscaler":  # Stable Diffusion x4 upscaler (approximate UNet config)
        unet = UNet2DConditionModel(in_channels=7, out_channels=4, block_out_channels=(256, 512, 512, 1024), layers_per_block=2,
                                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                                    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                                    cross_attention_dim=1024, attention_head_dim=8, num_class_embeds=1000)
        vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                            block_out_channels=(128, 256, 512), layers_per_block=2, latent_channels=4, scaling_factor=0.08333)
        zeros = torch.zeros(1, 77, 1024)
        return sd_upscaler.SDUpscaler(unet, vae, DDIMScheduler(**sd_upscaler.SCHEDULER_DEFAULTS), DDPMScheduler(**sd_upscaler.LOW_RES_DEFAULTS),
                                      zeros, zeros, opts, False, device, precision)
    if name == "resshift":  # ResShift x4 real-SR: Swin-UNet 160 ch, (1,2,2,4), Swin everywhere, window 8
        net = SwinUNet(SwinUNetConfig())
        return resshift.ResShift(net, VQModel(**vq_f4), resshift.ShiftSchedule(steps=max(steps, 4)), ("B04", "B03", "B02"),
                                 resshift.ValueMap(), opts, device, precision)
    if name == "sr3":
        cfg = sr3.model_config(("B04", "B03", "B02", "B08"), 4, sr3.unet_config(4))
        return sr3.SR3(sr3.build_unet(cfg), cfg, opts, device, precision)
    raise ValueError(name)


def bench(name: str, device: str, precision: str, steps: int, tile: int, batch: int, repeats: int) -> str:
    adapter = build(name, device, precision, steps)
    lr = torch.rand(batch, len(adapter.bands), tile, tile) * 0.3
    gens = [torch.Generator().manual_seed(i) for i in range(batch)]
    adapter.sample(lr, gens)  # warm-up (cuDNN autotuning, allocator)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = adapter.sample(lr, gens)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / repeats
    mem = f"{torch.cuda.max_memory_allocated() / 2**30:5.1f} GiB" if device.startswith("cuda") else "   n/a"
    finite = bool(torch.isfinite(out).all())
    del adapter
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return (f"{name:<15} {precision:<5} tile {tile:>3} batch {batch:>3} steps {steps:>3}: {batch / dt:8.2f} tiles/s "
            f"({dt / steps * 1000:7.1f} ms/step/batch), peak {mem}, output {tuple(out.shape)} finite={finite}")


def pipeline_oom_check(device: str, precision: str, steps: int, size: int, tile: int, batch: int) -> str:
    """Whole pipeline on a synthetic GeoTIFF with a huge batch: real OOMs must halve the batch and finish."""
    import rasterio
    from affine import Affine

    from gapeval.infer.pipeline import InferConfig, Pipeline

    adapter = build("ldsr-s2", device, precision, steps)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scene.tif"
        rng = np.random.default_rng(0)
        dn = (800 + 300 * rng.random((4, size, size))).astype("uint16")
        with rasterio.open(path, "w", driver="GTiff", height=size, width=size, count=4, dtype="uint16", crs="EPSG:32618",
                           transform=Affine(10, 0, 435730, 0, -10, 4179460)) as ds:
            ds.write(dn)
            for i, b in enumerate(("B04", "B03", "B02", "B08"), 1):
                ds.set_band_description(i, b)
        ckpt = Path(tmp) / "random.ckpt"
        ckpt.write_bytes(b"random weights")
        source = CheckpointSource(str(ckpt), ckpt, "random")
        pipe = Pipeline(adapter, source, InferConfig(out=Path(tmp) / "sr", tile=tile, overlap=16, batch=batch, scale=10000.0))
        t0 = time.perf_counter()
        result = pipe.process(path)
        dt = time.perf_counter() - t0
    return (f"pipeline ldsr-s2 {precision}: {size}x{size} px scene, {result.tiles_computed} tiles in {dt:.1f} s "
            f"({result.tiles_computed / dt:.2f} tiles/s); batch started at {batch}, ended at {pipe.batch} (OOM back-off)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", default="ldsr-s2,ldm-sr-x4,sd-x4-upscaler,resshift,sr3")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny tiles, 1 step, 1 repeat, no OOM check (CPU smoke run)")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("CUDA is not available; use --device cpu --quick for a smoke run")
    if args.device.startswith("cuda"):
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    steps, repeats = (1, 1) if args.quick else (args.steps, args.repeats)
    for precision in args.precisions.split(","):
        for name in args.models.split(","):
            tile = (16 if args.quick else 64) if name in ("resshift", "sr3") else (16 if args.quick else 128)
            batch = 1 if args.quick else args.batch
            try:
                print(bench(name, args.device, precision, steps, tile, batch, repeats), flush=True)
            except Exception as exc:  # noqa: BLE001 - report and go on with the other adapters
                print(f"{name:<15} {precision:<5} FAILED: {type(exc).__name__}: {exc}", flush=True)
    if not args.quick and args.device.startswith("cuda"):
        print(pipeline_oom_check(args.device, "bf16", 2, 1024, 128, 1024), flush=True)


if __name__ == "__main__":
    main()
