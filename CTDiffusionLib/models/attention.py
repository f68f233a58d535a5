"""Self-attention over the voxels of a coarse level, run by PyTorch's fused SDPA kernels.

Fused kernels (flash / memory-efficient on CUDA, flash on CPU) need q, k and v with stride 1 in the last
(head-dim) axis; otherwise PyTorch silently falls back to the math kernel. Both layouts here produce
(batch, heads, tokens, head_dim) views of a (batch, tokens, channels) tensor, whose last axis is contiguous.
`backend` pins the kernel: "auto" lets PyTorch choose, "flash"/"efficient"/"math" force one (an input the forced
kernel cannot take raises instead of falling back; Testing/test_attention.py relies on that), "plain" is
softmax(QK^T/sqrt(d))V written out, the baseline the thesis used.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "math": SDPBackend.MATH}
ATTENTION_BACKENDS = ("auto", "plain", *BACKENDS)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """(B, heads, N, d) x3 -> (B, heads, N, d)."""
    if backend == "auto":
        return F.scaled_dot_product_attention(q, k, v)
    if backend == "plain":
        w = torch.softmax((q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1]), dim=-1)
        return w @ v
    if backend not in BACKENDS:
        raise ValueError(f"attention backend must be one of {ATTENTION_BACKENDS}, not {backend!r}")
    with sdpa_kernel(BACKENDS[backend]):
        return F.scaled_dot_product_attention(q, k, v)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, C) -> (B, heads, N, C/heads), a view with stride 1 in the last axis when x's last axis has it."""
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


class TokenAttention(nn.Module):
    """diffusers' Attention layout: GroupNorm, separate q/k/v Linear layers, output Linear, residual."""

    def __init__(self, ch: int, head_dim: int, groups: int):
        super().__init__()
        self.heads = max(1, ch // head_dim)
        self.group_norm = nn.GroupNorm(groups, ch, eps=1e-5)
        self.to_q, self.to_k, self.to_v = nn.Linear(ch, ch), nn.Linear(ch, ch), nn.Linear(ch, ch)
        self.to_out = nn.Linear(ch, ch)
        self.backend = "auto"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        tokens = self.group_norm(x).flatten(2).transpose(1, 2)  # (B, N, C)
        q, k, v = (split_heads(proj(tokens), self.heads) for proj in (self.to_q, self.to_k, self.to_v))
        h = attend(q, k, v, self.backend).transpose(1, 2).reshape(b, -1, c)
        return x + self.to_out(h).transpose(1, 2).reshape(b, c, *spatial)
