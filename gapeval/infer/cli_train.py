"""``gapeval train sr3|resshift``: train the SR3 or (pixel-space) ResShift adapter on LR/HR GeoTIFF folders (resumable; safetensors)."""

from __future__ import annotations

import argparse
from pathlib import Path

from gapeval.infer.base import PRECISIONS
from lpips_sat.options import device, int_at_least, nonnegative_int, positive_float, positive_int


def _ints(text: str) -> tuple[int, ...]:
    values = tuple(nonnegative_int(v) for v in text.split(",") if v.strip())
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", choices=["sr3", "resshift"], help="model to train: sr3 (eps-prediction UNet) or resshift (pixel-space residual shifting, Swin-UNet)")
    parser.add_argument("--lr", required=True, type=Path, dest="lr_dir", help="folder of low-resolution GeoTIFFs")
    parser.add_argument("--hr", required=True, type=Path, dest="hr_dir", help="folder of high-resolution GeoTIFFs (same stems, x scale size)")
    parser.add_argument("--out", required=True, type=Path, help="checkpoint folder (resumes when it holds MODEL_state.safetensors)")
    parser.add_argument("--bands", default="B04,B03,B02,B08", help="bands the model uses (default B04,B03,B02,B08)")
    parser.add_argument("--input-bands", default=None, help="band order of the files when they carry no band descriptions")
    parser.add_argument("--scale", type=int_at_least(2), default=4, help="HR/LR pixel ratio (default 4)")
    parser.add_argument("--lr-scale", type=positive_float, default=None, help="LR reflectance = pixel / lr-scale, e.g. 10000 for DN (default: file scale metadata)")
    parser.add_argument("--hr-scale", type=positive_float, default=None, help="HR reflectance = pixel / hr-scale, e.g. 10000 for DN (default: file scale metadata)")
    parser.add_argument("--patch", type=positive_int, default=32, help="LR patch side in px (default 32)")
    parser.add_argument("--batch", type=positive_int, default=8, help="patches per step (default 8)")
    parser.add_argument("--steps", type=positive_int, default=10000, help="total optimisation steps (default 10000)")
    parser.add_argument("--save-every", type=positive_int, default=500, help="checkpoint interval in steps (default 500)")
    parser.add_argument("--learning-rate", type=positive_float, default=1e-4, help="AdamW learning rate (default 1e-4)")
    parser.add_argument("--width", type=positive_int, default=64, help="channels of the first UNet level (default 64)")
    parser.add_argument("--channel-mult", type=_ints, default=(1, 2, 2, 4), help="per-level channel multipliers (default 1,2,2,4)")
    parser.add_argument("--layers-per-block", type=positive_int, default=2, help="residual blocks per level (default 2)")
    parser.add_argument("--attention-levels", type=_ints, default=(3,), help="levels with self-attention (sr3) or Swin stages (resshift) (default 3)")
    parser.add_argument("--norm-groups", type=positive_int, default=32, help="GroupNorm groups (default 32)")
    parser.add_argument("--ref-max", type=positive_float, default=0.5, help="reflectance mapped to +1 (default 0.5)")
    parser.add_argument("--seed", type=nonnegative_int, default=0)
    parser.add_argument("--device", type=device, default=None, help="cpu, cuda, cuda:N, mps or auto (default: cuda when available, else cpu)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help="autocast precision (auto: bf16 on CUDA, fp32 on CPU)")


def run(args: argparse.Namespace) -> int:
    from gapeval.infer.pipeline import default_device
    from gapeval.infer.train import TrainConfig, train

    cfg = TrainConfig(lr_dir=args.lr_dir, hr_dir=args.hr_dir, out=args.out, bands=args.bands, input_bands=args.input_bands, scale=args.scale,
                      lr_scale=args.lr_scale, hr_scale=args.hr_scale, patch=args.patch, batch=args.batch, steps=args.steps,
                      save_every=args.save_every, learning_rate=args.learning_rate, width=args.width, channel_mult=args.channel_mult,
                      layers_per_block=args.layers_per_block, attention_levels=args.attention_levels, norm_groups=args.norm_groups,
                      ref_max=args.ref_max, seed=args.seed, model=args.model, device=default_device() if args.device in (None, "auto") else args.device, precision=args.precision)
    every = max(1, cfg.steps // 20)

    def progress(step: int, loss: float) -> None:
        if step % every == 0 or step == cfg.steps:
            print(f"  step {step}/{cfg.steps}  loss {loss:.4f}")

    path = train(cfg, progress)
    print(f"gapeval train {args.model}: wrote {path} (use: gapeval infer --model {args.model} --checkpoint {path} …)")
    return 0
