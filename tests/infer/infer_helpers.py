"""Helpers of the gapeval infer tests: tiny GeoTIFFs, LDM layouts and checkpoints in each adapter's real format.

(A module of its own, not conftest.py, so that ``from infer_helpers import …`` cannot pick up another conftest.)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio
import torch
from affine import Affine

DATA = Path(__file__).parent / "data"
CRS = "EPSG:32618"
TRANSFORM = Affine(10.0, 0.0, 435730.0, 0.0, -10.0, 4179460.0)


def write_tif(path: Path, data: np.ndarray, *, crs: str | None = CRS, transform: Affine | None = TRANSFORM,
              nodata: float | None = None, descriptions: tuple[str, ...] | None = None, dtype: str = "uint16") -> Path:
    """A small GeoTIFF (no georeference when ``crs``/``transform`` are None)."""
    profile = {"driver": "GTiff", "height": data.shape[1], "width": data.shape[2], "count": data.shape[0], "dtype": dtype, "nodata": nodata}
    if crs is not None:
        profile.update(crs=crs, transform=transform)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data.astype(dtype))
        for i, d in enumerate(descriptions or (), start=1):
            ds.set_band_description(i, d)
    return path


def s2_dn(bands: int = 4, size: int = 32, seed: int = 0) -> np.ndarray:
    """Smooth Sentinel-2-like DN (reflectance x 10000) with some texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = 800 + 600 * np.sin(3 * xx + 2 * yy)[None] + rng.normal(0, 60, (bands, size, size))
    return np.round(np.clip(base + 150 * np.arange(bands)[:, None, None], 1, 9000))


def read(path: Path) -> tuple[np.ndarray, dict, Affine, object, tuple]:
    with rasterio.open(path) as ds:
        return ds.read(), dict(ds.tags()), ds.transform, ds.crs, ds.descriptions


# --------------------------------------------------------------------------------------------------
# LDM (CompVis / opensr-model) layouts, enumerated from the module definitions independently of the key map
# --------------------------------------------------------------------------------------------------

def infer_32px_tile(tmp_path: Path, model: str, checkpoint: Path, *extra: str, seed: int = 0,
                    input_folder: bool = False) -> tuple[np.ndarray, dict, Affine, object, tuple]:
    """Write one 32 px Sentinel-2 DN tile (``tmp_path/lr/tile.tif``, bands B04,B03,B02,B08), run ``gapeval infer`` on it
    (the tile or, with ``input_folder``, its folder) on the CPU with ``extra`` options, assert exit 0, and return
    :func:`read` of ``tmp_path/out/tile.tif``."""
    from gapeval.cli import main

    folder = tmp_path / "lr"
    folder.mkdir()
    scene = write_tif(folder / "tile.tif", s2_dn(size=32, seed=seed), descriptions=("B04", "B03", "B02", "B08"))
    out = tmp_path / "out"
    assert main(["infer", "--model", model, "--input", str(folder if input_folder else scene), "--out", str(out), "--checkpoint",
                 str(checkpoint), *extra, "--tile", "32", "--overlap", "0", "--device", "cpu", "--scale", "10000"]) == 0
    return read(out / "tile.tif")


