#!/usr/bin/env python3
"""Lever of the v5 registration: crop the border a shift exposes, or keep the full image (an exposed strip taking the other image's pixels)?
Measured with v4's backbone and heads on judgments of the held-out scenes that involve a held-out family.

    python scripts/exp_register_crop.py --data ../shared/data --out runs/v5/crop_lever.json

Prints one line for the model card's "What we learned" (``ship_weights.py --learned``) and writes the numbers as JSON.
The registration is :func:`lpips_sat.register.register`; the cropped variants cut ``m`` px from both registered images.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lpips_sat.register import crop
from lpips_sat.train.calibrate import Featurizer, Triplets, _load_compared, _split_specs, involves, make_judgments, twoafc
from lpips_sat.train.data import CropSampler, Source, load_source, reference_scenes
from lpips_sat.train.distortions import MARGIN

PATCH = 64


class _Cropped(Featurizer):
    """The registering featuriser, with ``m`` px cropped from both registered images before the backbone."""

    def __init__(self, base: Featurizer, m: int) -> None:
        super().__init__(base.backbone, base.mean.flatten().tolist(), base.std.flatten().tolist(), base.input_norm, base.floor, base.texture, 3.0)
        self.m = m

    def _taps(self, z: torch.Tensor) -> list[torch.Tensor]:
        return super()._taps(crop(z, self.m))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=400, help="judgments per scene set and kind")
    args = ap.parse_args()
    torch.set_num_threads(1)
    v4 = _load_compared("lpips-sat-s2-rn18-v4")
    base = v4.featurizer
    feats = {"unregistered": base, "registered, full size": Featurizer(base.backbone, base.mean.flatten().tolist(), base.std.flatten().tolist(),
                                                                          base.input_norm, base.floor, True, 3.0)}
    feats.update({f"registered, {m} px cropped": _Cropped(base, m) for m in (3, 4)})
    scenes = {"eo-learn scenes": reference_scenes(args.data / "s2" / "s2_l1c_reference_scenes.npy"),
              "Accra": [load_source(Source.parse(f"{args.data}/s2_world/s2_l2a_accra_T30NZM_20240407_10m.tif:s2-l2a-7scl:10000:1000"))[0].data]}
    n_, d_, _, hn, hd = _split_specs("v2")["heldout_families"]
    out: dict = {}
    for label, imgs in scenes.items():
        sampler = CropSampler(imgs, PATCH + 2 * MARGIN, 5)
        a = make_judgments(sampler, args.n, n_, hd, hd, feats, 20, baselines=False)
        b = make_judgments(sampler, args.n, hn, d_, hn, feats, 30, baselines=False)
        for name in feats:
            t = Triplets.cat([a[name], b[name]])
            score = lambda s: twoafc(s.d0 @ v4.heads, s.d1 @ v4.heads, s.p)  # noqa: E731
            out.setdefault(label, {})[name] = {"all": score(t), **{f: score(t.subset(involves(t, [f]))) for f in ("shift", "noise", "jpeg", "seams")}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    parts = []
    for label, rows in out.items():
        parts.append(f"{label}: " + "; ".join(f"{name} {100 * r['all']:.1f} (shift {100 * r['shift']:.0f}, noise {100 * r['noise']:.0f}, jpeg {100 * r['jpeg']:.0f})"
                                               for name, r in rows.items()))
    print("**Crop or fill?** Registration with the border a shift exposes cropped from both images, against the full-size form"
          f" (both images moved halfway, an exposed strip taking the other image's pixels); v4's backbone and heads, {2 * args.n} judgments per scene set involving a held-out"
          " family (2AFC %, `scripts/exp_register_crop.py`): " + ". ".join(parts) + ". The ResNet's strided stem is not"
          " shift-invariant, so a crop also changes what it sees of unshifted pairs; v5 keeps the full size.")


if __name__ == "__main__":
    main()
