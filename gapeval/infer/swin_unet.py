"""A small Swin-UNet: the denoiser of the ``resshift`` adapter (x0-prediction in a VQ latent, conditioned on the LR image).

Layout (after ResShift's ``UNetModelSwin``, Yue et al. 2023, written from its description): a convolutional UNet
whose levels hold timestep-conditioned residual blocks (GroupNorm, SiLU, 3x3 convs, scale-shift time
modulation) followed by a stage of Swin Transformer blocks (Liu et al. 2021: window multi-head self-attention
with a learned relative position bias, windows shifted by half a window in every second block, pre-LayerNorm,
MLP ratio 4). The input is the (normalised) noisy latent concatenated with the low-resolution image.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class SwinUNetConfig:
    """Hyper-parameters of :class:`SwinUNet` (stored in checkpoints as JSON)."""

    in_channels: int = 3
    cond_channels: int = 3
    out_channels: int = 3
    model_channels: int = 160
    channel_mult: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 2
    swin_levels: tuple[int, ...] = (0, 1, 2, 3)
    swin_depth: int = 2
    window_size: int = 8
    head_channels: int = 32
    mlp_ratio: float = 4.0
    norm_groups: int = 32
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SwinUNetConfig:
        d = dict(d)
        for k in ("channel_mult", "swin_levels"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (cos then sin, Vaswani et al. 2017 / guided-diffusion) of integer timesteps (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


class ResBlock(nn.Module):
    """GN-SiLU-conv, time scale/shift on the second norm, GN-SiLU-conv, 1x1 skip when channels change."""

    def __init__(self, cin: int, cout: int, temb: int, groups: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.time = nn.Linear(temb, 2 * cout)
        self.norm2, self.conv2 = nn.GroupNorm(groups, cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.time(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.conv2(F.silu(self.norm2(h) * (1 + scale) + shift))
        return self.skip(x) + h


class WindowAttention(nn.Module):
    """Multi-head self-attention inside ``window x window`` windows with a relative position bias table."""

    def __init__(self, dim: int, window: int, heads: int) -> None:
        super().__init__()
        self.window, self.heads = window, heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)  # (2, w*w)
        rel = (coords[:, :, None] - coords[:, None, :]) + (window - 1)  # (2, N, N), each in 0..2w-2
        self.register_buffer("bias_index", rel[0] * (2 * window - 1) + rel[1], persistent=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``x``: (num_windows * B, N, C); ``mask``: (num_windows, N, N) additive, or None."""
        BW, N, C = x.shape
        q, k, v = self.qkv(x).reshape(BW, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        bias = self.bias_table[self.bias_index.reshape(-1)].reshape(N, N, self.heads).permute(2, 0, 1)
        attn_mask = bias[None]
        if mask is not None:
            nw = mask.shape[0]
            attn_mask = (attn_mask.reshape(1, 1, self.heads, N, N) + mask[None, :, None]).expand(BW // nw, nw, self.heads, N, N).reshape(BW, self.heads, N, N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask.to(q.dtype))
        return self.proj(out.transpose(1, 2).reshape(BW, N, C))


class SwinBlock(nn.Module):
    """Pre-norm (shifted-)window attention + MLP, both residual."""

    def __init__(self, dim: int, window: int, heads: int, shift: int, mlp_ratio: float) -> None:
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1, self.attn = nn.LayerNorm(dim), WindowAttention(dim, window, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def _mask(self, H: int, W: int, device: torch.device) -> torch.Tensor | None:
        """Additive mask keeping attention inside the regions a cyclic shift brought together (Liu et al. 2021, Fig. 4)."""
        if self.shift == 0:
            return None
        w, s = self.window, self.shift
        region = torch.zeros(H, W, device=device)
        n = 0
        for ys in (slice(0, -w), slice(-w, -s), slice(-s, None)):
            for xs in (slice(0, -w), slice(-w, -s), slice(-s, None)):
                region[ys, xs] = n
                n += 1
        ids = region.reshape(H // w, w, W // w, w).permute(0, 2, 1, 3).reshape(-1, w * w)
        return (ids[:, :, None] != ids[:, None, :]).float() * -1e4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, H, W, C) tokens."""
        B, H, W, C = x.shape
        w = self.window
        h = self.norm1(x)
        ph, pw = (-H) % w, (-W) % w
        h = F.pad(h, (0, 0, 0, pw, 0, ph))
        Hp, Wp = H + ph, W + pw
        if self.shift:
            h = torch.roll(h, (-self.shift, -self.shift), dims=(1, 2))
        windows = h.reshape(B, Hp // w, w, Wp // w, w, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, C)
        windows = self.attn(windows, self._mask(Hp, Wp, x.device))
        h = windows.reshape(B, Hp // w, Wp // w, w, w, C).permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, C)
        if self.shift:
            h = torch.roll(h, (self.shift, self.shift), dims=(1, 2))
        x = x + h[:, :H, :W]
        return x + self.mlp(self.norm2(x))


class SwinStage(nn.Module):
    """``depth`` Swin blocks on a (B, C, H, W) feature map, alternating unshifted and half-window-shifted windows."""

    def __init__(self, dim: int, depth: int, window: int, head_channels: int, mlp_ratio: float) -> None:
        super().__init__()
        heads = max(1, dim // head_channels)
        self.blocks = nn.ModuleList(SwinBlock(dim, window, heads, 0 if i % 2 == 0 else window // 2, mlp_ratio) for i in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.permute(0, 2, 3, 1)
        for block in self.blocks:
            h = block(h)
        return h.permute(0, 3, 1, 2)


class Level(nn.Module):
    """One UNet level: residual blocks, each followed by a Swin stage when the level has one."""

    def __init__(self, cins: list[int], cout: int, temb: int, cfg: SwinUNetConfig, swin: bool) -> None:
        super().__init__()
        self.res = nn.ModuleList(ResBlock(c, cout, temb, cfg.norm_groups) for c in cins)
        self.swin = nn.ModuleList(SwinStage(cout, cfg.swin_depth, cfg.window_size, cfg.head_channels, cfg.mlp_ratio) for _ in cins) if swin else None


class SwinUNet(nn.Module):
    """x0-predicting denoiser ``f(x_t, t, lq)`` of ResShift: (B, in, h, w), (B,), (B, cond, h, w) -> (B, out, h, w)."""

    def __init__(self, config: SwinUNetConfig) -> None:
        super().__init__()
        self.config = cfg = config
        mc, temb = cfg.model_channels, 4 * cfg.model_channels
        self.time_embed = nn.Sequential(nn.Linear(mc, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.conv_in = nn.Conv2d(cfg.in_channels + cfg.cond_channels, mc, 3, padding=1)
        chans = [mc * m for m in cfg.channel_mult]
        skips, ch = [mc], mc
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        for L, c in enumerate(chans):
            self.down.append(Level([ch] + [c] * (cfg.num_res_blocks - 1), c, temb, cfg, L in cfg.swin_levels))
            ch = c
            skips += [c] * cfg.num_res_blocks
            if L != len(chans) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.mid = Level([ch, ch], ch, temb, cfg, True)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for L in reversed(range(len(chans))):
            cins = []
            for _ in range(cfg.num_res_blocks + 1):
                cins.append(ch + skips.pop())
                ch = chans[L]
            self.up.append(Level(cins, chans[L], temb, cfg, L in cfg.swin_levels))
            if L:
                self.upsample.append(nn.Conv2d(ch, ch, 3, padding=1))
        self.norm_out, self.conv_out = nn.GroupNorm(cfg.norm_groups, ch), nn.Conv2d(ch, cfg.out_channels, 3, padding=1)

    @property
    def size_multiple(self) -> int:
        return 2 ** (len(self.config.channel_mult) - 1)

    @staticmethod
    def _level(level: Level, h: torch.Tensor, emb: torch.Tensor, i: int) -> torch.Tensor:
        h = level.res[i](h, emb)
        return level.swin[i](h) if level.swin is not None else h

    def forward(self, x: torch.Tensor, t: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels))
        h = self.conv_in(torch.cat([x, lq], dim=1))
        skips = [h]
        for L, level in enumerate(self.down):
            for i in range(len(level.res)):
                h = self._level(level, h, emb, i)
                skips.append(h)
            if L < len(self.downsample):
                h = self.downsample[L](h)
                skips.append(h)
        h = self._level(self.mid, h, emb, 0)
        h = self._level(self.mid, h, emb, 1)
        for k, level in enumerate(self.up):
            for i in range(len(level.res)):
                h = self._level(level, torch.cat([h, skips.pop()], dim=1), emb, i)
            if k < len(self.upsample):
                h = self.upsample[k](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))