def ldm_unet_shapes(cin: int, cout: int, mc: int, mult: tuple[int, ...], nres: int, attn: set[int]) -> dict[str, tuple[int, ...]]:
    """Names and shapes of an ``openaimodel.UNetModel`` state dict (legacy attention, no scale-shift norm)."""
    temb, s = 4 * mc, {}

    def res(p: str, i: int, o: int) -> None:
        s.update({f"{p}.in_layers.0.weight": (i,), f"{p}.in_layers.0.bias": (i,), f"{p}.in_layers.2.weight": (o, i, 3, 3), f"{p}.in_layers.2.bias": (o,),
                  f"{p}.emb_layers.1.weight": (o, temb), f"{p}.emb_layers.1.bias": (o,), f"{p}.out_layers.0.weight": (o,), f"{p}.out_layers.0.bias": (o,),
                  f"{p}.out_layers.3.weight": (o, o, 3, 3), f"{p}.out_layers.3.bias": (o,)})
        if i != o:
            s.update({f"{p}.skip_connection.weight": (o, i, 1, 1), f"{p}.skip_connection.bias": (o,)})

    def att(p: str, c: int) -> None:
        s.update({f"{p}.norm.weight": (c,), f"{p}.norm.bias": (c,), f"{p}.qkv.weight": (3 * c, c, 1), f"{p}.qkv.bias": (3 * c,),
                  f"{p}.proj_out.weight": (c, c, 1), f"{p}.proj_out.bias": (c,)})

    s.update({"time_embed.0.weight": (temb, mc), "time_embed.0.bias": (temb,), "time_embed.2.weight": (temb, temb), "time_embed.2.bias": (temb,),
              "input_blocks.0.0.weight": (mc, cin, 3, 3), "input_blocks.0.0.bias": (mc,)})
    chans, ch, idx = [mc], mc, 1
    for L, m in enumerate(mult):
        for _ in range(nres):
            res(f"input_blocks.{idx}.0", ch, m * mc)
            ch = m * mc
            if L in attn:
                att(f"input_blocks.{idx}.1", ch)
            chans.append(ch)
            idx += 1
        if L != len(mult) - 1:
            s.update({f"input_blocks.{idx}.0.op.weight": (ch, ch, 3, 3), f"input_blocks.{idx}.0.op.bias": (ch,)})
            chans.append(ch)
            idx += 1
    res("middle_block.0", ch, ch)
    att("middle_block.1", ch)
    res("middle_block.2", ch, ch)
    idx = 0
    for L in reversed(range(len(mult))):
        for j in range(nres + 1):
            res(f"output_blocks.{idx}.0", ch + chans.pop(), mult[L] * mc)
            ch = mult[L] * mc
            sub = 1
            if L in attn:
                att(f"output_blocks.{idx}.1", ch)
                sub = 2
            if L and j == nres:
                s.update({f"output_blocks.{idx}.{sub}.conv.weight": (ch, ch, 3, 3), f"output_blocks.{idx}.{sub}.conv.bias": (ch,)})
            idx += 1
    s.update({"out.0.weight": (mc,), "out.0.bias": (mc,), "out.2.weight": (cout, mc, 3, 3), "out.2.bias": (cout,)})
    return s


def ldm_autoencoder_shapes(cin: int, cout: int, ch: int, mult: tuple[int, ...], nres: int, z: int, embed: int, n_embed: int | None = None) -> dict[str, tuple[int, ...]]:
    """Names and shapes of an LDM ``AutoencoderKL`` (``n_embed`` None) or ``VQModel`` state dict (no level attention)."""
    s: dict[str, tuple[int, ...]] = {}

    def res(p: str, i: int, o: int) -> None:
        s.update({f"{p}.norm1.weight": (i,), f"{p}.norm1.bias": (i,), f"{p}.conv1.weight": (o, i, 3, 3), f"{p}.conv1.bias": (o,),
                  f"{p}.norm2.weight": (o,), f"{p}.norm2.bias": (o,), f"{p}.conv2.weight": (o, o, 3, 3), f"{p}.conv2.bias": (o,)})
        if i != o:
            s.update({f"{p}.nin_shortcut.weight": (o, i, 1, 1), f"{p}.nin_shortcut.bias": (o,)})

    def mid(p: str, c: int) -> None:
        res(f"{p}.mid.block_1", c, c)
        for n in ("norm",):
            s.update({f"{p}.mid.attn_1.{n}.weight": (c,), f"{p}.mid.attn_1.{n}.bias": (c,)})
        for n in ("q", "k", "v", "proj_out"):
            s.update({f"{p}.mid.attn_1.{n}.weight": (c, c, 1, 1), f"{p}.mid.attn_1.{n}.bias": (c,)})
        res(f"{p}.mid.block_2", c, c)

    s.update({"encoder.conv_in.weight": (ch, cin, 3, 3), "encoder.conv_in.bias": (ch,)})
    in_mult = (1,) + tuple(mult)
    block_in = ch
    for i in range(len(mult)):
        block_in = ch * in_mult[i]
        for j in range(nres):
            res(f"encoder.down.{i}.block.{j}", block_in, ch * mult[i])
            block_in = ch * mult[i]
        if i != len(mult) - 1:
            s.update({f"encoder.down.{i}.downsample.conv.weight": (block_in, block_in, 3, 3), f"encoder.down.{i}.downsample.conv.bias": (block_in,)})
    mid("encoder", block_in)
    zc = 2 * z if n_embed is None else z
    s.update({"encoder.norm_out.weight": (block_in,), "encoder.norm_out.bias": (block_in,), "encoder.conv_out.weight": (zc, block_in, 3, 3), "encoder.conv_out.bias": (zc,)})
    ec = 2 * embed if n_embed is None else embed
    s.update({"quant_conv.weight": (ec, zc, 1, 1), "quant_conv.bias": (ec,), "post_quant_conv.weight": (z, embed, 1, 1), "post_quant_conv.bias": (z,)})
    if n_embed is not None:
        s["quantize.embedding.weight"] = (n_embed, embed)
    block_in = ch * mult[-1]
    s.update({"decoder.conv_in.weight": (block_in, z, 3, 3), "decoder.conv_in.bias": (block_in,)})
    mid("decoder", block_in)
    for i in reversed(range(len(mult))):
        for j in range(nres + 1):
            res(f"decoder.up.{i}.block.{j}", block_in, ch * mult[i])
            block_in = ch * mult[i]
        if i != 0:
            s.update({f"decoder.up.{i}.upsample.conv.weight": (block_in, block_in, 3, 3), f"decoder.up.{i}.upsample.conv.bias": (block_in,)})
    s.update({"decoder.norm_out.weight": (block_in,), "decoder.norm_out.bias": (block_in,), "decoder.conv_out.weight": (cout, block_in, 3, 3), "decoder.conv_out.bias": (cout,)})
    return s


