"""Which training grids a network can take: its in-plane (and, for MONAI's 3D UNet, depth) sizes must halve cleanly
at every level, so the output grid is exactly the training grid. A fact of the network, so it lives with the models
(the trainer checks a new run's grid with it, the bundle loader an edited model.json)."""

from __future__ import annotations

from CTDiffusionLib.errors import InputError


def network_levels(model_spec: dict) -> int:
    """How many resolution levels the network of a model.json "model" entry has."""
    kwargs = model_spec["kwargs"]
    return len(kwargs["block_out_channels"] if model_spec["type"] == "thesis_unet" else kwargs["channels"])


def check_grid(grid: list[int], model_spec: dict, mode: str) -> None:
    """InputError unless every level of the network halves the grid cleanly."""
    levels = network_levels(model_spec)
    factor = 2 ** (levels - 1)
    if any(g % factor for g in grid[:2]):
        raise InputError(f"Grid {'x'.join(map(str, grid))} does not divide by {factor} in-plane, which this "
                         f"{levels}-level network needs.", f"Use an in-plane size that is a multiple of {factor}.")
    if model_spec["type"] == "monai_unet" and mode == "3d" and len(grid) > 2 and grid[2] % factor:
        raise InputError(f"Grid depth {grid[2]} does not divide by {factor}.", f"Use a multiple of {factor}.")
