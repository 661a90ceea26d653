"""Plug-in models through a real installed entry point: the docs/infer.md example, a broken import and a wrong return type."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from infer_helpers import TRANSFORM, infer_32px_tile, s2_dn, write_tif

from gapeval.cli import main
from gapeval.infer import registry

DOC = Path(__file__).resolve().parents[2] / "docs" / "infer.md"


def _doc_plugin_source() -> str:
    """The ``my_sr_plugin.py`` code block of docs/infer.md."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    (code,) = [b for b in blocks if b.startswith('"""my_sr_plugin.py')]
    return code


def _install(site: Path, dist: str, modules: dict[str, str], entry_points: dict[str, str]) -> None:
    """A minimal installed distribution: modules + ``NAME-0.1.dist-info`` with METADATA and entry_points.txt."""
    for name, code in modules.items():
        (site / f"{name}.py").write_text(code)
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[gapeval.adapters]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    _install(site, "my_sr_plugin", {"my_sr_plugin": _doc_plugin_source()}, {"my-esrgan": "my_sr_plugin:factory"})
    _install(site, "bad_plugins", {"bad_plugin": "def factory(source, options, device='cpu', precision='auto'):\n    return 'not an adapter'\n"},
             {"wrong-type": "bad_plugin:factory", "broken-import": "no_such_module_for_gapeval:factory", "sr3": "bad_plugin:factory"})
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(registry, "_PLUGINS", None)
    yield site
    for name in ("my_sr_plugin", "bad_plugin"):
        sys.modules.pop(name, None)


def test_plugins_listed_and_broken_ones_reported_by_name(plugins: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("ldsr-s2", "ldm-sr-x4", "sd-x4-upscaler", "resshift", "sr3", "my-esrgan", "wrong-type"):
        assert re.search(rf"^{re.escape(name)}\s", out, flags=re.M), name
    assert re.search(r"^broken-import\s+BROKEN plug-in: .*ModuleNotFoundError", out, flags=re.M)
    assert re.search(r"^sr3\s+BROKEN plug-in: .*built-in", out, flags=re.M)
    assert "ESRGAN-style generator" in out
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows if "broken" not in r][:5] == ["ldsr-s2", "ldm-sr-x4", "sd-x4-upscaler", "resshift", "sr3"]
    assert {r["name"] for r in rows if "broken" in r} == {"broken-import", "sr3"}
    assert main(["models", "my-esrgan"]) == 0 and "my_sr_plugin:factory from my_sr_plugin 0.1" in capsys.readouterr().out


def test_plugin_runs_through_gapeval_infer(plugins: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import my_sr_plugin
    from safetensors.torch import save_file

    torch.manual_seed(0)
    ckpt = tmp_path / "my_esrgan.safetensors"
    save_file({k: v.contiguous() for k, v in my_sr_plugin.TinyRRDBNet().state_dict().items()}, str(ckpt))
    data, tags, transform, crs, _ = infer_32px_tile(tmp_path, "my-esrgan", ckpt, seed=1)
    assert data.shape == (4, 128, 128) and np.isfinite(data).all() and tags["model"] == "my-esrgan" and tags["sampler"].startswith("none")
    assert transform == TRANSFORM @ TRANSFORM.scale(0.25) and crs.to_string() == "EPSG:32618"
    # the pipeline output is the network applied to the tile (one 32 px tile, no overlap, no histogram matching)
    lr = torch.from_numpy(s2_dn(size=32, seed=1) / 10000.0).float()[None]
    adapter = registry.get("my-esrgan").load(registry.get("my-esrgan").resolve_checkpoint(str(ckpt)), None)
    assert np.allclose(data, adapter.sample(lr, [torch.Generator()])[0].numpy(), atol=1e-5)
    capsys.readouterr()


def test_broken_plugins_fail_by_name_without_breaking_builtins(plugins: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    lr_dir = tmp_path / "lr"
    lr_dir.mkdir()
    scene = write_tif(lr_dir / "tile.tif", s2_dn(size=32), descriptions=("B04", "B03", "B02", "B08"))
    ckpt = tmp_path / "any.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(ckpt))
    args = ["--input", str(scene), "--out", str(tmp_path / "o"), "--checkpoint", str(ckpt), "--device", "cpu"]
    assert main(["infer", "--model", "broken-import", *args]) == 2
    assert re.search(r"plug-in model 'broken-import' is broken: .*ModuleNotFoundError", capsys.readouterr().err)
    assert main(["infer", "--model", "wrong-type", *args]) == 1
    assert re.search(r"plug-in model 'wrong-type' .*returned str, not a gapeval.infer.base.Adapter", capsys.readouterr().err)
    assert main(["infer", "--model", "nope", *args]) == 2 and "Unknown model 'nope'" in capsys.readouterr().err
    assert registry.get("sr3") is registry.ADAPTERS["sr3"]  # a plug-in cannot shadow a built-in
