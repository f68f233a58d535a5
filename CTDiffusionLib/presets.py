"""Named presets: training grid, network and training defaults per profile.

A preset is plain data; `resolve_preset` returns a deep copy that the trainer merges with command-line overrides
into the run's config.json. See docs/presets.md for the reasoning behind each one.
"""

from __future__ import annotations

import copy

from CTDiffusionLib.errors import InputError
from CTDiffusionLib.profiles import CARDIAC_MASKS, get_profile


def _aniso(channels, kinds, z_strides, blocks, attention, head_dim=32, groups=8, in_ch=1, out_ch=1,
           upsample_conv_first=False):
    kwargs = {"in_channels": in_ch, "out_channels": out_ch, "channels": list(channels), "level_kinds": list(kinds),
              "z_strides": list(z_strides), "num_res_blocks": blocks if isinstance(blocks, int) else list(blocks),
              "attention_levels": list(attention), "head_dim": head_dim, "norm_groups": groups}
    if upsample_conv_first:  # only when set, so older bundles' model.json stays what it was
        kwargs["upsample_conv_first"] = True
    return {"type": "aniso_unet", "kwargs": kwargs}


def _monai2d(channels, attention, blocks, head_channels=32, groups=16):
    n = CARDIAC_MASKS.channels
    return {"type": "monai_unet", "kwargs": {
        "spatial_dims": 2, "in_channels": n, "out_channels": n, "channels": list(channels),
        "attention_levels": list(attention), "num_res_blocks": blocks, "num_head_channels": head_channels,
        "norm_num_groups": groups}}


_CT_TRAIN = {"batch_size": 2, "lr": 1e-4, "warmup_steps": 200, "steps": 20000, "ema_decay": 0.999,
             "checkpoint_every": 500, "sample_every": 2000}
_CT_DATA = {"mode": "3d", "augment": {"zoom": [0.9, 1.1], "flip": True, "rotate_deg": 0.0}}
_MASK_DATA = {"augment": {"zoom": [0.9, 1.1], "flip": False, "rotate_deg": 15.0}}
n_mask = CARDIAC_MASKS.channels

