"""What a training run will cost, said before the user waits for it: the time from a measured step, the memory in
use, and whether the training grid invents detail the data does not have.

The run goes on either way (a user may mean it); the notices go to the log and, as "warning" events, to a parent such
as the Slicer module. Measured on the 2-core development machine: the `default` preset (256x256x26) on 32x32x8 data
planned 20000 steps at 0.0098 steps/s, an ETA of 24 days, and grew to 16 GB, without a word (issue 29).
"""

from __future__ import annotations

from CTDiffusionLib.textformat import format_eta

LONG_RUN_S = 2 * 3600.0  # a CPU run longer than this gets a notice with the alternatives
COARSE_FACTOR = 2.0  # a grid with this many times the data's voxels per axis (in-plane) upsamples


#: Presets whose network is sized for a CPU: a long run of one of them is a slow or busy machine, not a wrong preset.
CPU_PRESETS = ("tiny", "tiny2d", "demo")


def long_run_notice(seconds_per_step: float, total_steps: int, device_type: str, memory_bytes: int | None,
                    preset: str) -> tuple[str, str] | None:
    """(message, hint) when a CPU run's measured steps say it will take longer than LONG_RUN_S, else None."""
    eta = seconds_per_step * total_steps
    if device_type != "cpu" or eta < LONG_RUN_S:
        return None
    memory = f" and this process uses {memory_bytes / 2**30:.1f} GB" if memory_bytes else ""
    message = (f"On this CPU a training step of the {preset!r} preset takes {seconds_per_step:.1f} s: {total_steps} "
               f"steps would take {format_eta(eta)}{memory}.")
    if preset in CPU_PRESETS:  # already the small network: the machine is slow or busy
        return message, ("The machine may be busy with other work. Give --minutes N to train to a time budget, "
                         "fewer --steps, or run on a GPU (--device cuda).")
    return message, ("This preset is sized for a GPU. On a CPU use --preset demo (a small network that trains in "
                     "minutes), give --minutes N to train to a time budget, or run on a GPU (--device cuda).")


def coarse_data_notice(data_sizes_xy: list[tuple[int, int]], grid: list[int]) -> tuple[str, str] | None:
    """(message, hint) when the data's median in-plane size is far below the training grid's, else None.

    Sizes are voxels; each case's whole field of view is resampled onto the grid, so a grid this much finer than the
    data only interpolates (upsampling 32x32 to 256x256 invents nothing)."""
    if not data_sizes_xy:
        return None
    xs = sorted(s[0] for s in data_sizes_xy)
    ys = sorted(s[1] for s in data_sizes_xy)
    median = (xs[len(xs) // 2], ys[len(ys) // 2])
    if grid[0] < COARSE_FACTOR * median[0] and grid[1] < COARSE_FACTOR * median[1]:
        return None
    return (f"The data is much coarser than the training grid: a median of {median[0]}x{median[1]} voxels in-plane, "
            f"resampled up to {grid[0]}x{grid[1]}; upsampling invents no detail and costs "
            f"{grid[0] * grid[1] / max(1, median[0] * median[1]):.0f}x the compute per slice.",
            f"Use a grid near the data's size (--grid {median[0]}x{median[1]}x{grid[2]} if the network divides it) "
            "or a smaller preset such as --preset demo." if len(grid) > 2 else
            f"Use a grid near the data's size (--grid {median[0]}x{median[1]}) or a smaller preset.")
