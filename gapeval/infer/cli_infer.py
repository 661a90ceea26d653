"""``gapeval infer``: run a diffusion SR adapter over a GeoTIFF or a folder of GeoTIFFs."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from gapeval.infer.base import PRECISIONS, SamplingOptions
from gapeval.infer.pipeline import NIR_FALLBACKS, InferConfig, default_device, list_inputs, parse_shard, select_shard
from gapeval.infer.pipeline import run as run_pipeline
from gapeval.infer.registry import get
from lpips_sat.cli import EXIT_USAGE
from lpips_sat.errors import InputError
from lpips_sat.options import device, finite_float, nonnegative_float, nonnegative_int, number, positive_float, positive_int

log = logging.getLogger(__name__)


def _batch(text: str) -> int | None:
    if text == "auto":
        return None
    return positive_int(text)


def shard_arg(text: str) -> tuple[int, int]:
    """``--shard k/n|auto`` as an argparse type (checked at parse time: a bad value is a usage error, exit 2)."""
    try:
        return parse_shard(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="adapter: a built-in or an installed plug-in (see `gapeval models`)")
    parser.add_argument("--input", required=True, type=Path, help="a GeoTIFF or a folder of GeoTIFFs (low resolution)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (STEM.tif, STEM_std.tif)")
    parser.add_argument("--checkpoint", required=True, help="local file/folder, or hub id owner/name[:file] (needs network)")
    parser.add_argument("--device", type=device, default=None, help="cpu, cuda, cuda:1 …, or auto (default: cuda:$LOCAL_RANK / cuda when available, else cpu)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help="denoiser autocast precision (auto: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--steps", type=positive_int, default=None, help="denoising steps (default: per model)")
    parser.add_argument("--eta", type=nonnegative_float, default=None, help="DDIM eta (default: per model)")
    parser.add_argument("--sampler", default=None, help="sampler where a model offers a choice (sr3: ddim|ddpm)")
    parser.add_argument("--temperature", type=nonnegative_float, default=1.0, help="scale of the per-step DDIM noise (ldsr-s2)")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="run seed; each tile's noise derives from it (default 0)")
    parser.add_argument("--samples", type=positive_int, default=1, help="stochastic samples per input; >1 writes the mean and a per-pixel std GeoTIFF")
    parser.add_argument("--tile", type=positive_int, default=None, help="low-resolution tile side in px (default: per model)")
    parser.add_argument("--overlap", type=nonnegative_int, default=16, help="tile overlap in low-resolution px, blended with raised-cosine ramps (default 16)")
    parser.add_argument("--batch", type=_batch, default=None, help="tiles per batch or 'auto' (16 on CUDA, 1 on CPU); halved on out-of-memory")
    parser.add_argument("--bands", default=None, help="band order of the input files (preset such as s2-rgbn, s2-10m, s2-l1c-13, or B02,B03,…); default: the files' band descriptions")
    parser.add_argument("--scale", type=positive_float, default=None, help="reflectance = (pixel + offset) / scale: 10000 for Sentinel-2/PlanetScope DN (default: the files' scale metadata, else the pixels as they are)")
    parser.add_argument("--offset", type=finite_float, default=0.0, help="added to pixels before --scale (-1000 for Sentinel-2 products of processing baseline >= 04.00)")
    hm = parser.add_mutually_exclusive_group()
    hm.add_argument("--histogram-match", dest="histogram_match", action="store_true", default=None, help="match each output band's histogram to the LR input (default on for ldsr-s2 only)")
    hm.add_argument("--no-histogram-match", dest="histogram_match", action="store_false")
    parser.add_argument("--nir-fallback", default="bicubic", choices=NIR_FALLBACKS, help="RGB-only models: add B08 as bicubic x4 of the input (tagged), or leave it out")
    parser.add_argument("--rgb-gain", type=positive_float, default=None, help="RGB models: reflectance x gain -> [0, 1] (default 3.0)")
    parser.add_argument("--guidance", type=nonnegative_float, default=None, help="sd-x4-upscaler: classifier-free guidance scale")
    parser.add_argument("--noise-level", type=number(int, 0, 350), default=None, help="sd-x4-upscaler: noise added to the LR input (0..350, default 20)")
    parser.add_argument("--prompt", default=None, help="sd-x4-upscaler: text prompt (needs transformers and the text encoder)")
    parser.add_argument("--prompt-embeds", default=None, help="sd-x4-upscaler: safetensors with prompt_embeds [negative_prompt_embeds]")
    parser.add_argument("--num-head-channels", type=positive_int, default=None, help="ldsr-s2: channels per attention head (not in LDM checkpoints; default 32)")
    parser.add_argument("--use-ema", action="store_true", help="ldsr-s2: use the checkpoint's EMA denoiser weights")
    parser.add_argument("--shard", type=shard_arg, default=(0, 1), help="k/n: process files k, k+n, … of the sorted inputs; 'auto' reads RANK/WORLD_SIZE (torchrun, accelerate)")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs written by a different run")
    parser.add_argument("--no-tile-cache", dest="tile_cache", action="store_false", help="do not keep finished tiles under OUT/.partial for resuming")


def run(args: argparse.Namespace) -> int:
    from gapeval.infer.registry import load_adapter

    try:
        get(args.model)
    except InputError as exc:
        print(f"gapeval infer: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    files = list_inputs(args.input)
    k, n = args.shard
    mine = select_shard(files, k, n)
    options = SamplingOptions(steps=args.steps, eta=args.eta, sampler=args.sampler, temperature=args.temperature, guidance=args.guidance,
                              noise_level=args.noise_level, prompt=args.prompt, prompt_embeds=args.prompt_embeds, rgb_gain=args.rgb_gain,
                              num_head_channels=args.num_head_channels, use_ema=args.use_ema)
    device = default_device() if args.device in (None, "auto") else args.device
    adapter, source = load_adapter(args.model, args.checkpoint, options, device=device, precision=args.precision)
    config = InferConfig(out=args.out, seed=args.seed, samples=args.samples, tile=args.tile, overlap=args.overlap, batch=args.batch,
                         bands=args.bands, scale=args.scale, offset=args.offset, histogram_match=args.histogram_match,
                         nir_fallback=args.nir_fallback, overwrite=args.overwrite, tile_cache=args.tile_cache)
    print(f"gapeval infer: {args.model} on {device} ({adapter.precision}), checkpoint sha256 {source.sha256[:12]}, "
          f"{len(mine)} of {len(files)} files (shard {k}/{n})")


    def report(result) -> None:
        extra = f" + {result.std.name}" if result.std else ""
        print(f"  {result.input.name} -> {result.output}{extra}: {result.status}"
              + (f" ({result.tiles_computed} tiles computed, {result.tiles_cached} from cache)" if result.status == "written" else ""))

    run_pipeline(adapter, source, config, mine, progress=report)
    return 0
