"""The source thesis' denoiser, rebuilt layer for layer (275,148,225 parameters at 1 -> 1 channels).

A diffusers-style UNet for 26 x 256 x 256 CT in which each level is either
  - "3d": 3x3x3 convolutions, down-sampling halves every axis (stride 2, 26 -> 13 -> 7 -> 4 -> 2), or
  - "2d": slice-wise 3x3 convolutions with depth folded into the batch; GroupNorm statistics are per slice and
    down/up-sampling is in-plane only.
Up block k takes the kind of the level it up-samples to (the thesis' layout). ResNet blocks ADD a projected time
embedding (no scale/shift), use GroupNorm eps 1e-5 and default initialisation; attention is the diffusers
layout (GroupNorm, separate q/k/v Linear, output Linear, residual) with head dim 8 and plain softmax, run by fused
SDPA kernels. Tensors are (batch, channel, z, y, x).

The one deliberate difference: the thesis repeated the time embedding once per slice in a way that mixed batch
members at batch > 1; here a 2D block gives every slice its own sample's embedding (`repeat_interleave`), so
batch members are independent (Testing/test_models.py checks it).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from CTDiffusionLib.models.attention import TokenAttention
from CTDiffusionLib.models.speed import SpeedSwitches


def fold(x: torch.Tensor) -> torch.Tensor:
    """(B, C, D, H, W) -> (B*D, C, H, W): every slice becomes a 2D image."""
    b, c, d, h, w = x.shape
    return x.transpose(1, 2).reshape(b * d, c, h, w)


def unfold(x: torch.Tensor, depth: int) -> torch.Tensor:
    bd, c, h, w = x.shape
    return x.reshape(bd // depth, depth, c, h, w).transpose(1, 2)


class ResnetBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, kind: str, groups: int):
        super().__init__()
        conv = nn.Conv2d if kind == "2d" else nn.Conv3d
        self.kind = kind
        self.norm1 = nn.GroupNorm(groups, in_ch, eps=1e-5)
        self.conv1 = conv(in_ch, out_ch, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch, eps=1e-5)
        self.conv2 = conv(out_ch, out_ch, 3, padding=1)
        self.conv_shortcut = conv(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        depth = x.shape[2]
        if self.kind == "2d":
            x = fold(x)
            temb = temb.repeat_interleave(depth, dim=0)  # slice i of sample b gets sample b's embedding
        h = self.conv1(F.silu(self.norm1(x)))
        t = self.time_emb_proj(F.silu(temb))
        h = h + t.reshape(*t.shape, *(1,) * (h.ndim - 2))
        h = self.conv2(F.silu(self.norm2(h)))
        out = (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h
        return unfold(out, depth) if self.kind == "2d" else out


class Downsample(nn.Module):
    def __init__(self, ch: int, kind: str):
        super().__init__()
        self.kind = kind
        self.conv = (nn.Conv2d if kind == "2d" else nn.Conv3d)(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return unfold(self.conv(fold(x)), x.shape[2]) if self.kind == "2d" else self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour to the matching skip's size (so 4 -> 7 and 13 -> 26 come out exact), then a conv."""

    def __init__(self, ch: int, kind: str):
        super().__init__()
        self.kind = kind
        self.conv = (nn.Conv2d if kind == "2d" else nn.Conv3d)(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        x = F.interpolate(x, size=tuple(size), mode="nearest")
        return unfold(self.conv(fold(x)), x.shape[2]) if self.kind == "2d" else self.conv(x)


class Level(nn.Module):
    """ResNet blocks (each optionally followed by attention) and an optional resampler."""

    def __init__(self, resnets: list[ResnetBlock], attentions: list[nn.Module] | None):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(attentions) if attentions else None
        self.sampler: nn.Module | None = None


class ThesisUNet(SpeedSwitches, nn.Module):
    """The thesis network (defaults = the published configuration); see the module docstring."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        block_out_channels: Sequence[int] = (32, 64, 64, 128, 256, 512, 512),
        down_kinds: Sequence[str] = ("3d", "2d", "3d", "2d", "3d", "3d", "3d"),
        attention_levels: Sequence[bool] = (False, False, False, False, False, True, False),
        layers_per_block: int = 2,
        norm_groups: int = 32,
        head_dim: int = 8,
        mid_attention_layers: int = 2,
        num_class_embeds: int | None = None,
    ):
        super().__init__()
        chs, n = list(block_out_channels), len(block_out_channels)
        if not (len(down_kinds) == len(attention_levels) == n) or set(down_kinds) - {"2d", "3d"}:
            raise ValueError("down_kinds ('2d'/'3d') and attention_levels need one entry per level")
        self.block_out_channels, self.down_kinds = tuple(chs), tuple(down_kinds)
        # up level k up-samples to level k-1 and takes its kind; level 0 keeps its own
        self.up_kinds = (down_kinds[0], *down_kinds[:-1])
        temb_dim = 4 * chs[0]
        self.time_embedding = nn.Sequential(nn.Linear(chs[0], temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        self.class_embedding = nn.Embedding(num_class_embeds, temb_dim) if num_class_embeds else None
        self.conv_in = nn.Conv3d(in_channels, chs[0], 3, padding=1)

        def attention(ch: int) -> TokenAttention:
            return TokenAttention(ch, head_dim, norm_groups)

        self.down = nn.ModuleList()
        skips, ch = [chs[0]], chs[0]
        for k in range(n):
            resnets = []
            for _ in range(layers_per_block):
                resnets.append(ResnetBlock(ch, chs[k], temb_dim, down_kinds[k], norm_groups))
                ch = chs[k]
                skips.append(ch)
            level = Level(resnets, [attention(ch) for _ in resnets] if attention_levels[k] else None)
            if k < n - 1:
                level.sampler = Downsample(ch, down_kinds[k])
                skips.append(ch)
            self.down.append(level)

        mid_kind = down_kinds[-1]
        self.mid = Level([ResnetBlock(ch, ch, temb_dim, mid_kind, norm_groups)
                          for _ in range(mid_attention_layers + 1)],
                         [attention(ch) for _ in range(mid_attention_layers)])

        self.up = nn.ModuleList()
        for k in reversed(range(n)):
            resnets = []
            for _ in range(layers_per_block + 1):
                resnets.append(ResnetBlock(ch + skips.pop(), chs[k], temb_dim, self.up_kinds[k], norm_groups))
                ch = chs[k]
            level = Level(resnets, [attention(ch) for _ in resnets] if attention_levels[k] else None)
            if k > 0:
                level.sampler = Upsample(ch, self.up_kinds[k])
            self.up.append(level)

        self.norm_out = nn.GroupNorm(norm_groups, ch, eps=1e-5)
        self.conv_out = nn.Conv3d(ch, out_channels, 3, padding=1)

    def level_parameter_counts(self) -> dict[str, int]:
        """Parameters per part, named as in docs/presets.md (L0..L6 down/up, mid, time embedding)."""
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        n = len(self.down)
        out = {f"down{k}": count(m) for k, m in enumerate(self.down)}
        out.update({f"up{n - 1 - i}": count(m) for i, m in enumerate(self.up)})
        out.update(mid=count(self.mid), time_embedding=count(self.time_embedding),
                   stem=count(self.conv_in) + count(self.norm_out) + count(self.conv_out))
        return out

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, class_labels: torch.Tensor | None = None
                ) -> torch.Tensor:
        temb = self.time_embedding(self.timestep_features(timesteps, self.block_out_channels[0], x.dtype))
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("this model was trained with conditions: class_labels are required")
            temb = temb + self.class_embedding(class_labels).to(temb.dtype)

        h = self.conv_in(x)
        skips = [h]
        for level in self.down:
            for i, res in enumerate(level.resnets):
                h = self.run_block(res, h, temb)
                if level.attentions is not None:
                    h = self.run_block(level.attentions[i], h)
                skips.append(h)
            if level.sampler is not None:
                h = level.sampler(h)
                skips.append(h)
        h = self.run_block(self.mid.resnets[0], h, temb)
        for attn, res in zip(self.mid.attentions, self.mid.resnets[1:]):
            h = self.run_block(res, self.run_block(attn, h), temb)
        for level in self.up:
            for i, res in enumerate(level.resnets):
                h = self.run_block(res, torch.cat([h, skips.pop()], dim=1), temb)
                if level.attentions is not None:
                    h = self.run_block(level.attentions[i], h)
            if level.sampler is not None:
                h = level.sampler(h, skips[-1].shape[2:])
        return self.conv_out(F.silu(self.norm_out(h)))
