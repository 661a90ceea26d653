"""Hub model folders (lpips_sat.hub): save_pretrained -> from_pretrained round trips, integrity checks, the model
card's metadata, offline shipped weights, and push/download through a local HTTP hub (tests/fake_hub.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from lpips_sat import LPIPSSat
from lpips_sat.errors import MissingFileError, OfflineError, WeightsError
from lpips_sat.hub import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, hub_licence
from lpips_sat.registry import DEFAULT_NAME

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_hub import FakeHub, validate_card  # noqa: E402


def _pair(n: int = 2, size: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hr = torch.rand(n, 4, size, size, generator=g) * 0.3
    return (hr + 0.05 * torch.randn(hr.shape, generator=g)).clamp(0, 1), hr


def _yaml_block(text: str) -> dict:
    import yaml

    assert text.startswith("---\n")
    return yaml.safe_load(text[4:text.index("\n---\n", 4)])


def test_round_trip_gives_identical_distances_and_a_complete_folder(tmp_path) -> None:
    metric = LPIPSSat.random(seed=7, width_div=8)
    folder = metric.save_pretrained(tmp_path / "m", tags=["my-tag"], datasets=["someone/s2-pairs"])
    assert sorted(p.name for p in folder.iterdir()) == sorted([CARD_NAME, CONFIG_NAME, WEIGHTS_NAME])
    loaded = LPIPSSat.from_pretrained(folder)
    sr, hr = _pair()
    assert torch.equal(metric(sr, hr), loaded(sr, hr))
    # spatial maps: equal to float32 rounding (a reloaded copy's buffers may sit at other alignments, which can pick
    # another vector kernel for the last lanes; 6e-8 differences were seen)
    torch.testing.assert_close(metric(sr, hr, spatial=True), loaded(sr, hr, spatial=True), rtol=0, atol=1e-6)
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["bands"] == list(metric.model_bands) and config["arch"] == "resnet18" and config["width_div"] == 8
    assert config["mean"] == [0.1] * 4 and config["std"] == [0.1] * 4
    assert config["taps"] == ["stem", "layer1", "layer2", "layer3", "layer4"] and config["heads"] == "calibrated"
    assert config["lower_better"] is True and config["score_range"] == pytest.approx(list(metric.score_range))
    import hashlib

    assert config["sha256"] == hashlib.sha256((folder / WEIGHTS_NAME).read_bytes()).hexdigest()
    meta = _yaml_block((folder / CARD_NAME).read_text())
    assert meta["library_name"] == "lpips-sat" and meta["license"] == "other"  # random weights carry no licence text
    assert "my-tag" in meta["tags"] and "sentinel-2" in meta["tags"] and meta["datasets"] == ["someone/s2-pairs"]
    # options of the metric itself still apply after loading
    planet = LPIPSSat.from_pretrained(folder, bands="planetscope-4b")
    assert torch.equal(planet(sr[:, [2, 1, 0, 3]], hr[:, [2, 1, 0, 3]]), metric(sr, hr))


def test_huggingface_hub_reads_the_card_metadata(tmp_path) -> None:
    pytest.importorskip("huggingface_hub")
    from huggingface_hub import ModelCard

    folder = LPIPSSat.random(seed=1).save_pretrained(tmp_path, license="apache-2.0")
    card = ModelCard.load(folder / CARD_NAME)
    assert card.data.license == "apache-2.0" and card.data.library_name == "lpips-sat"
    assert "perceptual-metric" in card.data.tags and card.data.datasets == []


def test_shipped_weights_load_offline_by_name_and_survive_a_round_trip(tmp_path) -> None:
    shipped = LPIPSSat()
    by_name = LPIPSSat.from_pretrained(DEFAULT_NAME)
    assert by_name.sha256 == shipped.sha256 is not None
    folder = shipped.save_pretrained(tmp_path / "shipped")
    loaded = LPIPSSat.from_pretrained(folder)
    sr, hr = _pair(size=64)
    assert torch.equal(shipped(sr, hr), by_name(sr, hr))
    assert torch.equal(shipped(sr, hr), loaded(sr, hr))
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["mean"] == json.loads(shipped.metadata["mean"])  # the exact decimal values travel, not float32 copies
    card = (folder / CARD_NAME).read_text()
    assert _yaml_block(card)["license"] == "cc-by-4.0" and "s2_l1c_virginia_13band_10m.tif" in card
    assert validate_card(card) == []


def test_uncalibrated_heads_are_labelled_ones(tmp_path) -> None:
    metric = LPIPSSat.random(seed=2)
    with torch.no_grad():
        for h in metric.heads:
            h.fill_(1.0)
    folder = metric.save_pretrained(tmp_path)
    assert json.loads((folder / CONFIG_NAME).read_text())["heads"] == "ones"


def test_tampered_or_foreign_folders_are_refused(tmp_path) -> None:
    folder = LPIPSSat.random(seed=3).save_pretrained(tmp_path / "m")
    config_path = folder / CONFIG_NAME
    good = config_path.read_text()

    edited = json.loads(good)
    edited["bands"] = ["B02", "B03", "B04", "B08"]
    config_path.write_text(json.dumps(edited))
    with pytest.raises(WeightsError, match="bands"):
        LPIPSSat.from_pretrained(folder)

    edited = json.loads(good)
    edited["library_name"] = "something-else"
    config_path.write_text(json.dumps(edited))
    with pytest.raises(WeightsError, match="library_name"):
        LPIPSSat.from_pretrained(folder)

    config_path.write_text(good)
    data = bytearray((folder / WEIGHTS_NAME).read_bytes())
    data[-1] ^= 0xFF  # flip bits of the last tensor byte
    (folder / WEIGHTS_NAME).write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256"):
        LPIPSSat.from_pretrained(folder)

    config_path.unlink()
    with pytest.raises(MissingFileError, match=CONFIG_NAME):
        LPIPSSat.from_pretrained(folder)
    with pytest.raises(MissingFileError, match="neither"):
        LPIPSSat.from_pretrained(tmp_path / "does-not-exist")


def test_licence_ids_from_free_text() -> None:
    assert hub_licence("weights: CC-BY-4.0; contains modified Copernicus Sentinel data 2016") == "cc-by-4.0"
    assert hub_licence("Apache-2.0 (code); see SeCo release") == "apache-2.0"
    assert hub_licence("") == "other"


def test_unreachable_hub_is_an_offline_error(tmp_path, monkeypatch) -> None:
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError, match="owner/never-uploaded"):
        LPIPSSat.from_pretrained("owner/never-uploaded", cache_dir=tmp_path, local_files_only=True)


def test_push_to_hub_then_from_pretrained_over_http(tmp_path) -> None:
    """Upload and download through huggingface_hub's real HTTP client against a local server (tests/fake_hub.py)."""
    pytest.importorskip("huggingface_hub")
    pytest.importorskip("yaml")
    client = textwrap.dedent("""
        import json, sys, torch
        from lpips_sat import LPIPSSat
        metric = LPIPSSat.random(seed=5)
        url = metric.push_to_hub("someone/lpips-sat-test", token="hf_test_token", datasets=["someone/pairs"])
        loaded = LPIPSSat.from_pretrained("someone/lpips-sat-test", token="hf_test_token")
        g = torch.Generator().manual_seed(0)
        hr = torch.rand(2, 4, 48, 48, generator=g) * 0.3
        sr = (hr + 0.05 * torch.randn(hr.shape, generator=g)).clamp(0, 1)
        print(json.dumps({"url": url, "equal": bool(torch.equal(metric(sr, hr), loaded(sr, hr))), "name": loaded.name}))
    """)
    with FakeHub() as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1",
               "HF_HUB_OFFLINE": "0", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
        done = subprocess.run([sys.executable, "-c", client], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(done.stdout.strip().splitlines()[-1])
        uploaded = hub.repos["someone/lpips-sat-test"]
        requests = list(hub.requests)
    assert result["equal"] and result["name"] == "someone/lpips-sat-test"
    assert result["url"].startswith(hub.endpoint) and result["url"].endswith(hub.commits["someone/lpips-sat-test"])
    assert sorted(uploaded) == sorted([CARD_NAME, CONFIG_NAME, WEIGHTS_NAME])
    assert validate_card(uploaded[CARD_NAME].decode()) == []
    assert _yaml_block(uploaded[CARD_NAME].decode())["datasets"] == ["someone/pairs"]
    import hashlib

    assert json.loads(uploaded[CONFIG_NAME])["sha256"] == hashlib.sha256(uploaded[WEIGHTS_NAME]).hexdigest()
    # the download fetched exactly the two files the loader needs
    assert [p for m, p in requests if m == "GET"] == ["/someone/lpips-sat-test/resolve/main/config.json",
                                                      "/someone/lpips-sat-test/resolve/main/model.safetensors"]


def test_a_folder_is_accepted_wherever_weights_are(tmp_path, capsys) -> None:
    """``LPIPSSat(folder)`` and ``lpips-sat compare --weights folder`` load the folder (sha256 from its config)."""
    import numpy as np

    from lpips_sat.cli import main

    metric = LPIPSSat.random(seed=9)
    folder = metric.save_pretrained(tmp_path / "m")
    direct = LPIPSSat(folder)
    assert direct.sha256 == json.loads((folder / CONFIG_NAME).read_text())["sha256"]
    sr, hr = _pair(1, size=64)
    assert torch.equal(direct(sr, hr), metric(sr, hr))
    np.save(tmp_path / "a.npy", sr[0].numpy())
    np.save(tmp_path / "b.npy", hr[0].numpy())
    assert main(["compare", str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--weights", str(folder), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["distance"] == pytest.approx(float(metric(sr, hr)[0]), rel=1e-6) and out["sha256"] == direct.sha256


def test_info_checks_a_model_folder(tmp_path, capsys) -> None:
    from lpips_sat.cli import main

    folder = LPIPSSat.random(seed=4).save_pretrained(tmp_path / "m")
    assert main(["info", "--weights", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "random-resnet18-div8-seed4" in out and ": OK" in out
    data = bytearray((folder / WEIGHTS_NAME).read_bytes())
    data[-5] ^= 0x01
    (folder / WEIGHTS_NAME).write_bytes(bytes(data))
    assert main(["info", "--weights", str(folder)]) == 1
    captured = capsys.readouterr()
    assert "MISMATCH" in captured.out and "model folder failed" in captured.err
