"""LPIPS-Sat registered as a loss in a BasicSR-style registry, built from an options dict (as parsed from YAML).

    python docs/examples/basicsr_registry.py
    LPIPS_SAT_EXAMPLE_TINY=1 python docs/examples/basicsr_registry.py

BasicSR builds losses with ``LOSS_REGISTRY.get(opt.pop("type"))(**opt)`` and calls them as
``loss(pred, target)``. ``common.Registry`` is a ten-line stand-in for ``basicsr.utils.registry.Registry``;
in a BasicSR project, decorate the same class with ``@LOSS_REGISTRY.register()`` from ``basicsr.utils.registry``
and put the options in the ``train:`` section of the YAML file:

    perceptual_opt:
      type: LPIPSSatLoss
      loss_weight: 0.1
      weights: lpips-sat-s2-rn18      # or a .safetensors path
      data_scale: 1.0                 # multiply network tensors by this to get reflectance (DN / 10000)
      bands: s2-rgbn                  # band order of the network tensors
"""

from __future__ import annotations

import torch
from torch import nn

from common import TINY, Registry, TinySR, make_metric, toy_pairs  # docs/examples/common.py

LOSS_REGISTRY = Registry("loss")


@LOSS_REGISTRY.register()
class LPIPSSatLoss(nn.Module):
    """LPIPS-Sat perceptual loss with BasicSR's ``loss_weight`` / ``reduction`` conventions.

    Args:
        loss_weight: factor on the loss.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over the batch.
        weights, bands: passed to :class:`lpips_sat.LPIPSSat`.
        data_scale: network tensors times this are reflectance (1.0 if the data pipeline keeps reflectance;
            e.g. 10000 / 3000 if it divides DN by 3000 instead of 10000).
        clamp: clamp predictions to this reflectance range first (early-training outputs can leave it).
    """

    def __init__(self, loss_weight: float = 1.0, reduction: str = "mean", weights: str | None = None, bands: str | None = None,
                 data_scale: float = 1.0, clamp: tuple[float, float] = (0.0, 1.5)) -> None:
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"Unsupported reduction {reduction!r}; use 'mean', 'sum' or 'none'")
        kwargs = {"bands": bands} if bands else {}
        if weights and not TINY:
            kwargs["weights"] = weights
        self.metric = make_metric(**kwargs)
        self.loss_weight, self.reduction, self.data_scale, self.clamp = loss_weight, reduction, data_scale, tuple(clamp)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        d = self.metric((pred * self.data_scale).clamp(*self.clamp), target * self.data_scale)
        if weight is not None:
            d = d * weight.reshape(-1)
        if self.reduction == "mean":
            d = d.mean()
        elif self.reduction == "sum":
            d = d.sum()
        return self.loss_weight * d


def build_loss(opt: dict) -> nn.Module:
    """BasicSR's ``build_loss``: look the type up in the registry and pass the remaining options."""
    opt = dict(opt)
    return LOSS_REGISTRY.get(opt.pop("type"))(**opt)


def main() -> float:
    torch.manual_seed(0)
    opt = {"type": "LPIPSSatLoss", "loss_weight": 0.1, "weights": "lpips-sat-s2-rn18", "data_scale": 2.0}
    criterion = build_loss(opt)
    net = TinySR()
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-4)
    lr, hr = toy_pairs(4, seed=5)
    lr, hr = lr / 2.0, hr / 2.0                  # a pipeline that stores reflectance / 2; data_scale undoes it
    loss = criterion(net(lr), hr)
    # independent check: the registered loss is loss_weight x the metric on reflectance
    direct = 0.1 * criterion.metric((net(lr) * 2.0).clamp(0.0, 1.5), hr * 2.0).mean()
    assert torch.allclose(loss, direct), (loss, direct)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    print(f"built {type(criterion).__name__} from {opt}; loss {loss.item():.5f} (= 0.1 x LPIPS-Sat {direct.item() / 0.1:.5f})")
    return float(loss.detach())


if __name__ == "__main__":
    main()
