"""GPU check of ``gapeval infer``: all five adapters at published size with random weights.

For each adapter and precision it prints the LR tiles per second of ``adapter.sample`` and the peak GPU memory; then it
runs the whole pipeline (read -> tiles -> batches -> blend -> COG) on a synthetic Sentinel-2-like GeoTIFF with an
absurd batch size, so that real CUDA out-of-memory errors exercise the halve-and-retry back-off.

Architectures (random weights: the numbers measure speed and memory, not quality):

* ``ldsr-s2``: opensr-model ``config_10m.yaml`` (UNet 160/320/320/640, KL autoencoder 128/256/512);
* ``ldm-sr-x4``: the ``unet/`` and ``vqvae/`` configs of ``CompVis/ldm-super-resolution-4x-openimages``;
* ``sd-x4-upscaler``: the ``unet/`` and ``vae/`` configs of ``stabilityai/stable-diffusion-x4-upscaler`` (zero text embedding);
* ``resshift``: upstream ``UNetModelSwin`` (v1/v3/SinSR, 118.6 M parameters) + ResShift's VQ-f4 autoencoder, v3 schedule;
* ``sr3``: no published weights; the default ``gapeval train sr3`` network (64 channels x (1, 2, 2, 4)).

    python benchmarks/gpu_check_infer.py                 # CUDA: fp32 and bf16, 10 steps, batch 8, then the OOM back-off run
    python benchmarks/gpu_check_infer.py --tiny          # CPU smoke check: tiny networks, 1 step, injected OOM for the back-off
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "infer"))  # hub_layouts: the published diffusers configs (and tiny ones with the same keys)

from gapeval.infer.base import SamplingOptions  # noqa: E402
from gapeval.infer.checkpoints import CheckpointSource  # noqa: E402

ADAPTERS = ("ldsr-s2", "ldm-sr-x4", "sd-x4-upscaler", "resshift", "sr3")


def build(name: str, device: str, precision: str, steps: int, tiny: bool):
    """An adapter with random weights: published size, or the tests' tiny size (same structure) with ``tiny``."""
    import hub_layouts as H
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel, UNet2DModel, VQModel

    from gapeval.infer import ldm_keys as K
    from gapeval.infer import ldm_sr, ldsr_s2, resshift, sd_upscaler, sr3
    from gapeval.infer.swin_unet import SwinUNet, SwinUNetConfig

    opts = SamplingOptions(steps=steps)
    torch.manual_seed(0)
    if name == "ldsr-s2":
        layout = K.UNetLayout(8, 4, 32, (1, 2), 1, frozenset({1})) if tiny else K.UNetLayout(8, 4, 160, (1, 2, 2, 4), 2, frozenset({3}))
        ae = K.AutoencoderLayout(4, 4, (32, 32, 32), 1, 4, 4, None) if tiny else K.AutoencoderLayout(4, 4, (128, 256, 512), 2, 4, 4, None)
        unet, vae = UNet2DModel(**K.unet2d_config(layout, 32)), AutoencoderKL(**K.autoencoder_config(ae))
        return ldsr_s2.LDSRS2(unet, vae, ldsr_s2.default_betas(), opts, device, precision)
    if name == "ldm-sr-x4":
        unet = H.build(UNet2DModel, H.LDM_UNET_TINY if tiny else H.LDM_UNET_FULL)
        vq = H.build(VQModel, H.LDM_VQ_TINY if tiny else H.LDM_VQ_FULL)
        return ldm_sr.LDMSuperResolution(unet, vq, DDIMScheduler.from_config({k: v for k, v in H.LDM_SCHEDULER.items() if not k.startswith("_")}),
                                         opts, device, precision)
    if name == "sd-x4-upscaler":
        unet = H.build(UNet2DConditionModel, H.SD_UNET_TINY if tiny else H.SD_UNET_FULL)
        vae = H.build(AutoencoderKL, H.SD_VAE_TINY if tiny else H.SD_VAE_FULL)
        zeros = torch.zeros(1, 77, int(unet.config.cross_attention_dim))
        drop = lambda cfg: {k: v for k, v in cfg.items() if not k.startswith("_")}  # noqa: E731
        return sd_upscaler.SDUpscaler(unet, vae, DDIMScheduler.from_config(drop(H.SD_SCHEDULER)), DDPMScheduler.from_config(drop(H.SD_LOW_RES_SCHEDULER)),
                                      zeros, zeros, opts, False, device, precision)
    if name == "resshift":
        cfg = SwinUNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, swin_levels=(0, 1), swin_embed_dim=32, num_head_channels=16,
                             window_size=4, image_size=16) if tiny else SwinUNetConfig()
        vq = VQModel(**K.autoencoder_config(K.AutoencoderLayout(3, 3, (32, 32, 32) if tiny else (128, 256, 512), 1 if tiny else 2, 3, 3, 8192)))
        schedule, _ = resshift.PRESETS["resshift-v3"]
        return resshift.ResShift(SwinUNet(cfg), vq, schedule, ("B04", "B03", "B02"), resshift.ValueMap(), opts, device, precision)
    if name == "sr3":
        unet_cfg = sr3.unet_config(4, width=16, mult=(1, 2), layers=1, attention_levels=(1,), norm_groups=8, head_channels=8) if tiny else sr3.unet_config(4)
        cfg = sr3.model_config(("B04", "B03", "B02", "B08"), 4, unet_cfg)
        return sr3.SR3(sr3.build_unet(cfg), cfg, opts, device, precision)
    raise ValueError(name)


