"""LPIPS-Sat as a loss in a plain PyTorch super-resolution training loop.

    python docs/examples/plain_loop.py                              # shipped weights, minutes on a CPU
    LPIPS_SAT_EXAMPLE_TINY=1 python docs/examples/plain_loop.py     # tiny random metric, seconds

It prints a line with the elapsed time and an ETA after the first step and then at least every 20 s; the
expected run time is in docs/integration.md ("Running the examples").

The metric is a frozen, differentiable ``nn.Module``: gradients flow to the SR output only. Inputs are
reflectance (DN / 10000) in the metric's band order (R, G, B, NIR); the SR output is clamped to a plausible
reflectance range before the metric, because LPIPS-Sat refuses values that look like digital numbers (> 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from common import SIZE, STEPS, Progress, TinySR, make_metric, toy_pairs  # docs/examples/common.py


def main() -> dict[str, float]:
    torch.manual_seed(0)
    metric = make_metric()                      # frozen: requires_grad False, always in eval mode
    model = TinySR()
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    lr_val, hr_val = toy_pairs(4, seed=123)    # fixed validation batch
    lpips_weight = 1.0
    with torch.no_grad():                       # before training: the network is plain bilinear upsampling
        history = [float(metric(model(lr_val).clamp(0.0, 1.5), hr_val).mean())]
    print(f"training {STEPS} steps (batch 4, {SIZE} px, L1 + LPIPS-Sat, validation after each step)", flush=True)
    progress = Progress(STEPS, every=max(1, STEPS // 6))
    for step in range(STEPS):
        lr, hr = toy_pairs(4, seed=step)
        sr = model(lr)
        pixel = F.l1_loss(sr, hr)
        perceptual = metric(sr.clamp(0.0, 1.5), hr).mean()
        loss = pixel + lpips_weight * perceptual
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            val = float(metric(model(lr_val).clamp(0.0, 1.5), hr_val).mean())
        history.append(val)
        progress(step, f"l1 {pixel.item():.4f}  lpips-sat {perceptual.item():.4f}  val lpips-sat {val:.4f}")
    assert all(p.grad is None for p in metric.parameters()), "the metric must stay frozen"
    print(f"validation LPIPS-Sat: bilinear start {history[0]:.4f}, after {STEPS} steps {history[-1]:.4f}")
    return {"start": history[0], "end": history[-1]}


if __name__ == "__main__":
    main()
