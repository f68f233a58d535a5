"""The mask report's denoiser: a 2D ConvNeXt UNet as in the "annotated diffusion" blog post (Hugging Face, after
lucidrains' denoising-diffusion-pytorch), with the report's changes: max-pool down, 2x2 transposed-convolution up,
and one up block per down block (3 and 3). docs/presets.md ("report2d") lists every layer and where it comes from.

Layout for dim_mults (1, 2, 4) at 64x64 (widths w = dim * mult):
  sinusoidal time features (dim) -> Linear(dim, 4 dim) -> GELU -> Linear(4 dim, 4 dim)
  7x7 conv in -> init_dim
  down k (64, 32, 16): ConvNeXt(in -> w_k), ConvNeXt(w_k -> w_k), linear attention, 2x2 max-pool (not after the last)
  middle (16x16): ConvNeXt, full self-attention over the 256 positions, ConvNeXt
  up k (16, 32, 64): concat the skip of down k, ConvNeXt(2 w_k -> w_{k-1}), ConvNeXt, linear attention,
                     2x2 stride-2 transposed conv (not after the last)
  ConvNeXt(init_dim -> dim) without time input, 1x1 conv -> out_channels
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn

from CTDiffusionLib.models.attention import attend
from CTDiffusionLib.models.speed import SpeedSwitches


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of each pixel (the blog's `LayerNorm`, a per-channel gain and bias)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(channels)), nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.layer_norm(x.movedim(1, -1), (x.shape[1],), self.weight, self.bias, self.eps)
        return h.movedim(-1, 1)


class ConvNextBlock(nn.Module):
    """Depthwise 7x7, plus the time MLP's output per channel; then norm, 3x3 conv to `mult` x the width, GELU, norm,
    3x3 conv; plus the input (through a 1x1 conv where the width changes)."""

    def __init__(self, ch_in: int, ch_out: int, time_dim: int | None, mult: int):
        super().__init__()
        self.time_mlp = nn.Sequential(nn.GELU(), nn.Linear(time_dim, ch_in)) if time_dim else None
        self.depthwise = nn.Conv2d(ch_in, ch_in, 7, padding=3, groups=ch_in)
        hidden = ch_out * mult
        self.net = nn.Sequential(ChannelLayerNorm(ch_in), nn.Conv2d(ch_in, hidden, 3, padding=1), nn.GELU(),
                                 ChannelLayerNorm(hidden), nn.Conv2d(hidden, ch_out, 3, padding=1))
        self.skip = nn.Conv2d(ch_in, ch_out, 1) if ch_in != ch_out else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.depthwise(x)
        if self.time_mlp is not None:
            h = h + self.time_mlp(temb)[:, :, None, None].to(h.dtype)
        return self.net(h) + self.skip(x)


class _HeadsAttention(nn.Module):
    """Pre-norm, 1x1 q/k/v projection without bias into heads x dim_head channels, residual around it."""

    def __init__(self, ch: int, heads: int, dim_head: int):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        self.norm = ChannelLayerNorm(ch)
        self.to_qkv = nn.Conv2d(ch, 3 * heads * dim_head, 1, bias=False)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Three (B, heads, dim_head, positions) tensors; channel c of q is head c // dim_head."""
        b, _, height, width = x.shape
        return self.to_qkv(self.norm(x)).reshape(b, 3, self.heads, self.dim_head, height * width).unbind(1)