def tile_for(adapter, tiny: bool) -> int:
    """The published default LR tile (64 resshift/sr3, 128 otherwise), 16-32 px for ``--tiny``, a multiple of the network's."""
    want = 32 if tiny else adapter.default_tile
    return max(adapter.size_multiple, want - want % adapter.size_multiple)


def bench(name: str, device: str, precision: str, steps: int, batch: int, repeats: int, tiny: bool) -> str:
    adapter = build(name, device, precision, steps, tiny)
    params = sum(p.numel() for m in vars(adapter).values() if isinstance(m, torch.nn.Module) for p in m.parameters()) / 1e6
    tile = tile_for(adapter, tiny)
    lr = torch.rand(batch, len(adapter.bands), tile, tile) * 0.3
    gens = [torch.Generator().manual_seed(i) for i in range(batch)]
    adapter.sample(lr, gens)  # warm-up (cuDNN autotuning, allocator)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = adapter.sample(lr, gens)
    if cuda:
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / repeats
    mem = f"{torch.cuda.max_memory_allocated() / 2**30:6.2f} GiB" if cuda else "n/a (CPU)"
    finite = bool(torch.isfinite(out).all())
    del adapter
    if cuda:
        torch.cuda.empty_cache()
    return (f"{name:<15} {precision:<5} {params:7.1f} M params  tile {tile:>3} batch {batch:>3} steps {steps:>3}: {batch / dt:8.2f} tiles/s "
            f"({dt / steps * 1000:8.1f} ms/step/batch), peak {mem}, output {tuple(out.shape)} finite={finite}")


def pipeline_oom_check(name: str, device: str, precision: str, steps: int, size: int, batch: int, tiny: bool) -> str:
    """The whole pipeline on a synthetic GeoTIFF with a huge batch: OOMs must halve the batch and finish.

    On CUDA the OOMs are real; with ``--tiny`` (CPU) ``adapter.sample`` raises ``torch.OutOfMemoryError`` for batches
    larger than 2, which exercises the same back-off path.
    """
    import rasterio
    from affine import Affine

    from gapeval.infer.pipeline import InferConfig, Pipeline

    adapter = build(name, device, precision, steps, tiny)
    if tiny:
        real = adapter.sample

        def limited(lr, generators):
            if lr.shape[0] > 2:
                raise torch.OutOfMemoryError("injected: batch too large")
            return real(lr, generators)

        adapter.sample = limited
    tile = tile_for(adapter, tiny)
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
        pipe = Pipeline(adapter, source, InferConfig(out=Path(tmp) / "sr", tile=tile, overlap=min(16, tile // 4), batch=batch, scale=10000.0))
        t0 = time.perf_counter()
        result = pipe.process(path)
        dt = time.perf_counter() - t0
    return (f"pipeline {name} {precision}: {size}x{size} px scene, {result.tiles_computed} tiles of {tile} px in {dt:.1f} s "
            f"({result.tiles_computed / dt:.2f} tiles/s); batch started at {batch}, ended at {pipe.batch} (OOM back-off)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="default: cuda, or cpu with --tiny")
    parser.add_argument("--models", default=",".join(ADAPTERS))
    parser.add_argument("--precisions", default=None, help="default: fp32,bf16 on CUDA; fp32 with --tiny")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--oom-model", default="ldsr-s2", help="adapter of the OOM back-off pipeline run")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke check: the tests' tiny networks, 1 step, batch 2, injected OOM")
    args = parser.parse_args()
    device = args.device or ("cpu" if args.tiny else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("CUDA is not available; use --tiny for a CPU smoke check")
    if device.startswith("cuda"):
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    precisions = (args.precisions or ("fp32" if args.tiny else "fp32,bf16")).split(",")
    steps, repeats, batch = (1, 1, 2) if args.tiny else (args.steps, args.repeats, args.batch)
    failures = 0
    for precision in precisions:
        for name in args.models.split(","):
            try:
                print(bench(name, device, precision, steps, batch, repeats, args.tiny), flush=True)
            except Exception as exc:  # noqa: BLE001 - report and go on with the other adapters
                failures += 1
                print(f"{name:<15} {precision:<5} FAILED: {type(exc).__name__}: {exc}", flush=True)
    size, big = (96, 64) if args.tiny else (1024, 1024)
    print(pipeline_oom_check(args.oom_model, device, "fp32" if args.tiny else "bf16", 1 if args.tiny else 2, size, big, args.tiny), flush=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
