"""Build a denoiser from its JSON spec {"type": ..., "kwargs": {...}} (configured, never subclassed)."""

from __future__ import annotations

import copy

from torch import nn


def build_model(spec: dict, num_class_embeds: int | None = None) -> nn.Module:
    kwargs = copy.deepcopy(spec["kwargs"])
    if num_class_embeds:
        kwargs["num_class_embeds"] = num_class_embeds
    if spec["type"] == "aniso_unet":
        from CTDiffusionLib.models.aniso_unet import AnisotropicDiffusionUNet

        return AnisotropicDiffusionUNet(**kwargs)
    if spec["type"] == "controlnet_unet":
        from CTDiffusionLib.models.controlnet import ControlledUNet

        return ControlledUNet(**kwargs)
    if spec["type"] == "thesis_unet":
        from CTDiffusionLib.models.thesis_unet import ThesisUNet

        return ThesisUNet(**kwargs)
    if spec["type"] == "report_unet":
        from CTDiffusionLib.models.report_unet import ReportUNet

        return ReportUNet(**kwargs)
    if spec["type"] == "monai_unet":
        from monai.networks.nets import DiffusionModelUNet

        return DiffusionModelUNet(**kwargs)
    raise ValueError(f"unknown model type {spec['type']!r}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