SCHEDULE = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod",
            "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
            "posterior_mean_coef1", "posterior_mean_coef2")


def ldsr_state_shapes(mc: int = 160, mult=(1, 2, 2, 4), nres: int = 2, attn=frozenset({3}), ae_ch: int = 128, ae_mult=(1, 2, 4), ae_nres: int = 2,
                      timesteps: int = 1000) -> dict[str, tuple[int, ...]]:
    """Names and shapes of an LDSR-S2 Lightning ``state_dict`` (defaults: the published v1 configuration)."""
    s: dict[str, tuple[int, ...]] = {}
    unet = ldm_unet_shapes(8, 4, mc, tuple(mult), nres, set(attn))
    s.update({f"model.diffusion_model.{k}": v for k, v in unet.items()})
    s.update({"model_ema.decay": (), "model_ema.num_updates": ()})
    s.update({"model_ema." + ("diffusion_model." + k).replace(".", ""): v for k, v in unet.items()})
    s.update({f"first_stage_model.{k}": v for k, v in ldm_autoencoder_shapes(4, 4, ae_ch, tuple(ae_mult), ae_nres, 4, 4).items()})
    s.update({k: (timesteps,) for k in SCHEDULE})
    return s


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0, std: float = 0.05) -> dict[str, torch.Tensor]:
    """Random tensors of the given shapes; norms near 1 so activations stay tame; ``betas`` a valid schedule."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in shapes.items():
        if k in SCHEDULE:
            betas = torch.linspace(1e-4 ** 0.5, 0.015 ** 0.5, shape[0], dtype=torch.float64) ** 2
            out[k] = betas.float() if k == "betas" else torch.cumprod(1 - betas, 0).float()
        elif shape == ():
            out[k] = torch.tensor(0.999)
        elif "norm" in k.split(".")[-2] and k.endswith("weight") and len(shape) == 1:
            out[k] = 1 + std * torch.randn(shape, generator=g)
        else:
            out[k] = std * torch.randn(shape, generator=g)
    return out


TINY_LDSR = {"mc": 32, "mult": (1, 2), "nres": 1, "attn": frozenset({1}), "ae_ch": 32, "ae_mult": (1, 2, 4), "ae_nres": 1, "timesteps": 1000}


def load_fixture_shapes() -> dict[str, tuple[int, ...]]:
    """The real LDSR-S2 v1 state-dict names and shapes (generated from opensr-model, see the JSON's 'source')."""
    blob = json.loads((DATA / "ldsr_s2_v1_state_dict_shapes.json").read_text())
    return {k: tuple(v) for k, v in blob["shapes"].items()}
