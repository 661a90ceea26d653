"""Every adapter end to end on a small GeoTIFF with tiny random weights in its real checkpoint format (CPU, no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel, UNet2DModel, VQModel
from infer_helpers import TRANSFORM, read, s2_dn, write_tif

from gapeval.cli import main
from gapeval.infer import resshift as rs
from gapeval.infer.base import SamplingOptions
from gapeval.infer.checkpoints import save_safetensors
from gapeval.infer.registry import load_adapter
from gapeval.infer.sr3 import build_unet, model_config, unet_config
from gapeval.infer.swin_unet import SwinUNet, SwinUNetConfig
from lpips_sat.errors import MissingFileError, OfflineError, WeightsError

RGBN = ("B04", "B03", "B02", "B08")
TINY_SWIN = SwinUNetConfig(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, swin_levels=(1,), swin_depth=2, swin_embed_dim=16,
                           num_head_channels=8, window_size=4, image_size=16, norm_groups=8)


def _tiny_vq(seed: int) -> VQModel:
    torch.manual_seed(seed)
    return VQModel(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                   block_out_channels=(16, 16, 16), layers_per_block=1, latent_channels=3, num_vq_embeddings=32, norm_num_groups=8)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory, ldsr_ckpt: Path) -> dict[str, Path]:
    """Tiny random checkpoints of all five adapters, each in the format users pass to --checkpoint."""
    root = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    ldm = root / "ldm-sr"
    UNet2DModel(in_channels=6, out_channels=3, block_out_channels=(16, 32), layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8, norm_num_groups=8).save_pretrained(ldm / "unet")
    _tiny_vq(1).save_pretrained(ldm / "vqvae")
    DDIMScheduler(beta_start=0.0015, beta_end=0.0155, beta_schedule="scaled_linear", clip_sample=False).save_pretrained(ldm / "scheduler")

    sd = root / "sd-x4"
    torch.manual_seed(2)
    UNet2DConditionModel(in_channels=7, out_channels=4, block_out_channels=(16, 32), layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                         up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16, attention_head_dim=8, norm_num_groups=8,
                         num_class_embeds=1000).save_pretrained(sd / "unet")
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                  block_out_channels=(16, 16, 16), layers_per_block=1, latent_channels=4, norm_num_groups=8, scaling_factor=0.08333).save_pretrained(sd / "vae")
    DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.0001, beta_end=0.02, prediction_type="v_prediction", clip_sample=False).save_pretrained(sd / "scheduler")
    DDPMScheduler(beta_schedule="linear", num_train_timesteps=1000).save_pretrained(sd / "low_res_scheduler")
    (sd / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionUpscalePipeline", "max_noise_level": 350}))

    torch.manual_seed(3)
    swin = SwinUNet(TINY_SWIN)
    res = root / "resshift.safetensors"
    rs.save_checkpoint(res, swin, _tiny_vq(4), rs.ShiftSchedule(steps=4))

    torch.manual_seed(5)
    cfg = model_config(RGBN, 4, unet_config(4, width=16, mult=(1, 2), layers=1, attention_levels=(1,), norm_groups=8, head_channels=8))
    sr3 = root / "sr3.safetensors"
    save_safetensors(sr3, {f"unet.{k}": v for k, v in build_unet(cfg).state_dict().items()}, {"model": "sr3", "config": json.dumps(cfg)})
    return {"ldsr-s2": ldsr_ckpt, "ldm-sr-x4": ldm, "sd-x4-upscaler": sd, "resshift": res, "sr3": sr3}


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("lr")
    return write_tif(folder / "scene.tif", s2_dn(size=24, seed=4), descriptions=RGBN)


def _infer(model: str, ckpt: Path, scene: Path, out: Path, seed: int = 5, samples: int = 2, extra: tuple[str, ...] = ()) -> int:
    return main(["infer", "--model", model, "--input", str(scene), "--out", str(out), "--checkpoint", str(ckpt), "--steps", "2", "--tile", "16",
                 "--overlap", "4", "--seed", str(seed), "--samples", str(samples), "--device", "cpu", "--batch", "4", "--scale", "10000", *extra])


@pytest.mark.parametrize("model", ["ldsr-s2", "ldm-sr-x4", "sd-x4-upscaler", "resshift", "sr3"])
def test_end_to_end(model: str, ckpts: dict[str, Path], scene: Path, tmp_path: Path) -> None:
    assert _infer(model, ckpts[model], scene, tmp_path / "a") == 0
    data, tags, transform, crs, desc = read(tmp_path / "a" / "scene.tif")
    std, *_ = read(tmp_path / "a" / "scene_std.tif")
    assert data.shape == (4, 96, 96) and desc == RGBN and std.shape[1:] == (96, 96)
    assert transform == TRANSFORM @ TRANSFORM.scale(0.25) and crs.to_string() == "EPSG:32618"
    assert tags["model"] == model and tags["steps"] == "2" and tags["seed"] == "5" and tags["samples"] == "2" and tags["sampler"]
    assert len(tags["checkpoint_sha256"]) == 64 and tags["gapeval_version"]
    assert np.isfinite(data).all() and np.isfinite(std).all() and (std > 0).mean() > 0.5
    assert _infer(model, ckpts[model], scene, tmp_path / "b") == 0
    assert np.array_equal(read(tmp_path / "b" / "scene.tif")[0], data)  # same seed -> same output
    assert _infer(model, ckpts[model], scene, tmp_path / "c", seed=6) == 0
    assert not np.allclose(read(tmp_path / "c" / "scene.tif")[0][:3], data[:3])  # another seed -> another output


@pytest.mark.parametrize("model", ["ldsr-s2", "ldm-sr-x4", "sd-x4-upscaler", "resshift", "sr3"])
def test_tile_output_independent_of_batch_composition(model: str, ckpts: dict[str, Path]) -> None:
    adapter, _ = load_adapter(model, str(ckpts[model]), SamplingOptions(steps=2))
    lr = torch.rand(3, len(adapter.bands), 16, 16) * 0.25
    gens = lambda idx: [torch.Generator().manual_seed(100 + i) for i in idx]
    together = adapter.sample(lr, gens([0, 1, 2]))
    alone = torch.cat([adapter.sample(lr[[2]], gens([2])), adapter.sample(lr[[0, 1]], gens([0, 1]))])
    assert torch.allclose(together[[2, 0, 1]], alone, atol=1e-4)


def test_ldm_sr_matches_the_diffusers_pipeline(ckpts: dict[str, Path]) -> None:
    from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion_superresolution import LDMSuperResolutionPipeline

    adapter, _ = load_adapter("ldm-sr-x4", str(ckpts["ldm-sr-x4"]), SamplingOptions(steps=3, eta=0.0))
    pipe = LDMSuperResolutionPipeline(vqvae=adapter.vqvae, unet=adapter.unet, scheduler=adapter.scheduler)
    pipe.set_progress_bar_config(disable=True)
    lr = torch.rand(1, 3, 16, 16) * 0.3
    ref = pipe(image=lr * 3.0 * 2 - 1, num_inference_steps=3, eta=0.0, generator=torch.Generator().manual_seed(9), output_type="pt").images
    mine = adapter.sample(lr, [torch.Generator().manual_seed(9)])
    assert torch.allclose(torch.as_tensor(ref), mine * 3.0, atol=1e-5)


def test_sd_upscaler_conditioning(ckpts: dict[str, Path], tmp_path: Path) -> None:
    """Guided sampling feeds [uncond, cond] embeddings, the noise level as class label and the noised LR image."""
    emb = tmp_path / "emb.safetensors"
    pos, neg = torch.randn(1, 77, 16), torch.randn(1, 77, 16)
    save_safetensors(emb, {"prompt_embeds": pos, "negative_prompt_embeds": neg}, {})
    adapter, _ = load_adapter("sd-x4-upscaler", str(ckpts["sd-x4-upscaler"]), SamplingOptions(steps=2, guidance=4.0, noise_level=50, prompt_embeds=str(emb)))
    assert adapter.settings()["text_embedding"] == "prompt" and adapter.settings()["guidance"] == "4"
    calls = []
    real = adapter.unet.forward
    adapter.unet.forward = lambda x, t, encoder_hidden_states, class_labels: (calls.append((x, encoder_hidden_states, class_labels)), real(x, t, encoder_hidden_states=encoder_hidden_states, class_labels=class_labels))[1]
    lr = torch.rand(1, 3, 16, 16) * 0.3
    adapter.sample(lr, [torch.Generator().manual_seed(1)])
    x, e, c = calls[0]
    assert x.shape == (2, 7, 16, 16) and torch.equal(e[0], neg[0]) and torch.equal(e[1], pos[0]) and c.tolist() == [50, 50]
    g = torch.Generator().manual_seed(1)
    noise = torch.randn((1, 3, 16, 16), generator=g)
    expected_img = adapter.low_res_scheduler.add_noise(lr * 3.0 * 2 - 1, noise, torch.tensor([50]))
    assert torch.allclose(x[0, 4:], expected_img[0], atol=1e-6) and torch.equal(x[0, 4:], x[1, 4:])
    plain, _ = load_adapter("sd-x4-upscaler", str(ckpts["sd-x4-upscaler"]), SamplingOptions(steps=2))
    assert plain.settings()["text_embedding"] == "zeros" and plain.guidance == 1.0 and not plain.prompt_embeds.any()


def test_resshift_schedule_and_one_step(ckpts: dict[str, Path]) -> None:
    s = rs.ShiftSchedule(steps=15, kappa=2.0, min_noise_level=0.04, etas_end=0.99, power=0.3)
    eta = s.etas()
    assert np.isclose(np.sqrt(eta[0]), 0.02) and np.isclose(np.sqrt(eta[-1]), 0.99) and np.all(np.diff(eta) > 0)
    t = np.arange(1, 16)  # Eq. 10 of Yue et al. 2023, written independently
    assert np.allclose(np.sqrt(eta), 0.02 * (0.99 / 0.02) ** (((t - 1) / 14) ** 0.3))
    assert rs.step_indices(15, 1) == [14] and rs.step_indices(15, 15) == list(range(14, -1, -1)) and rs.step_indices(4, 2) == [3, 0]
    one, _ = load_adapter("resshift", str(ckpts["resshift"]), SamplingOptions(steps=1))
    assert one.settings()["sampler"] == "resshift-one-step"
    calls = []
    real = one.unet.forward
    one.unet.forward = lambda x, t, lq: (calls.append(t.tolist()), real(x, t, lq))[1]
    out = one.sample(torch.rand(1, 3, 16, 16) * 0.3, [torch.Generator().manual_seed(0)])
    assert calls == [[3]] and out.shape == (1, 3, 64, 64)
    with pytest.raises(Exception, match="--steps must lie in 1..4"):
        load_adapter("resshift", str(ckpts["resshift"]), SamplingOptions(steps=5))


def test_swin_shift_mask_is_upstreams() -> None:
    """ResShift's mask, derived by hand for 8x8 tokens, window 4, shift 2: the top windows hold one row band; in the bottom
    windows rows 4-5 and 6-7 are two bands, and token i carries the band of in-window row i % 4 (column-major labels)."""
    from gapeval.infer.swin_unet import shift_mask

    mask = shift_mask(8, 8, 4, 2)
    assert mask.shape == (4, 16, 16) and (mask[:2] == 0).all()
    band = torch.arange(16) % 4 >= 2
    expected = torch.where(band[:, None] != band[None, :], -100.0, 0.0)
    assert torch.equal(mask[2], expected) and torch.equal(mask[3], expected)


def test_checkpoint_errors(ckpts: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MissingFileError, match="does not exist"):
        load_adapter("ldsr-s2", str(tmp_path / "nope.ckpt"), SamplingOptions())
    with pytest.raises(WeightsError, match="not an LDSR-S2"):
        load_adapter("ldsr-s2", str(ckpts["sr3"]), SamplingOptions())
    with pytest.raises(WeightsError, match="not 'resshift'|for model 'sr3'"):
        load_adapter("resshift", str(ckpts["sr3"]), SamplingOptions())
    with pytest.raises(WeightsError, match="needs a diffusers folder"):
        load_adapter("ldm-sr-x4", str(ckpts["sr3"]), SamplingOptions())
    state = torch.load(ckpts["ldsr-s2"], weights_only=True)["state_dict"]
    state["model.diffusion_model.out.2.weight"] = torch.zeros(4, 16, 3, 3)
    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": state}, bad)
    with pytest.raises(WeightsError, match="shape mismatch"):
        load_adapter("ldsr-s2", str(bad), SamplingOptions())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError, match="pass the local file or folder"):
        load_adapter("ldm-sr-x4", "nobody-here/no-such-model", SamplingOptions())


def test_cli_exit_codes(ckpts: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    three = write_tif(tmp_path / "three.tif", s2_dn(bands=3, size=24))
    assert _infer("ldsr-s2", ckpts["ldsr-s2"], three, tmp_path / "o", samples=1) == 1
    assert "three.tif" in capsys.readouterr().err
    assert main(["models"]) == 0 and "ldsr-s2" in capsys.readouterr().out
    assert main(["models", "--json"]) == 0 and len(json.loads(capsys.readouterr().out)) == 5
    assert main(["infer", "--model", "nope", "--input", "x", "--out", "y", "--checkpoint", "z"]) == 2
    assert "Unknown model 'nope'" in capsys.readouterr().err