PRESETS: dict[str, dict[str, dict]] = {
    "prostate-ct": {
        # CPU demo/tests: 32x32x8, trains in minutes on 2 cores.
        "tiny": {"grid": [32, 32, 8], **_CT_DATA,
                 "model": _aniso((16, 32, 64), ("2d", "3d", "3d"), (1, 2), 1, (False, False, True), 16, 8),
                 "training": {**_CT_TRAIN, "lr": 1e-3, "warmup_steps": 20, "steps": 300, "ema_decay": 0.99,
                              "checkpoint_every": 50, "sample_every": 100}},
        # CPU demo (`ctdiffusion demo`): 48x48x12 over the whole pelvis (~10 mm pixels, 5.4 mm slices). Four levels,
        # slice-wise at full and half size (48x48x12, 24x24x12), 3D below (12x12x6, 6x6x3). On 2 cores the demo's
        # quality follows the number of optimiser steps in its time budget, so every level is as cheap as it can be
        # (README "The demo, measured"): no res block on the way down at the two slice-wise levels, up-sampling
        # convolutions on the coarse grid, and no attention (the 3x3x3 convolutions at 6x6x3 already see the whole
        # volume). With bf16 on a CPU that computes it natively the demo's 11-minute budget fits 2.6x the steps of
        # the former network (two 3D levels with attention), and its pictures match a 4200-step run of that network.
        "demo": {"grid": [48, 48, 12], **_CT_DATA,
                 "model": _aniso((16, 32, 64, 128), ("2d", "2d", "3d", "3d"), (1, 2, 2), (0, 0, 1, 1),
                                 (False, False, False, False), 16, 8, upsample_conv_first=True),
                 "training": {**_CT_TRAIN, "batch_size": 2, "lr": 1e-3, "warmup_steps": 20, "steps": 4000,
                              "ema_decay": 0.99, "checkpoint_every": 500, "sample_every": 2000}},
        # Recommended 256x256x26 (docs/presets.md): the thesis' deep pyramid (26x256x256 ... 4x8x8 with attention
        # over 256 tokens, 2x4x4 + mid attention) at 6x fewer FLOPs per step: slice-wise convolutions while pixels
        # are much finer than the 2.5 mm slices, one res block and few channels (16, 32) at the two full-z levels
        # (at full size CPU time goes with the number of voxels x channels, not with FLOPs), up-sampling convs on
        # the coarse grid, z halving where in-plane and through-plane spacing meet.
        "default": {"grid": [256, 256, 26], **_CT_DATA,
                    "model": _aniso((16, 32, 64, 128, 256, 384, 384), ("2d", "2d", "2d", "3d", "3d", "3d", "3d"),
                                    (1, 2, 2, 1, 2, 2), (1, 1, 2, 2, 2, 2, 2), (False,) * 5 + (True, True), 64,
                                    32, upsample_conv_first=True),
                    "training": {**_CT_TRAIN, "batch_size": 2}},
        # The source thesis' network and recipe, layer for layer (models/thesis_unet.py, 275,148,225 parameters):
        # fp32, batch 1, AdamW 1e-4 with 1000 warm-up steps then cosine, DDPM-1000 linear betas, epsilon
        # prediction, clip_sample, no EMA (decay 0: the saved weights are the trained ones). Only its batch > 1
        # time-embedding bug is fixed.
        "thesis": {"grid": [256, 256, 26], **_CT_DATA, "prediction": "epsilon",
                   "model": {"type": "thesis_unet", "kwargs": {
                       "in_channels": 1, "out_channels": 1, "block_out_channels": [32, 64, 64, 128, 256, 512, 512],
                       "down_kinds": ["3d", "2d", "3d", "2d", "3d", "3d", "3d"],
                       "attention_levels": [False] * 5 + [True, False], "layers_per_block": 2, "norm_groups": 32,
                       "head_dim": 8, "mid_attention_layers": 2}},
                   "training": {**_CT_TRAIN, "batch_size": 1, "lr": 1e-4, "warmup_steps": 1000, "steps": 46000,
                                "ema_decay": 0.0, "amp": "off"}},
        # Native 512x512x26: the default's design with one more slice-wise level in front (16 channels at full
        # size); 2.8 TFLOP per sample-step, less than the thesis at 256x256x26. Gradient checkpointing on.
        "native512": {"grid": [512, 512, 26], **_CT_DATA,
                      "model": _aniso((16, 32, 32, 64, 128, 256, 384, 384),
                                      ("2d", "2d", "2d", "2d", "3d", "3d", "3d", "3d"), (1, 1, 2, 2, 1, 2, 2),
                                      (1, 1, 1, 2, 2, 2, 2, 2), (False,) * 6 + (True, True), 64, 16,
                                      upsample_conv_first=True),
                      "training": {**_CT_TRAIN, "batch_size": 2, "grad_checkpoint": True}},
    },
    "cardiac-masks": {
        "tiny2d": {"grid": [32, 32], "mode": "2d", **_MASK_DATA,
                   "model": _monai2d((32, 64), (False, True), 1, 32, 16),
                   "training": {**_CT_TRAIN, "batch_size": 8, "lr": 1e-3, "warmup_steps": 20, "steps": 300,
                                "ema_decay": 0.99, "checkpoint_every": 50, "sample_every": 100}},
        # CPU demo (`ctdiffusion demo --profile cardiac-masks`): 2D slices at 48x48 trained to a time budget. Three
        # cheap levels (16, 32, 64 channels, attention only at 12x12) run ~2x the steps per second of tiny2d's two
        # wider ones (attention at 24x24); in the same 4 minutes they gave Fréchet 13 vs 33 and holes in 2 of 8
        # cavities vs 5 of 8 (one run each, README "The mask demo, measured").
        "demo": {"grid": [48, 48], "mode": "2d", **_MASK_DATA,
                 "model": _monai2d((16, 32, 64), (False, False, True), 1, 16, 8),
                 "training": {**_CT_TRAIN, "batch_size": 16, "lr": 1e-3, "warmup_steps": 20, "steps": 1200,
                              "ema_decay": 0.99, "checkpoint_every": 200, "sample_every": 600}},
        # The source report: 2D DDPM on 64x64 masks with a cosine schedule.
        "slice2d": {"grid": [64, 64], "mode": "2d", **_MASK_DATA, "schedule": "cosine",
                    "model": _monai2d((64, 128, 256), (False, True, True), 2, 64, 32),
                    "training": {**_CT_TRAIN, "batch_size": 32, "lr": 2e-4}},
        # The source report's own network and recipe (models/report_unet.py; docs/presets.md "report2d"): the
        # annotated-diffusion ConvNeXt UNet (dim 64, multipliers 1-2-4, two ConvNeXt blocks and linear attention per
        # down/up block, full attention in the middle, max-pool down, 2x2 transposed conv up), epsilon prediction,
        # cosine T = 1000, Smooth L1, Adam 1e-4 (AdamW without weight decay), batch 16, no warm-up, no EMA.
        # `--epochs 50` is the report's length.
        "report2d": {"grid": [64, 64], "mode": "2d", **_MASK_DATA, "schedule": "cosine", "prediction": "epsilon",
                     "objective": "ddpm",
                     "model": {"type": "report_unet", "kwargs": {
                         "in_channels": n_mask, "out_channels": n_mask, "dim": 64, "dim_mults": [1, 2, 4],
                         "init_dim": 42, "convnext_mult": 2, "heads": 4, "dim_head": 32}},
                     "training": {**_CT_TRAIN, "batch_size": 16, "lr": 1e-4, "warmup_steps": 0, "ema_decay": 0.0,
                                  "loss": "smooth_l1"}},
        "tiny3d": {"grid": [32, 32, 8], "mode": "3d", **_MASK_DATA,
                   "model": _aniso((16, 32, 64), ("2d", "3d", "3d"), (1, 2), 1, (False, False, True), 16, 8,
                                   n_mask, n_mask),
                   "training": {**_CT_TRAIN, "lr": 1e-3, "warmup_steps": 20, "steps": 300, "ema_decay": 0.99,
                                "checkpoint_every": 50, "sample_every": 100}},
        # 3D stacks: ACDC slices are 5-10 mm apart, so the first two levels are slice-wise here too.
        "stack3d": {"grid": [128, 128, 16], "mode": "3d", **_MASK_DATA, "schedule": "cosine",
                    "model": _aniso((32, 64, 128, 256), ("2d", "2d", "3d", "3d"), (1, 2, 2), 2,
                                    (False, False, False, True), 64, 32, n_mask, n_mask),
                    "training": {**_CT_TRAIN, "batch_size": 4, "lr": 2e-4}},
    },
}


def resolve_preset(profile, name: str | None) -> tuple[str, dict]:
    """(name, deep copy of the preset); the profile's default preset when `name` is None."""
    profile = get_profile(profile)
    name = name or profile.default_preset
    presets = PRESETS.get(profile.name, {})
    if name not in presets:
        raise InputError(f"Unknown preset {name!r} for profile {profile.name}.",
                         f"Choose one of: {', '.join(presets)}." if presets else
                         f"No presets are defined for {profile.name} yet: add them to presets.py.")
    return name, copy.deepcopy(presets[name])
