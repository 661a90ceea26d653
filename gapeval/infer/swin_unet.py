"""ResShift's denoiser ``UNetModelSwin`` (Yue et al. 2023; SinSR, Wang et al. 2024 use the same network), written so the
published ``.pth`` state dicts load strictly under their own parameter names.

Structure (learned from the upstream definition and configs; written independently):

* a guided-diffusion UNet: ``time_embed`` (sinusoidal, cos then sin -> Linear -> SiLU -> Linear), ``input_blocks``
  (``0``: 3x3 conv of ``[x_t, lq]``; per level ``num_res_blocks`` ResBlocks, then a stride-2 conv ``op`` except at the
  last level), ``middle_block`` (ResBlock, Swin layer, ResBlock), ``output_blocks`` (per level ``num_res_blocks + 1``
  ResBlocks on the concatenated skip, nearest x2 + 3x3 conv ``conv`` at the end of every level but the top) and
  ``out`` (GroupNorm, SiLU, 3x3 conv). ResBlocks use scale-shift time modulation (``use_scale_shift_norm``);
* a Swin layer after the FIRST ResBlock of each level listed in ``swin_levels`` (upstream: ``attention_resolutions``)
  on the way down and up: a 1x1 conv ``patch_embed.proj`` to ``swin_embed_dim`` channels, ``swin_depth`` Swin blocks
  (GroupNorm(32) pre-norms, window attention with a relative position bias, 1x1-conv MLP; every second block's windows
  shifted by half a window), a 1x1 conv ``patch_unembed.proj`` back. No residual around the layer itself;
* each Swin block's window and shift are fixed for the trained latent size ``image_size``: where a level's feature
  map is not larger than the window, the window shrinks to it and the block is not shifted. The shift masks for
  ``image_size`` (value -100 across regions; see :func:`shift_mask` for how upstream's differs from Swin's) and the
  relative position indices are persistent buffers, as upstream, and are checked against their definition on loading.

Published configuration (``SwinUNetConfig()`` defaults): 160 channels x (1, 2, 2, 4), 2 ResBlocks per level, Swin at all
four levels and in the middle, width 192, 6 heads (32 channels each), window 8, MLP ratio 4, latent size 64:
564 tensors (540 parameters, 24 buffers), 118.59 M parameters, 119.36 M state-dict elements.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: Additive attention mask between tokens of different regions in shifted windows (upstream's value).
MASK_VALUE = -100.0


@dataclass(frozen=True)
class SwinUNetConfig:
    """Hyper-parameters of :class:`SwinUNet`, stored in gapeval checkpoints as JSON (:meth:`as_dict` / :meth:`from_dict`).

    Attributes:
        in_channels: channels of the noisy latent ``x_t``.
        cond_channels: channels of the low-resolution image concatenated to ``x_t`` (its size must equal the latent's).
        out_channels: channels of the prediction (the latent's).
        model_channels: width of the first level.
        channel_mult: width multiplier per level.
        num_res_blocks: ResBlocks per level on the way down (one more on the way up).
        swin_levels: levels with a Swin layer after their first ResBlock (the middle block always has one).
        swin_depth: Swin blocks per Swin layer.
        swin_embed_dim: width inside the Swin layers.
        num_head_channels: channels per attention head (heads = ``swin_embed_dim // num_head_channels``).
        window_size: attention window side.
        mlp_ratio: hidden width of the Swin MLP relative to ``swin_embed_dim``.
        image_size: the latent side the network was built for (fixes windows, shifts and the stored masks).
        norm_groups: GroupNorm groups.
    """

    in_channels: int = 3
    cond_channels: int = 3
    out_channels: int = 3
    model_channels: int = 160
    channel_mult: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 2
    swin_levels: tuple[int, ...] = (0, 1, 2, 3)
    swin_depth: int = 2
    swin_embed_dim: int = 192
    num_head_channels: int = 32
    window_size: int = 8
    mlp_ratio: float = 4.0
    image_size: int = 64
    norm_groups: int = 32

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SwinUNetConfig:
        """The config from :meth:`as_dict` output; an unknown key raises ``ValueError`` naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown SwinUNetConfig keys {unknown}; known: {sorted(known)}")
        d = dict(d)
        for k in ("channel_mult", "swin_levels"):
            if k in d:
                d[k] = tuple(int(v) for v in d[k])
        return cls(**d)

    @classmethod
    def from_upstream(cls, params: Mapping[str, Any], lq_channels: int = 3) -> SwinUNetConfig:
        """The config from the ``model.params`` section of a ResShift/SinSR YAML (``models.unet.UNetModelSwin``).

        ResShift counts only the latent in ``in_channels`` (the LR image is added when ``cond_lq`` and ``lq_size ==
        image_size``); SinSR's ``in_channels`` (6) already includes the LR image. Both give a 6-channel first conv.
        """
        image_size = int(params["image_size"])
        mult = tuple(int(m) for m in params["channel_mult"])
        nres = params["num_res_blocks"]
        nres = list(nres) if isinstance(nres, (list, tuple)) else [nres] * len(mult)
        if len(set(nres)) != 1:
            raise ValueError(f"num_res_blocks must be equal at every level, got {nres}")
        if params.get("resblock_updown", False) or not params.get("conv_resample", True) or not params.get("use_scale_shift_norm", True):
            raise ValueError("only resblock_updown False, conv_resample True and use_scale_shift_norm True (the published settings) are supported")
        if params.get("patch_norm", False) or int(params.get("dims", 2)) != 2:
            raise ValueError("only patch_norm False and dims 2 (the published settings) are supported")
        in_ch, out_ch = int(params["in_channels"]), int(params["out_channels"])
        if "lq_size" in params:  # ResShift's definition: in_channels is the latent only
            if int(params["lq_size"]) != image_size:
                raise ValueError("an LR feature extractor (lq_size != image_size) is not supported")
            latent = in_ch
        else:  # SinSR's definition: in_channels = latent + LR image
            latent = in_ch - lq_channels
        resolutions = {int(r) for r in params["attention_resolutions"]}
        head = int(params.get("num_head_channels", -1))
        if head <= 0:
            raise ValueError("num_head_channels must be set (the published configs use 32)")
        return cls(in_channels=latent, cond_channels=lq_channels, out_channels=out_ch, model_channels=int(params["model_channels"]),
                   channel_mult=mult, num_res_blocks=int(nres[0]),
                   swin_levels=tuple(L for L in range(len(mult)) if image_size // 2 ** L in resolutions),
                   swin_depth=int(params.get("swin_depth", 2)), swin_embed_dim=int(params.get("swin_embed_dim", 96)), num_head_channels=head,
                   window_size=int(params.get("window_size", 8)), mlp_ratio=float(params.get("mlp_ratio", 2.0)), image_size=image_size)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (cos then sin, guided-diffusion convention) of timesteps (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return F.pad(torch.cat([torch.cos(args), torch.sin(args)], dim=-1), (0, dim % 2))


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and cast back (guided-diffusion's ``normalization``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class ResBlock(nn.Module):
    """``in_layers`` (GN, SiLU, conv), ``emb_layers`` (SiLU, Linear -> scale, shift), ``out_layers`` (GN, SiLU, dropout, conv), skip."""

    def __init__(self, cin: int, cout: int, temb: int, groups: int) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(GroupNorm32(groups, cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(temb, 2 * cout))
        self.out_layers = nn.Sequential(GroupNorm32(groups, cout), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(cout, cout, 3, padding=1))
        self.skip_connection = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        scale, shift = self.emb_layers(emb).to(h.dtype)[:, :, None, None].chunk(2, dim=1)
        h = self.out_layers[0](h) * (1 + scale) + shift
        for layer in self.out_layers[1:]:
            h = layer(h)
        return self.skip_connection(x) + h


def relative_position_index(window: int) -> torch.Tensor:
    """(w*w, w*w) index into the (2w-1)^2 bias table: ``(dy + w - 1) * (2w - 1) + (dx + w - 1)`` for tokens i, j (row-major)."""
    yy, xx = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    y, x = yy.reshape(-1), xx.reshape(-1)
    return (y[:, None] - y[None, :] + window - 1) * (2 * window - 1) + (x[:, None] - x[None, :] + window - 1)


def to_windows(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, C, H, W) -> (B * H/w * W/w, w*w, C); windows row-major per image, tokens row-major per window."""
    B, C, H, W = x.shape
    return x.reshape(B, C, H // window, window, W // window, window).permute(0, 2, 4, 3, 5, 1).reshape(-1, window * window, C)


def from_windows(windows: torch.Tensor, window: int, H: int, W: int) -> torch.Tensor:
    """Inverse of :func:`to_windows`: (B * nW, w*w, C) -> (B, C, H, W)."""
    C = windows.shape[-1]
    return windows.reshape(-1, H // window, W // window, window, window, C).permute(0, 5, 1, 3, 2, 4).reshape(-1, C, H, W)


def shift_mask(H: int, W: int, window: int, shift: int) -> torch.Tensor:
    """(nW, w*w, w*w) additive mask: 0 inside a region, :data:`MASK_VALUE` between regions that a cyclic shift brings
    into one window. Regions are the three row bands ``[0, H-w)``, ``[H-w, H-s)``, ``[H-s, H)``.

    This is upstream ResShift's ``calculate_mask``, not Swin's (Liu et al. 2021) row-and-column mask: it labels an
    image shaped (1, 1, H, W) as if it were (1, H, W, 1), so labels vary along the rows only, and it flattens each
    window's labels column-major while the attention flattens tokens row-major, so token ``i`` of a window gets the label
    of in-window row ``i % w``. The published weights were trained with this mask and their checkpoints store it, so it
    is reproduced exactly.
    """
    idx = torch.arange(H)
    rows = (idx >= H - window).long() + (idx >= H - shift).long()
    label = rows[:, None].expand(H, W).float()[None, None]
    ids = to_windows(label, window)[..., 0].reshape(-1, window, window).transpose(1, 2).reshape(-1, window * window)  # (nW, w*w)
    return torch.where(ids[:, :, None] != ids[:, None, :], MASK_VALUE, 0.0)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative position bias (``relative_position_bias_table``)."""

    def __init__(self, dim: int, window: int, heads: int) -> None:
        super().__init__()
        self.window, self.heads = window, heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``x``: (B * nW, N, C); ``mask``: (nW, N, N) additive or None."""
        BW, N, C = x.shape
        q, k, v = self.qkv(x).reshape(BW, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)].reshape(N, N, self.heads).permute(2, 0, 1)
        add = bias[None]
        if mask is not None:
            nw = mask.shape[0]
            add = (add[None] + mask[None, :, None]).expand(BW // nw, nw, self.heads, N, N).reshape(BW, self.heads, N, N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=add.to(q.dtype))
        return self.proj(out.transpose(1, 2).reshape(BW, N, C))


class Mlp(nn.Module):
    """1x1 conv -> GELU -> 1x1 conv (``fc1``, ``fc2``)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Conv2d(dim, hidden, 1), nn.GELU(), nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    """Channels-first Swin block: ``x + WMSA(norm1(x))``, then ``x + mlp(norm2(x))``; shifted windows when ``shift > 0``."""

    def __init__(self, dim: int, resolution: int, window: int, shift: int, heads: int, mlp_ratio: float, groups: int) -> None:
        super().__init__()
        if resolution <= window:  # the feature map fits one window: no partition, no shift
            window, shift = resolution, 0
        self.window, self.shift, self.resolution = window, shift, resolution
        self.norm1 = GroupNorm32(groups, dim)
        self.attn = WindowAttention(dim, window, heads)
        self.norm2 = GroupNorm32(groups, dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.register_buffer("attn_mask", shift_mask(resolution, resolution, window, shift) if shift else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        w, s = self.window, self.shift
        if H % w or W % w:
            raise ValueError(f"Swin block: feature map {H}x{W} is not a multiple of its window {w}")
        h = self.norm1(x)
        if s:
            h = torch.roll(h, (-s, -s), dims=(2, 3))
        mask = None
        if s:
            mask = self.attn_mask if (H, W) == (self.resolution, self.resolution) else shift_mask(H, W, w, s).to(x.device)
        h = from_windows(self.attn(to_windows(h, w), mask), w, H, W)
        if s:
            h = torch.roll(h, (s, s), dims=(2, 3))
        x = x + h
        return x + self.mlp(self.norm2(x))


class PatchProj(nn.Module):
    """A 1x1 conv ``proj`` (upstream's ``PatchEmbed``/``PatchUnEmbed`` with patch size 1 and no norm)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class SwinLayer(nn.Module):
    """``patch_embed`` (channels -> embed) -> ``blocks`` -> ``patch_unembed`` (embed -> channels); no outer residual."""

    def __init__(self, channels: int, cfg: SwinUNetConfig, resolution: int) -> None:
        super().__init__()
        heads = cfg.swin_embed_dim // cfg.num_head_channels
        self.patch_embed = PatchProj(channels, cfg.swin_embed_dim)
        self.patch_unembed = PatchProj(cfg.swin_embed_dim, channels)
        self.blocks = nn.ModuleList(SwinBlock(cfg.swin_embed_dim, resolution, cfg.window_size, 0 if i % 2 == 0 else cfg.window_size // 2,
                                              heads, cfg.mlp_ratio, cfg.norm_groups) for i in range(cfg.swin_depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.patch_embed(x)
        for block in self.blocks:
            h = block(h)
        return self.patch_unembed(h)


class Downsample(nn.Module):
    """Stride-2 3x3 conv ``op``."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest x2, then 3x3 conv ``conv``."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Step(nn.ModuleList):
    """One entry of ``input_blocks``/``middle_block``/``output_blocks``: layers applied in order, ResBlocks get ``emb``."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class SwinUNet(nn.Module):
    """x0-predicting denoiser ``f(x_t, t, lq)``: (B, in, h, w), (B,), (B, cond, h, w) -> (B, out, h, w), with the
    parameter names of upstream ``UNetModelSwin`` (build from a config dict with ``SwinUNet(SwinUNetConfig.from_dict(d))``)."""

    def __init__(self, config: SwinUNetConfig) -> None:
        super().__init__()
        self.config = cfg = config
        if cfg.swin_embed_dim % cfg.num_head_channels:
            raise ValueError(f"swin_embed_dim {cfg.swin_embed_dim} is not a multiple of num_head_channels {cfg.num_head_channels}")
        mc, temb, groups = cfg.model_channels, 4 * cfg.model_channels, cfg.norm_groups
        self.time_embed = nn.Sequential(nn.Linear(mc, temb), nn.SiLU(), nn.Linear(temb, temb))
        ch = mc * cfg.channel_mult[0]
        self.input_blocks = nn.ModuleList([Step([nn.Conv2d(cfg.in_channels + cfg.cond_channels, ch, 3, padding=1)])])
        skips, res = [ch], cfg.image_size
        last = len(cfg.channel_mult) - 1
        for L, mult in enumerate(cfg.channel_mult):
            for j in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, mc * mult, temb, groups)]
                ch = mc * mult
                if L in cfg.swin_levels and j == 0:
                    layers.append(SwinLayer(ch, cfg, res))
                self.input_blocks.append(Step(layers))
                skips.append(ch)
            if L != last:
                self.input_blocks.append(Step([Downsample(ch)]))
                skips.append(ch)
                res //= 2
        self.middle_block = Step([ResBlock(ch, ch, temb, groups), SwinLayer(ch, cfg, res), ResBlock(ch, ch, temb, groups)])
        self.output_blocks = nn.ModuleList()
        for L in reversed(range(len(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + skips.pop(), mc * cfg.channel_mult[L], temb, groups)]
                ch = mc * cfg.channel_mult[L]
                if L in cfg.swin_levels and i == 0:
                    layers.append(SwinLayer(ch, cfg, res))
                if L and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                    res *= 2
                self.output_blocks.append(Step(layers))
        self.out = nn.Sequential(GroupNorm32(groups, ch), nn.SiLU(), nn.Conv2d(mc * cfg.channel_mult[0], cfg.out_channels, 3, padding=1))

    @property
    def size_multiple(self) -> int:
        """The latent side must be a multiple of this: every level's size a multiple of its blocks' window."""
        m = 2 ** (len(self.config.channel_mult) - 1)
        for module in self.modules():
            if isinstance(module, SwinBlock):
                m = math.lcm(m, (self.config.image_size // module.resolution) * module.window)
        return m

    def check_buffers(self, state: Mapping[str, torch.Tensor], source: str) -> None:
        """The checkpoint's position indices and shift masks must equal their definition (they are not learned)."""
        own = dict(self.named_buffers())
        for key, expected in own.items():
            got = state.get(key)
            if got is not None and got.shape == expected.shape and not torch.equal(got.to(expected.dtype), expected):
                raise ValueError(f"{source}: buffer {key!r} differs from its definition (window/shift/image_size mismatch?)")

    def forward(self, x: torch.Tensor, t: torch.Tensor, lq: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels))
        h = torch.cat([x, lq], dim=1) if self.config.cond_channels else x
        skips = []
        for step in self.input_blocks:
            h = step(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for step in self.output_blocks:
            h = step(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h.to(x.dtype) if h.dtype != x.dtype else h)
