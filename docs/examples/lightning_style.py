"""LPIPS-Sat in a Lightning-style module: loss in ``training_step``, running metric in ``validation_step``.

    python docs/examples/lightning_style.py
    LPIPS_SAT_EXAMPLE_TINY=1 python docs/examples/lightning_style.py

The class has the shape of a ``lightning.LightningModule`` (``training_step``, ``validation_step``,
``on_validation_epoch_end``, ``configure_optimizers``, ``self.log``) but derives from ``nn.Module`` so the
example runs without Lightning; ``fit`` below calls the hooks in the order ``lightning.Trainer`` does.
With Lightning installed, derive from ``lightning.LightningModule``, delete ``log``/``fit`` and call
``lightning.Trainer(max_epochs=...).fit(module, train_loader, val_loader)``.

Points that matter in a real Lightning project:
* the metric is a sub-module, so Lightning moves it to the GPU with the model; it stays in eval mode and
  frozen even though Lightning calls ``.train()`` on the whole module every epoch;
* optimise ``self.net.parameters()`` only (the metric's parameters have ``requires_grad=False`` anyway);
* the validation metric accumulates with ``LPIPSSatMetric`` and is reset at epoch end; with torchmetrics
  installed it is a ``torchmetrics.Metric``, so under DDP ``compute()`` sums ``total`` and ``n`` over all ranks
  itself (``self.log("val_lpips_sat", self.val_lpips)`` also works).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lpips_sat.running import LPIPSSatMetric

from common import STEPS, Progress, TinySR, make_metric, toy_pairs  # docs/examples/common.py


class SRModule(nn.Module):
    """x2 SR with an L1 + LPIPS-Sat objective and a running LPIPS-Sat validation score."""

    def __init__(self, lpips_weight: float = 1.0, lr: float = 3e-4) -> None:
        super().__init__()
        self.net = TinySR()
        self.lpips = make_metric()                       # loss: frozen, differentiable
        self.val_lpips = LPIPSSatMetric(self.lpips)     # shares the same network, accumulates over batches
        self.lpips_weight, self.lr = lpips_weight, lr
        self.logged: dict[str, float] = {}

    def log(self, name: str, value: torch.Tensor | float) -> None:  # stand-in for LightningModule.log
        self.logged[name] = float(value)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return self.net(lr)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        lr, hr = batch
        sr = self(lr)
        perceptual = self.lpips(sr.clamp(0.0, 1.5), hr).mean()
        loss = F.l1_loss(sr, hr) + self.lpips_weight * perceptual
        self.log("train_lpips_sat", perceptual.detach())
        return loss

    @torch.no_grad()
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        lr, hr = batch
        self.val_lpips.update(self(lr).clamp(0.0, 1.5), hr)

    def on_validation_epoch_end(self) -> None:
        self.log("val_lpips_sat", self.val_lpips.compute())
        self.val_lpips.reset()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.net.parameters(), lr=self.lr)


def fit(module: SRModule, train: DataLoader, val: DataLoader, epochs: int) -> list[float]:
    """The part of ``lightning.Trainer.fit`` this example needs: train/eval switching and hook order."""
    opt = module.configure_optimizers()
    scores = []
    progress = Progress(epochs * len(train), every=len(train))  # a line per epoch, and at least every 20 s
    for epoch in range(epochs):
        module.train()
        for i, batch in enumerate(train):
            loss = module.training_step(batch, i)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            progress(epoch * len(train) + i, f"epoch {epoch}  train_lpips_sat {module.logged['train_lpips_sat']:.4f}")
        module.eval()
        for i, batch in enumerate(val):
            module.validation_step(batch, i)
        module.on_validation_epoch_end()
        scores.append(module.logged["val_lpips_sat"])
        print(f"epoch {epoch}  train_lpips_sat {module.logged['train_lpips_sat']:.4f}  val_lpips_sat {scores[-1]:.4f}")
    return scores


def main() -> list[float]:
    torch.manual_seed(0)
    train = DataLoader(TensorDataset(*toy_pairs(4 * max(2, STEPS // 3), seed=1)), batch_size=4, shuffle=True)
    val = DataLoader(TensorDataset(*toy_pairs(6, seed=2)), batch_size=4)  # 6 samples: batches of 4 and 2
    module = SRModule()
    scores = fit(module, train, val, epochs=3)
    assert not module.lpips.training, "the metric stays in eval mode inside a training module"
    assert all(not p.requires_grad for p in module.lpips.parameters())
    return scores


if __name__ == "__main__":
    main()
