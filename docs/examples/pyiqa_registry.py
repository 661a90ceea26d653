"""LPIPS-Sat registered the way pyiqa (IQA-PyTorch) registers its metrics, and built by name.

    python docs/examples/pyiqa_registry.py
    LPIPS_SAT_EXAMPLE_TINY=1 python docs/examples/pyiqa_registry.py

pyiqa keeps two tables: ``ARCH_REGISTRY`` (``pyiqa.utils.registry``; class name -> network class, filled by
``@ARCH_REGISTRY.register()``) and ``DEFAULT_CONFIGS`` (``pyiqa.default_model_configs``; metric name -> options,
``metric_mode`` "FR"/"NR", ``lower_better``, ``score_range``). ``pyiqa.create_metric(name)`` builds
``ARCH_REGISTRY.get(metric_opts["type"])(**other metric_opts)`` inside its ``InferenceModel`` wrapper, copies
``lower_better`` and ``score_range`` onto it, keeps the network as ``.net`` and calls ``net(target, ref)``.
The stand-ins below have exactly that shape, so the example runs without pyiqa; in a project with pyiqa, import
``ARCH_REGISTRY`` and ``DEFAULT_CONFIGS`` from pyiqa instead and keep the rest.

pyiqa's wrapper checks its inputs before the network sees them: 1 or 3 channels, values in [0, 1] (pyiqa's
``InferenceModel.is_valid_input``). The shipped LPIPS-Sat needs 4 bands (R, G, B, NIR), so call the built
network directly, ``metric.net(sr, hr)``, as done here; ``normalize=True`` declares pyiqa's [0, 1] inputs to
be reflectance 0..1.
"""

from __future__ import annotations

import torch
from torch import nn

from common import TINY, Registry, make_metric, toy_pairs  # docs/examples/common.py

ARCH_REGISTRY = Registry("arch")
DEFAULT_CONFIGS: dict[str, dict] = {}


@ARCH_REGISTRY.register()
class LPIPSSatArch(nn.Module):
    """pyiqa-style full-reference network: ``forward(target, ref)`` -> (N,) distances, lower is better."""

    def __init__(self, weights: str = "lpips-sat-s2-rn18", bands: str | None = None, normalize: bool | None = True) -> None:
        super().__init__()
        kwargs = {"bands": bands} if bands else {}
        if not TINY:
            kwargs["weights"] = weights
        self.metric = make_metric(normalize=normalize, **kwargs)

    def forward(self, target: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return self.metric(target, ref)


def register_defaults() -> None:
    """The ``DEFAULT_CONFIGS`` entry; ``score_range`` is pyiqa's "low, high" string, here the metric's proven bound."""
    low, high = LPIPSSatArch().metric.score_range
    DEFAULT_CONFIGS["lpips_sat"] = {
        "metric_opts": {"type": "LPIPSSatArch", "weights": "lpips-sat-s2-rn18", "normalize": True},
        "metric_mode": "FR",
        "lower_better": True,
        "score_range": f"{low:g}, {high:.4g}",
    }


class InferenceModel(nn.Module):
    """What ``pyiqa.create_metric`` returns, reduced to the parts that matter here."""

    def __init__(self, metric_name: str, **kwargs) -> None:
        super().__init__()
        config = DEFAULT_CONFIGS[metric_name]
        self.lower_better = config.get("lower_better", False)
        self.score_range = config.get("score_range")
        self.metric_mode = config["metric_mode"]
        opts = {**config["metric_opts"], **kwargs}
        self.net = ARCH_REGISTRY.get(opts.pop("type"))(**opts).eval()

    def forward(self, target: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        if target.shape[1] not in (1, 3):  # pyiqa's own input check
            raise AssertionError("Input must be RGB or gray image")
        return self.net(target, ref)


def main() -> dict:
    register_defaults()
    iqa = InferenceModel("lpips_sat")
    lr, hr = toy_pairs(3, seed=9)
    sr = torch.nn.functional.interpolate(lr, scale_factor=2, mode="bilinear", align_corners=False).clamp(0, 1)
    try:
        iqa(sr, hr)
        raise SystemExit("pyiqa's wrapper was expected to refuse 4-band input")
    except AssertionError:
        pass
    d = iqa.net(sr, hr)  # 4 bands: straight to the registered network
    direct = make_metric()(sr, hr)  # independent check: [0, 1] inputs with normalize=True are reflectance as given
    assert torch.allclose(d, direct), (d, direct)
    print(f"pyiqa-style 'lpips_sat': lower_better={iqa.lower_better}, score_range='{iqa.score_range}', "
          f"bilinear x2 distances {[round(float(v), 4) for v in d]}")
    return {"lower_better": iqa.lower_better, "score_range": iqa.score_range, "distances": d.tolist()}


if __name__ == "__main__":
    main()