class LinearAttention(_HeadsAttention):
    """Linear attention (Shen et al. 2018): softmax of q over its channels, of k over the positions; the context
    k v^T is dim_head x dim_head per head, so the cost grows with the number of positions, not its square."""

    def __init__(self, ch: int, heads: int = 4, dim_head: int = 32):
        super().__init__(ch, heads, dim_head)
        self.to_out = nn.Sequential(nn.Conv2d(heads * dim_head, ch, 1), ChannelLayerNorm(ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x)
        q = q.softmax(dim=-2) * self.dim_head ** -0.5
        context = torch.einsum("bhdn,bhen->bhde", k.softmax(dim=-1), v)
        out = torch.einsum("bhde,bhdn->bhen", context, q)
        return x + self.to_out(out.reshape(x.shape[0], -1, *x.shape[2:]))


class SelfAttention(_HeadsAttention):
    """Full softmax(q k^T / sqrt(dim_head)) v over all positions (fused SDPA kernels; `set_attention_backend`)."""

    def __init__(self, ch: int, heads: int = 4, dim_head: int = 32):
        super().__init__(ch, heads, dim_head)
        self.to_out = nn.Conv2d(heads * dim_head, ch, 1)
        self.backend = "auto"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (t.transpose(-1, -2) for t in self.qkv(x))  # (B, heads, positions, dim_head)
        out = attend(q, k, v, self.backend).transpose(-1, -2)
        return x + self.to_out(out.reshape(x.shape[0], -1, *x.shape[2:]))


class ReportUNet(SpeedSwitches, nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        dim: int = 64,
        dim_mults: tuple = (1, 2, 4),
        init_dim: int | None = None,
        convnext_mult: int = 2,
        heads: int = 4,
        dim_head: int = 32,
        num_class_embeds: int | None = None,
    ):
        super().__init__()
        init_dim = init_dim or dim // 3 * 2  # the blog's default
        widths = [dim * m for m in dim_mults]
        self.dim, self.dim_mults = dim, tuple(dim_mults)
        time_dim = 4 * dim
        self.time_mlp = nn.Sequential(nn.Linear(dim, time_dim), nn.GELU(), nn.Linear(time_dim, time_dim))
        # conditions (pathology group, phase) add a learned vector to the time embedding, as in the other networks
        self.class_embedding = nn.Embedding(num_class_embeds, time_dim) if num_class_embeds else None
        self.conv_in = nn.Conv2d(in_channels, init_dim, 7, padding=3)

        def block(ch_in: int, ch_out: int) -> ConvNextBlock:
            return ConvNextBlock(ch_in, ch_out, time_dim, convnext_mult)

        last = len(widths) - 1
        ins = [init_dim, *widths[:-1]]
        self.down = nn.ModuleList(nn.ModuleDict({
            "block1": block(ch_in, ch), "block2": block(ch, ch), "attention": LinearAttention(ch, heads, dim_head),
            "resample": nn.MaxPool2d(2) if k < last else nn.Identity()})
            for k, (ch_in, ch) in enumerate(zip(ins, widths)))
        self.mid = nn.ModuleDict({"block1": block(widths[-1], widths[-1]),
                                  "attention": SelfAttention(widths[-1], heads, dim_head),
                                  "block2": block(widths[-1], widths[-1])})
        # up k mirrors down k: down k's output (its skip) beside the level below's in, down k's input width out
        self.up = nn.ModuleList(nn.ModuleDict({
            "block1": block(2 * widths[k], ins[k]), "block2": block(ins[k], ins[k]),
            "attention": LinearAttention(ins[k], heads, dim_head),
            "resample": nn.ConvTranspose2d(ins[k], ins[k], 2, stride=2) if k > 0 else nn.Identity()})
            for k in reversed(range(len(widths))))
        self.final_block = ConvNextBlock(init_dim, dim, None, convnext_mult)
        self.conv_out = nn.Conv2d(dim, out_channels, 1)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, class_labels: torch.Tensor | None = None
                ) -> torch.Tensor:
        # sinusoidal features as in the blog: sin then cos, frequencies 10000^(-i / (dim/2 - 1))
        features = get_timestep_embedding(timesteps.reshape(-1), self.dim, flip_sin_to_cos=False,
                                          downscale_freq_shift=1).to(x.dtype)
        temb = self.time_mlp(features)
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("this model was trained with conditions: class_labels are required")
            temb = temb + self.class_embedding(class_labels).to(temb.dtype)

        h = self.conv_in(x)
        skips = []
        for level in self.down:
            h = level["attention"](self.run_block(level["block2"], self.run_block(level["block1"], h, temb), temb))
            skips.append(h)
            h = level["resample"](h)
        h = self.run_block(self.mid["block1"], h, temb)
        h = self.run_block(self.mid["block2"], self.mid["attention"](h), temb)
        for level in self.up:
            h = self.run_block(level["block1"], torch.cat([h, skips.pop()], dim=1), temb)
            h = level["resample"](level["attention"](self.run_block(level["block2"], h, temb)))
        return self.conv_out(self.final_block(h))
