"""A ControlNet-style label-map branch for the paired CT model (`train --with-labels --label-conditioning controlnet`).

The paired CT model's input is the noisy CT followed by one channel per structure (the label map), whatever the
conditioning. With concatenation (the default) those channels simply enter the UNet's first convolution. Here the
UNet sees the CT alone, and a second encoder of the same shape (a copy of its way down and middle, as in Zhang et
al., "Adding Conditional Control to Text-to-Image Diffusion Models", 2023) reads the CT plus the label map through a
zero-initialised convolution; each of its outputs enters the UNet's matching skip connection (and its middle)
through a zero-initialised 1x1x1 convolution. At initialisation the branch adds exactly nothing, so training starts
from the unconditional model and the label map's influence grows as the zero convolutions learn.

Unlike the original ControlNet, the branch and the UNet train together from scratch: the paired run has no
pretrained unconditional CT model to freeze. docs/engine.md "Paired runs" compares both conditionings on the
phantoms (adherence Dice, HU per structure, seconds per step).
"""

from __future__ import annotations

import torch
from torch import nn

from CTDiffusionLib.models.aniso_unet import AnisotropicDiffusionUNet, Downsample, _zero
from CTDiffusionLib.models.speed import SpeedSwitches


class ControlledUNet(SpeedSwitches, nn.Module):
    """AnisotropicDiffusionUNet on the CT channels + a ControlNet branch on the label-map channels.

    `in_channels` counts both (CT + `control_channels`), like the concatenating network it replaces; every other
    keyword is AnisotropicDiffusionUNet's."""

    def __init__(self, in_channels: int, control_channels: int, **unet_kwargs):
        super().__init__()
        if not 0 < control_channels < in_channels:
            raise ValueError("control_channels must be at least 1 and fewer than in_channels")
        self.control_channels = control_channels
        image_channels = in_channels - control_channels
        self.unet = AnisotropicDiffusionUNet(in_channels=image_channels, **unet_kwargs)
        # the branch: a second encoder of the same shape; its decoder and time embedding are never used
        self.branch = AnisotropicDiffusionUNet(in_channels=image_channels, **unet_kwargs)
        for unused in ("up", "norm_out", "conv_out", "time_mlp", "class_embedding"):
            delattr(self.branch, unused)
        width = self.unet.channels[0]
        kernel, padding = self.unet.conv_in.kernel_size, self.unet.conv_in.padding
        self.label_in = _zero(nn.Conv3d(control_channels, width, kernel, padding=padding))
        skip_widths = [width] + [self._width(block) for blocks in self.unet.down for block in blocks]
        self.skip_out = nn.ModuleList(_zero(nn.Conv3d(c, c, 1)) for c in skip_widths)
        self.mid_out = _zero(nn.Conv3d(skip_widths[-1], skip_widths[-1], 1))

    @staticmethod
    def _width(block: nn.Module) -> int:
        return block.conv.out_channels if isinstance(block, Downsample) else block.res.conv2.out_channels

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, class_labels: torch.Tensor | None = None
                ) -> torch.Tensor:
        image, labels = x[:, :-self.control_channels], x[:, -self.control_channels:]
        temb = self.unet.embed_time(x, timesteps, class_labels)
        skips, h = self.unet.encode(self.unet.conv_in(image), temb)
        control, c = self.branch.encode(self.branch.conv_in(image) + self.label_in(labels), temb)
        skips = [s + out(k) for s, out, k in zip(skips, self.skip_out, control)]
        return self.unet.decode(h + self.mid_out(c), skips, temb)

    def enable_gradient_checkpointing(self) -> None:
        for part in (self.unet, self.branch):
            part.enable_gradient_checkpointing()

    def disable_gradient_checkpointing(self) -> None:
        for part in (self.unet, self.branch):
            part.disable_gradient_checkpointing()
