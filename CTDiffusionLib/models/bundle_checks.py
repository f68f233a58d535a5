"""Checks of a model bundle made before anything is built or read in full: every model.json field's type and range,
the weights file (a regular file of exactly the size its safetensors header declares), and whether the network
and one sampling pass fit in memory. An edited or damaged bundle is one sentence, never a 160 GB allocation, a read
of /dev/zero until the kernel kills the process, or a volume sampled from a NaN noise schedule.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
from pathlib import Path

from CTDiffusionLib.errors import InputError

EDITED_HINT = ("model.json was edited or comes from another model: restore it from the run folder it came from "
               "(its model/ folder, or `train --resume` rewrites it).")
MAX_INT = 4096  # no network setting (channels, heads, groups, strides) is larger in a sane bundle
MAX_RES_BLOCKS = 16
MAX_GRID = 2048
MAX_TIMESTEPS = 100_000
MAX_HEADER_BYTES = 100 * 2**20  # safetensors limits its JSON header to 100 MB
_MAX_DEPTH = 6


def check_bundle_meta(meta: dict, meta_file: Path) -> None:
    """Every field generate reads has the right type and a plausible range; InputError naming the first that has
    not."""

    def refuse(field: str, value, expected: str) -> InputError:
        return InputError(f"{meta_file}: {field} is {_short(value)}; {expected}.", EDITED_HINT)

    def section(name: str) -> dict:
        value = meta.get(name)
        if not isinstance(value, dict):
            raise refuse(name, value, "a JSON object is expected")
        return value

    for name in ("model", "data", "diffusion", "intensity", "geometry"):
        section(name)
    for name in ("model", "diffusion", "scheduler", "intensity", "geometry", "data", "conditions"):
        if name in meta:
            _check_numbers(meta[name], name, refuse, 0)
    model = meta["model"]
    if not isinstance(model.get("kwargs"), dict):
        raise refuse("model.kwargs", model.get("kwargs"), "a JSON object is expected")
    for key, value in model["kwargs"].items():
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, int) and not isinstance(v, bool) and not 0 <= v <= MAX_INT:
                raise refuse(f"model.kwargs.{key}", value, f"whole numbers from 0 to {MAX_INT} are expected")
    blocks = model["kwargs"].get("num_res_blocks", 1)
    if any(not isinstance(b, int) or not 0 <= b <= MAX_RES_BLOCKS for b in (blocks if isinstance(blocks, list)
                                                                          else [blocks])):
        raise refuse("model.kwargs.num_res_blocks", blocks, f"0 to {MAX_RES_BLOCKS} per level is expected")
    data = meta["data"]
    if data.get("mode") not in ("2d", "3d"):
        raise refuse("data.mode", data.get("mode"), '"2d" or "3d" is expected')
    grid = data.get("grid")
    if not isinstance(grid, list) or len(grid) != (2 if data["mode"] == "2d" else 3) or \
            any(not isinstance(g, int) or isinstance(g, bool) or not 1 <= g <= MAX_GRID for g in grid):
        raise refuse("data.grid", grid, f"{2 if data['mode'] == '2d' else 3} whole numbers from 1 to {MAX_GRID} "
                     "are expected")
    for name in ("diffusion", "scheduler"):
        schedule = meta.get(name) or {}
        steps = schedule.get("num_train_timesteps", 1000)
        if not isinstance(steps, int) or not 1 <= steps <= MAX_TIMESTEPS:
            raise refuse(f"{name}.num_train_timesteps", steps, f"a whole number from 1 to {MAX_TIMESTEPS} is expected")
        start, end = schedule.get("beta_start", 1e-4), schedule.get("beta_end", 0.02)
        if not (_is_number(start) and _is_number(end) and 0 < start < end < 1):
            raise refuse(f"{name}.beta_start/beta_end", [start, end], "0 < beta_start < beta_end < 1 is expected")
    geometry = meta["geometry"]
    spacing = geometry.get("spacing")
    if not isinstance(spacing, list) or len(spacing) != 3 or any(not _is_number(s) or s <= 0 for s in spacing):
        raise refuse("geometry.spacing", spacing, "3 spacings above 0 mm are expected")
    for key, length in (("origin", 3), ("direction", 9)):
        value = geometry.get(key)
        if not isinstance(value, list) or len(value) != length or not all(map(_is_number, value)):
            raise refuse(f"geometry.{key}", value, f"{length} numbers are expected")
    weights = meta.get("weights", "model.safetensors")
    if not isinstance(weights, str) or Path(weights).name != weights or weights in ("", ".", ".."):
        raise refuse("weights", weights, "a file name inside the bundle folder is expected")


def check_weights_file(path: Path) -> dict:
    """A regular file whose size is exactly what its safetensors header declares; returns {tensor: shape}.

    Reads only the header, so a symlink to /dev/zero, a folder, a cut-short copy or a padded file are refused
    before the weights are read."""
    try:
        info = os.stat(path)  # follows symlinks: a link to /dev/zero is a character device here
    except OSError as exc:
        raise InputError(f"{path} cannot be read ({exc.strerror or exc}).", "Re-copy the bundle.") from None
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{path} is not a regular file (a device, a folder, or a link to one).",
                         "Copy the real model.safetensors of the bundle next to its model.json.")
    try:
        with open(path, "rb") as f:
            prefix = f.read(8)
            length = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else -1
            header_bytes = f.read(length) if 0 < length <= min(MAX_HEADER_BYTES, info.st_size - 8) else b""
    except OSError as exc:
        raise InputError(f"{path} cannot be read ({exc.strerror or exc}).", "Re-copy the bundle.") from None
    try:
        header = json.loads(header_bytes.decode("utf-8")) if header_bytes else None
    except (ValueError, RecursionError):
        header = None
    if not isinstance(header, dict):
        raise InputError(f"{path} is not a safetensors file (its header cannot be read).", "Re-copy the bundle.")
    shapes, end = {}, 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            offsets, shape = entry["data_offsets"], entry["shape"]
            end = max(end, int(offsets[1]))
            shapes[name] = tuple(int(s) for s in shape)
        except (KeyError, TypeError, ValueError, IndexError):
            raise InputError(f"{path} has a damaged safetensors header (entry {name!r}).",
                             "Re-copy the bundle.") from None
    declared = 8 + length + end
    if info.st_size != declared:
        raise InputError(f"{path} is {info.st_size} bytes, but its safetensors header declares {declared}.",
                         "The copy is cut short or damaged: re-copy the bundle.")
    return shapes


def check_bundle_fits(meta: dict, meta_file: Path, device: str = "cpu", batch_size: int = 1) -> int:
    """Count the described network's parameters without allocating them (meta device) and refuse a network plus
    sampling pass that cannot fit in memory; returns the parameter count."""
    from CTDiffusionLib.memory import count_spec_parameters, require_memory, sampling_bytes
    from CTDiffusionLib.models.conditioning import ConditionVocabulary

    try:
        parameters = count_spec_parameters(meta["model"], ConditionVocabulary(meta.get("conditions"))
                                           .num_embeddings or None)
    except Exception as exc:  # any constructor complaint about the edited numbers
        raise InputError(f"{meta_file} does not fit its weights: its network cannot be built "
                         f"({type(exc).__name__}: {exc}).", EDITED_HINT) from None
    grid = meta["data"]["grid"]
    need = sampling_bytes(meta["model"], grid, batch_size, int(meta["model"]["kwargs"].get("in_channels", 1)),
                          parameters)
    require_memory(need, f"The model {meta_file} ({parameters / 1e6:.0f}M parameters, grid "
                   f"{'x'.join(map(str, grid))}, {batch_size} volume(s) at a time)", device,
                   "Use a smaller --batch-size, or a machine with more memory; if model.json was edited, "
                   + EDITED_HINT[0].lower() + EDITED_HINT[1:])
    return parameters


def _check_numbers(value, field: str, refuse, depth: int) -> None:
    """No NaN/inf anywhere in a section, and no nesting deeper than any real bundle has."""
    if depth > _MAX_DEPTH:
        raise refuse(field, "nested deeper than a bundle's fields", f"at most {_MAX_DEPTH} levels are expected")
    if isinstance(value, float) and not math.isfinite(value):
        raise refuse(field, value, "a finite number is expected")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_numbers(v, f"{field}.{k}", refuse, depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_numbers(v, f"{field}[{i}]", refuse, depth + 1)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) or value.startswith("nested") else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
