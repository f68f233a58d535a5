"""A diffusion UNet for anisotropic volumes (e.g. 26 slices of 2.5 mm under sub-millimetre pixels).

MONAI's DiffusionModelUNet halves every axis at every level, which breaks on 26 slices (26 -> 13 -> 7 -> 4 and the
decoder cannot concatenate 8 with 7) and throws away through-plane detail the data never had. This network is
configured per level instead:
  - `level_kinds`: "2d" levels use (1, 3, 3) kernels, i.e. slice-wise 2D convolutions sharing one time embedding
    across all slices (the thesis' mixed design, with its batch > 1 bug fixed by construction); "3d" levels use 3x3x3.
  - `z_strides`: whether a down-sampling step also halves z (1 or 2 per transition); x/y always halve.
The decoder up-samples to the exact size of the matching skip, so any grid whose in-plane size divides by
2**(levels-1) keeps its shape: no silent padding, no change of output grid.
Tensors are (batch, channel, z, y, x).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from CTDiffusionLib.models.attention import attend, split_heads
from CTDiffusionLib.models.speed import SpeedSwitches


def _kernel(kind: str) -> tuple[int, int, int]:
    return (1, 3, 3) if kind == "2d" else (3, 3, 3)


def _padding(kernel: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(k // 2 for k in kernel)


def _norm(groups: int, ch: int) -> nn.GroupNorm:
    """GroupNorm with the most groups <= `groups` that divide `ch` (so a 48-channel concat works with 32)."""
    g = min(groups, ch)
    while ch % g:
        g -= 1
    return nn.GroupNorm(g, ch, eps=1e-6)


def _zero(module: nn.Module) -> nn.Module:
    """Zero-initialised output layers make every residual branch start as identity (stable early training)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, kind: str, groups: int, dropout: float = 0.0):
        super().__init__()
        k = _kernel(kind)
        self.norm1 = _norm(groups, in_ch)
        self.conv1 = nn.Conv3d(in_ch, out_ch, k, padding=_padding(k))
        self.temb = nn.Linear(temb_dim, 2 * out_ch)  # scale and shift (FiLM), as in improved DDPM
        self.norm2 = _norm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv3d(out_ch, out_ch, k, padding=_padding(k)))
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv3d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.temb(F.silu(temb))[:, :, None, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over all voxels of a (coarse) level, run by fused SDPA kernels (models/attention.py)."""

    def __init__(self, ch: int, head_dim: int, groups: int):
        super().__init__()
        self.heads = max(1, ch // head_dim)
        self.norm = _norm(groups, ch)
        self.qkv = nn.Conv3d(ch, 3 * ch, 1)
        self.proj = _zero(nn.Conv3d(ch, ch, 1))
        self.backend = "auto"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        # (B, N, 3C) with channels last, so every head's q/k/v has stride 1 in the head dimension
        qkv = self.qkv(self.norm(x)).flatten(2).transpose(1, 2).contiguous()
        q, k, v = (split_heads(t, self.heads) for t in qkv.chunk(3, dim=-1))
        h = attend(q, k, v, self.backend).transpose(1, 2).reshape(b, -1, c).transpose(1, 2)
        return x + self.proj(h.reshape(b, c, *spatial))


class Unit(nn.Module):
    """A res block optionally followed by attention: one skip connection per unit."""

    def __init__(self, res: ResBlock, attention: AttentionBlock | None):
        super().__init__()
        self.res = res
        self.attention = attention

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        x = self.res(x, temb)
        return self.attention(x) if self.attention is not None else x


class Downsample(nn.Module):
    def __init__(self, ch: int, z_stride: int):
        super().__init__()
        k = (3 if z_stride == 2 else 1, 3, 3)
        self.conv = nn.Conv3d(ch, ch, k, stride=(z_stride, 2, 2), padding=_padding(k))

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour to the skip's size plus a conv; `conv_first` convolves on the coarse grid instead
    (4x fewer FLOPs for an in-plane step, 8x for a 3D one; the res blocks that follow smooth the blocks)."""

    def __init__(self, ch: int, kind: str, conv_first: bool = False):
        super().__init__()
        k = _kernel(kind)
        self.conv = nn.Conv3d(ch, ch, k, padding=_padding(k))
        self.conv_first = conv_first

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        if self.conv_first:
            return F.interpolate(self.conv(x), size=tuple(size), mode="nearest")
        return self.conv(F.interpolate(x, size=tuple(size), mode="nearest"))


class AnisotropicDiffusionUNet(SpeedSwitches, nn.Module):
    """Denoiser eps/v = f(x_t, t, class) with per-level kernel kinds and z strides (see module docstring)."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        channels: Sequence[int] = (32, 64, 128),
        level_kinds: Sequence[str] = ("2d", "3d", "3d"),
        z_strides: Sequence[int] = (1, 2),
        num_res_blocks: int | Sequence[int] = 2,
        attention_levels: Sequence[bool] = (False, False, True),
        head_dim: int = 32,
        norm_groups: int = 32,
        dropout: float = 0.0,
        num_class_embeds: int | None = None,
        upsample_conv_first: bool = False,
    ):
        super().__init__()
        n = len(channels)
        if not (len(level_kinds) == len(attention_levels) == n and len(z_strides) == n - 1):
            raise ValueError("channels, level_kinds and attention_levels need one entry per level, z_strides one "
                             "per transition between levels")
        if any(k not in ("2d", "3d") for k in level_kinds) or any(s not in (1, 2) for s in z_strides):
            raise ValueError("level_kinds must be '2d'/'3d' and z_strides 1/2")
        self.channels = tuple(channels)
        blocks_per_level = [num_res_blocks] * n if isinstance(num_res_blocks, int) else list(num_res_blocks)
        if len(blocks_per_level) != n:
            raise ValueError("num_res_blocks needs one entry per level (or one number for all)")
        temb_dim = 4 * channels[0]
        self.time_mlp = nn.Sequential(nn.Linear(channels[0], temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        self.class_embedding = nn.Embedding(num_class_embeds, temb_dim) if num_class_embeds else None

        k0 = _kernel(level_kinds[0])
        self.conv_in = nn.Conv3d(in_channels, channels[0], k0, padding=_padding(k0))

        def attn(level: int, ch: int) -> nn.Module:
            return AttentionBlock(ch, head_dim, norm_groups) if attention_levels[level] else None

        self.down = nn.ModuleList()
        skip_channels = [channels[0]]
        ch = channels[0]
        for level in range(n):
            blocks = nn.ModuleList()
            for _ in range(blocks_per_level[level]):
                res = ResBlock(ch, channels[level], temb_dim, level_kinds[level], norm_groups, dropout)
                ch = channels[level]
                blocks.append(Unit(res, attn(level, ch)))
                skip_channels.append(ch)
            if level < n - 1:
                blocks.append(Downsample(ch, z_strides[level]))
                skip_channels.append(ch)
            self.down.append(blocks)

        self.mid = nn.ModuleList([
            Unit(ResBlock(ch, ch, temb_dim, level_kinds[-1], norm_groups, dropout), attn(n - 1, ch)),
            Unit(ResBlock(ch, ch, temb_dim, level_kinds[-1], norm_groups, dropout), None),
        ])

        self.up = nn.ModuleList()
        for level in reversed(range(n)):
            blocks = nn.ModuleList()
            for _ in range(blocks_per_level[level] + 1):
                res = ResBlock(ch + skip_channels.pop(), channels[level], temb_dim, level_kinds[level],
                               norm_groups, dropout)
                ch = channels[level]
                blocks.append(Unit(res, attn(level, ch)))
            if level > 0:
                blocks.append(Upsample(ch, level_kinds[level - 1], upsample_conv_first))
            self.up.append(blocks)

        self.norm_out = _norm(norm_groups, ch)
        self.conv_out = _zero(nn.Conv3d(ch, out_channels, k0, padding=_padding(k0)))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, class_labels: torch.Tensor | None = None
                ) -> torch.Tensor:
        temb = self.embed_time(x, timesteps, class_labels)
        skips, h = self.encode(self.conv_in(x), temb)
        return self.decode(h, skips, temb)

    def embed_time(self, x: torch.Tensor, timesteps: torch.Tensor, class_labels: torch.Tensor | None = None
                   ) -> torch.Tensor:
        temb = self.time_mlp(self.timestep_features(timesteps, self.channels[0], x.dtype))
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("this model was trained with conditions: class_labels are required")
            temb = temb + self.class_embedding(class_labels).to(dtype=temb.dtype)
        return temb

    def encode(self, h: torch.Tensor, temb: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The way down and the middle, from conv_in's output: (every skip, the middle's output). A ControlNet
        branch (models/controlnet.py) runs a second encoder and adds its outputs to these."""
        skips = [h]
        for blocks in self.down:
            for block in blocks:
                h = self.run_block(block, h, temb)
                skips.append(h)
        for block in self.mid:
            h = self.run_block(block, h, temb)
        return skips, h

    def decode(self, h: torch.Tensor, skips: list[torch.Tensor], temb: torch.Tensor) -> torch.Tensor:
        for blocks in self.up:
            for block in blocks:
                if isinstance(block, Upsample):
                    h = block(h, skips[-1].shape[2:])
                else:
                    h = self.run_block(block, torch.cat([h, skips.pop()], dim=1), temb)
        return self.conv_out(F.silu(self.norm_out(h)))
