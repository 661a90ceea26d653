"""The shared pipeline with a cheap toy adapter: geometry, tags, nodata, determinism, samples, OOM back-off, resume, shards, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from infer_helpers import TRANSFORM, read, s2_dn, write_tif
from skimage.exposure import match_histograms as sk_match

from gapeval.degrade import histogram_match
from gapeval.infer.base import Adapter, batch_randn
from gapeval.infer.checkpoints import CheckpointSource, checkpoint_sha256
from gapeval.infer.pipeline import InferConfig, Pipeline, list_inputs, parse_shard, run, select_shard, tile_seed
from gapeval.infer.tiling import Tile
from lpips_sat.errors import InputError, MissingFileError, PartialFailure

BANDS = ("B04", "B03", "B02", "B08")


class Toy(Adapter):
    """Nearest x4 upsampling plus ``noise`` x per-tile Gaussian noise (identity when noise = 0)."""

    name, bands, size_multiple, default_tile = "toy", BANDS, 4, 16

    def __init__(self, noise: float = 0.01, bands=BANDS) -> None:
        super().__init__("cpu", "fp32")
        self.noise, self.bands, self.batches = noise, tuple(bands), []

    def settings(self) -> dict[str, str]:
        return {"steps": "0", "sampler": "toy", "noise": f"{self.noise:g}"}

    def sample(self, lr, generators):
        self.batches.append(lr.shape[0])
        up = lr.repeat_interleave(4, -1).repeat_interleave(4, -2)
        return up + self.noise * batch_randn(generators, up.shape[1:], self.device)


@pytest.fixture
def source(tmp_path: Path) -> CheckpointSource:
    f = tmp_path / "toy.safetensors"
    f.write_bytes(b"toy weights")
    return CheckpointSource(spec=str(f), path=f, sha256=checkpoint_sha256(f))


def config(out: Path, **kw) -> InferConfig:
    return InferConfig(out=out, **{"tile": 16, "overlap": 4, "scale": 10000.0, **kw})


def test_geometry_tags_and_identity(s2_tif: Path, source: CheckpointSource, tmp_path: Path) -> None:
    out = tmp_path / "sr"
    res = run(Toy(noise=0.0), source, config(out, seed=3), list_inputs(s2_tif.parent))
    assert [r.status for r in res] == ["written"] and res[0].std is None
    data, tags, transform, crs, desc = read(out / "scene.tif")
    assert data.shape == (4, 128, 128) and data.dtype == np.float32
    assert transform == TRANSFORM @ TRANSFORM.scale(0.25) and (transform.a, transform.e) == (2.5, -2.5) and transform.c == TRANSFORM.c
    assert crs.to_string() == "EPSG:32618" and desc == BANDS
    assert tags["model"] == "toy" and tags["checkpoint_sha256"] == source.sha256 and tags["seed"] == "3" and tags["steps"] == "0"
    assert tags["sampler"] == "toy" and tags["gapeval_version"] == "0.1.0" and tags["units"] == "reflectance"
    refl = s2_dn().astype(np.float32) * np.float32(1 / 10000) + np.float32(0)  # lpips_sat.raster.band_gain_offset's conversion
    expected = np.repeat(np.repeat(refl, 4, 1), 4, 2)
    assert np.array_equal(data, expected)  # identity model through tiles + blending: exact


def test_nodata_propagates(tmp_path: Path, source: CheckpointSource) -> None:
    dn = s2_dn(size=32)
    dn[:, 5:9, 10:20] = 0
    f = write_tif(tmp_path / "nd.tif", dn, nodata=0, descriptions=BANDS)
    run(Toy(noise=0.0), source, config(tmp_path / "sr"), [f])
    data = read(tmp_path / "sr" / "nd.tif")[0]
    hole = np.zeros((128, 128), bool)
    hole[20:36, 40:80] = True
    assert np.isnan(data[:, hole]).all() and np.isfinite(data[:, ~hole]).all()
    # the filled hole does not leak: pixels next to it equal the identity output
    assert np.allclose(data[:, 36:40, 40:80], dn[:, 9:10, 10:20].repeat(4, 1).repeat(4, 2) / 10000)


def test_same_seed_same_output_whatever_batch(s2_tif: Path, source: CheckpointSource, tmp_path: Path) -> None:
    outs = []
    for i, batch in enumerate((1, 3, 8)):
        run(Toy(), source, config(tmp_path / f"o{i}", seed=7, batch=batch), [s2_tif])
        outs.append(read(tmp_path / f"o{i}" / "scene.tif")[0])
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])
    run(Toy(), source, config(tmp_path / "other", seed=8), [s2_tif])
    assert not np.allclose(outs[0], read(tmp_path / "other" / "scene.tif")[0])


def test_tile_seeds_depend_only_on_tile() -> None:
    t = Tile(0, 16, 16, 16)
    assert tile_seed(1, "a", t, 0) == tile_seed(1, "a", Tile(0, 16, 16, 16), 0)
    seeds = {tile_seed(1, "a", t, 0), tile_seed(2, "a", t, 0), tile_seed(1, "b", t, 0), tile_seed(1, "a", Tile(4, 16, 16, 16), 0), tile_seed(1, "a", t, 1)}
    assert len(seeds) == 5


def test_samples_give_mean_and_std(s2_tif: Path, source: CheckpointSource, tmp_path: Path) -> None:
    run(Toy(noise=0.05), source, config(tmp_path / "sr", samples=5), [s2_tif])
    mean, tags, *_ = read(tmp_path / "sr" / "scene.tif")
    std, stags, *_ = read(tmp_path / "sr" / "scene_std.tif")
    assert std.shape == mean.shape and tags["samples"] == "5" and "standard deviation" in stags["kind"]
    ident = np.repeat(np.repeat(s2_dn() / 10000, 4, 1), 4, 2)
    # per pixel: 5 draws of N(identity, sigma_eff), sigma_eff <= 0.05 (blending averages overlapping tiles' noise)
    assert np.all(std[:, 20:40, 20:40] > 0) and 0.02 < np.median(std) < 0.06
    assert abs(float(np.mean(mean - ident))) < 0.002


def test_oom_halves_batch_and_keeps_results(s2_tif: Path, source: CheckpointSource, tmp_path: Path) -> None:
    toy = Toy()
    pipe = Pipeline(toy, source, config(tmp_path / "a", batch=8))
    real = pipe.sample_fn

    def flaky(lr, gens):
        if lr.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return real(lr, gens)

    pipe.sample_fn = flaky
    pipe.process(s2_tif)
    assert pipe.batch == 2 and max(toy.batches) <= 2
    run(Toy(), source, config(tmp_path / "b", batch=1), [s2_tif])
    assert np.array_equal(read(tmp_path / "a" / "scene.tif")[0], read(tmp_path / "b" / "scene.tif")[0])
    # a batch far above the tile count halves what failed, never retrying a chunk of the same size
    pipe3 = Pipeline(Toy(), source, config(tmp_path / "d", batch=1024))
    tried = []

    def record(lr, gens):
        tried.append(lr.shape[0])
        return flaky(lr, gens)

    pipe3.sample_fn = record
    pipe3.process(s2_tif)
    failed = [n for n in tried if n > 2]
    assert failed == sorted(set(failed), reverse=True) and pipe3.batch == 2
    pipe2 = Pipeline(Toy(), source, config(tmp_path / "c", batch=1))
    pipe2.sample_fn = lambda lr, gens: (_ for _ in ()).throw(RuntimeError("CUDA error: out of memory"))
    with pytest.raises(InputError, match="out of memory even with one"):
        pipe2.process(s2_tif)


def test_resume_after_interruption(s2_tif: Path, source: CheckpointSource, tmp_path: Path) -> None:
    out = tmp_path / "sr"
    pipe = Pipeline(Toy(), source, config(out, samples=2))
    calls = {"n": 0}
    real = pipe.sample_fn

    def interrupted(lr, gens):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        return real(lr, gens)

    pipe.sample_fn = interrupted
    with pytest.raises(KeyboardInterrupt):
        pipe.process(s2_tif)
    assert not (out / "scene.tif").exists() and len(list((out / ".partial" / "scene").glob("*.npy"))) == 5
    toy = Toy()
    result = run(toy, source, config(out, samples=2), [s2_tif])[0]
    assert result.tiles_cached == 5 and result.tiles_computed == 2 * 9 - 5 and sum(toy.batches) == 13
    assert not (out / ".partial" / "scene").exists()
    run(Toy(), source, config(tmp_path / "ref", samples=2), [s2_tif])
    assert np.array_equal(read(out / "scene.tif")[0], read(tmp_path / "ref" / "scene.tif")[0])
    again = Toy()
    assert run(again, source, config(out, samples=2), [s2_tif])[0].status == "skipped" and again.batches == []
    with pytest.raises(InputError, match="different run"):
        run(Toy(), source, config(out, samples=2, seed=99), [s2_tif])
    assert run(Toy(), source, config(out, samples=2, seed=99, overwrite=True), [s2_tif])[0].status == "written"


def test_stale_tile_cache_of_another_run_is_discarded(s2_tif: Path, source: CheckpointSource, tmp_path: Path) -> None:
    out = tmp_path / "sr"
    pipe = Pipeline(Toy(), source, config(out, seed=1))
    pipe.sample_fn = lambda lr, gens: (_ for _ in ()).throw(KeyboardInterrupt()) if pipe.adapter.batches else pipe.adapter.sample(lr, gens)
    with pytest.raises(KeyboardInterrupt):
        pipe.process(s2_tif)
    toy = Toy()
    res = run(toy, source, config(out, seed=2), [s2_tif])[0]
    assert res.tiles_cached == 0 and res.tiles_computed == 9


def test_shards_split_deterministically(monkeypatch: pytest.MonkeyPatch) -> None:
    files = [(f"f{i:02d}", Path(f"f{i:02d}.tif")) for i in range(11)]
    parts = [select_shard(list(reversed(files)), k, 3) for k in range(3)]
    assert sorted(p for part in parts for p in part) == files and all(not set(a) & set(b) for a in parts for b in parts if a is not b)
    assert parts[1] == [files[i] for i in (1, 4, 7, 10)]
    assert parse_shard("2/4") == (2, 4) and parse_shard(None) == (0, 1)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert parse_shard("auto") == (3, 8)
    for bad in ("4/4", "x", "1/0"):
        with pytest.raises(InputError):
            parse_shard(bad)


def test_rgb_model_gets_explicit_nir_fallback(s2_tif: Path, source: CheckpointSource, tmp_path: Path) -> None:
    rgb = Toy(noise=0.0, bands=("B04", "B03", "B02"))
    run(rgb, source, config(tmp_path / "a"), [s2_tif])
    data, tags, *_, desc = read(tmp_path / "a" / "scene.tif")
    assert desc == BANDS and "B08:bicubic" in tags["band_fallback"] and data.shape[0] == 4
    nir = s2_dn()[3] / 10000
    assert abs(float(data[3].mean()) - nir.mean()) < 1e-3 and not np.array_equal(data[3], np.repeat(np.repeat(nir, 4, 0), 4, 1))
    run(Toy(noise=0.0, bands=("B04", "B03", "B02")), source, config(tmp_path / "b", nir_fallback="none"), [s2_tif])
    data, tags, *_, desc = read(tmp_path / "b" / "scene.tif")
    assert desc == BANDS[:3] and tags["band_fallback"] == "none"


def test_band_order_from_flag_or_descriptions(tmp_path: Path, source: CheckpointSource) -> None:
    dn = s2_dn(bands=13, size=32)
    f = write_tif(tmp_path / "l1c.tif", dn, descriptions=("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"))
    run(Toy(noise=0.0), source, config(tmp_path / "a"), [f])
    data = read(tmp_path / "a" / "l1c.tif")[0]
    assert np.allclose(data[:, ::4, ::4], dn[[3, 2, 1, 7]] / 10000)
    g = write_tif(tmp_path / "plain.tif", dn[[1, 2, 3, 7]])  # B02,B03,B04,B08 without descriptions
    run(Toy(noise=0.0), source, config(tmp_path / "b", bands="s2-10m"), [g])
    assert np.allclose(read(tmp_path / "b" / "plain.tif")[0][:, ::4, ::4], dn[[3, 2, 1, 7]] / 10000)


def test_bad_inputs_have_clear_errors(tmp_path: Path, source: CheckpointSource) -> None:
    three = write_tif(tmp_path / "three.tif", s2_dn(bands=3))
    with pytest.raises(InputError, match=r"three.tif: has 3 bands .* needs 4"):
        run(Toy(), source, config(tmp_path / "o"), [three])
    rgb_named = write_tif(tmp_path / "rgb.tif", s2_dn(bands=3), descriptions=("B04", "B03", "B02"))
    with pytest.raises(InputError, match=r"rgb.tif: Band B08 is needed"):
        run(Toy(), source, config(tmp_path / "o"), [rgb_named])
    with pytest.raises(InputError, match="--bands declares 3 bands"):
        run(Toy(), source, config(tmp_path / "o", bands="B04,B03,B02"), [write_tif(tmp_path / "four.tif", s2_dn())])
    nogeo = write_tif(tmp_path / "nogeo.tif", s2_dn(), crs=None, transform=None, descriptions=BANDS)
    with pytest.raises(InputError, match="nogeo.tif: not georeferenced"):
        run(Toy(), source, config(tmp_path / "o"), [nogeo])
    refl = write_tif(tmp_path / "refl.tif", s2_dn() / 10000, dtype="float32", descriptions=BANDS)
    with pytest.raises(InputError, match=r"refl.tif: largest value .* implausibly small"):
        run(Toy(), source, config(tmp_path / "o"), [refl])
    with pytest.raises(InputError, match="pass --scale 10000"):
        run(Toy(), source, config(tmp_path / "o", scale=None), [write_tif(tmp_path / "dn.tif", s2_dn(), descriptions=BANDS)])
    with pytest.raises(MissingFileError):
        list_inputs(tmp_path / "missing")
    with pytest.raises(InputError, match="multiple of 4"):
        Pipeline(Toy(), source, config(tmp_path / "o", tile=18))


def test_folder_keys_mirror_relative_paths(tmp_path: Path, source: CheckpointSource) -> None:
    (tmp_path / "in" / "2023").mkdir(parents=True)
    write_tif(tmp_path / "in" / "2023" / "a.tif", s2_dn(), descriptions=BANDS)
    write_tif(tmp_path / "in" / "b.tif", s2_dn(seed=1), descriptions=BANDS)
    (tmp_path / "in" / "notes.png").write_bytes(b"")
    files = list_inputs(tmp_path / "in")
    assert [k for k, _ in files] == ["2023/a", "b"]
    run(Toy(), source, config(tmp_path / "o"), files)
    assert (tmp_path / "o" / "2023" / "a.tif").is_file() and (tmp_path / "o" / "b.tif").is_file()


def test_partial_failures_are_reported_after_the_others(tmp_path: Path, source: CheckpointSource) -> None:
    good = write_tif(tmp_path / "a_good.tif", s2_dn(), descriptions=BANDS)
    bad = write_tif(tmp_path / "b_bad.tif", s2_dn(bands=3))
    with pytest.raises(PartialFailure, match="1 of 2 files failed"):
        run(Toy(), source, config(tmp_path / "o"), [good, bad])
    assert (tmp_path / "o" / "a_good.tif").exists()


def test_histogram_matching_equals_skimage() -> None:
    rng = np.random.default_rng(0)
    img = rng.gamma(2.0, 0.05, (3, 40, 40)).astype(np.float32)
    ref = rng.normal(0.2, 0.05, (3, 10, 10)).astype(np.float32)
    ones_i, ones_r = np.ones((40, 40), bool), np.ones((10, 10), bool)
    got = histogram_match(img, ref, image_valid=ones_i, reference_valid=ones_r)
    expected = np.stack([sk_match(img[b], ref[b]) for b in range(3)])
    assert np.allclose(got, expected, atol=1e-6)
    mask = ones_i.copy()
    mask[:5] = False
    part = histogram_match(img, ref, image_valid=mask, reference_valid=ones_r)
    assert np.array_equal(part[:, :5], img[:, :5])
