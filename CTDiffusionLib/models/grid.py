"""Which training grids a network can take: its in-plane (and, for MONAI's 3D UNet, depth) sizes must halve cleanly
at every level, so the output grid is exactly the training grid. A fact of the network, so it lives with the models
(the trainer checks a new run's grid with it, the bundle loader an edited model.json)."""

from __future__ import annotations

from CTDiffusionLib.errors import InputError


# the model.json "kwargs" entry that lists one width (or multiplier) per resolution level, by network type
_LEVEL_KEYS = {"thesis_unet": "block_out_channels", "report_unet": "dim_mults"}


CONTROLNET_TYPE = "controlnet_unet"  # models/controlnet.py: the aniso UNet + a label-map branch (same kwargs + one)


def network_levels(model_spec: dict) -> int:
    """How many resolution levels the network of a model.json "model" entry has."""
    return len(model_spec["kwargs"][_LEVEL_KEYS.get(model_spec["type"], "channels")])


def network_spatial_dims(model_spec: dict) -> int | None:
    """2 or 3: whether the network takes slices or volumes (MONAI's UNet says so in its kwargs)."""
    fixed = {"aniso_unet": 3, CONTROLNET_TYPE: 3, "thesis_unet": 3, "report_unet": 2}
    return fixed.get(model_spec.get("type"), model_spec["kwargs"].get("spatial_dims"))


def check_grid(grid: list[int], model_spec: dict, mode: str) -> None:
    """InputError unless every level of the network halves the grid cleanly."""
    levels = network_levels(model_spec)
    factor = 2 ** (levels - 1)
    if any(g % factor for g in grid[:2]):
        raise InputError(f"Grid {'x'.join(map(str, grid))} does not divide by {factor} in-plane, which this "
                         f"{levels}-level network needs.", f"Use an in-plane size that is a multiple of {factor}.")
    if model_spec["type"] == "monai_unet" and mode == "3d" and len(grid) > 2 and grid[2] % factor:
        raise InputError(f"Grid depth {grid[2]} does not divide by {factor}.", f"Use a multiple of {factor}.")
