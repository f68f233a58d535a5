"""Will it fit? Rough memory estimates made before a large allocation, so an impossible request is one sentence
("needs N GB, this machine has M") instead of a MemoryError, a kernel OOM kill or hours of swapping.

The estimates are deliberately rough (within a small factor): they exist to refuse requests that are off by orders
of magnitude (a 100000-sample batch, a 4096^3 grid, a 36 TiB phantom), never to second-guess a request that is
merely large. Nothing here allocates.
"""

from __future__ import annotations

import math

from CTDiffusionLib.errors import InputError

GB = 1e9
# Activations a UNet keeps for the backward pass, per voxel of the input grid and per base channel: each level
# stores a few tensors (conv inputs, norms, activations) of `channels` x voxels, and the levels below add a
# geometric tail. Rough, and on the high side only for networks with very few levels.
_ACTIVATIONS_PER_VOXEL_CHANNEL = 12
_BYTES = 4  # float32 (bf16 autocast halves some of it; the estimate stays on the safe side of refusing)


def available_bytes(device: str = "cpu") -> tuple[int, str]:
    """(bytes the request may use, a few words naming the memory): free RAM, or the GPU's total memory."""
    if str(device).startswith("cuda"):
        try:
            import torch

            index = int(str(device).partition(":")[2] or 0)
            return int(torch.cuda.get_device_properties(index).total_memory), "GPU memory"
        except Exception:  # no torch/CUDA here: fall back to RAM
            pass
    try:
        import psutil

        free = int(psutil.virtual_memory().available)
    except Exception:
        import os

        pages = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else 0
        free = int(pages * os.sysconf("SC_PAGE_SIZE")) if pages else 1 << 62
    limit = _process_limit()
    return (limit, "memory under this process's limit") if limit is not None and limit < free else (free, "free memory")


def _process_limit() -> int | None:
    """What a memory limit on this process leaves (ulimit -v, a cgroup v2 memory.max), or None without one."""
    left = []
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            import psutil

            left.append(soft - psutil.Process().memory_info().vms)
    except Exception:  # Windows, or no psutil
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            text = f.read().strip()
        if text != "max":
            with open("/sys/fs/cgroup/memory.current") as f:
                left.append(int(text) - int(f.read().strip()))
    except (OSError, ValueError):
        pass
    return max(0, min(left)) if left else None


def require_memory(needed_bytes: float, what: str, device: str = "cpu", hint: str = "") -> None:
    """InputError "WHAT needs N GB, this machine has M GB of free memory" when `needed_bytes` cannot fit."""
    have, kind = available_bytes(device)
    if not math.isfinite(needed_bytes) or needed_bytes > have:
        raise InputError(f"{what} needs {_gb(needed_bytes)}, this machine has {_gb(have)} of {kind}.",
                         hint or "Choose a smaller size, or run on a machine with more memory.")


def volume_bytes(size, bytes_per_voxel: int) -> float:
    """Bytes of one volume of `size` voxels (any number of axes), as a float (no overflow)."""
    return float(math.prod(float(s) for s in size)) * bytes_per_voxel


def base_channels(model_spec: dict) -> int:
    """The first level's channel count of a network spec (models/factory.py specs)."""
    kwargs = model_spec.get("kwargs", {})
    levels = (kwargs.get("block_out_channels") or kwargs.get("channels")
              or [kwargs.get("dim") or kwargs.get("num_channels", 32)])  # report_unet: dim
    return int(levels[0] if isinstance(levels, (list, tuple)) else levels)


def training_bytes(model_spec: dict, grid, batch_size: int, image_channels: int, parameters: int = 0) -> float:
    """Rough peak memory of one training step: weights, gradients and AdamW state (4 copies), the batch and its
    noise, and the activations kept for the backward pass."""
    voxels = math.prod(float(g) for g in grid)
    activations = batch_size * voxels * base_channels(model_spec) * _ACTIVATIONS_PER_VOXEL_CHANNEL * _BYTES
    batch = 3 * batch_size * voxels * image_channels * _BYTES
    return 4.0 * parameters * _BYTES + activations + batch


def sampling_bytes(model_spec: dict, grid, batch_size: int, image_channels: int, parameters: int = 0) -> float:
    """Rough peak memory of sampling a batch: weights, and one forward pass (no stored activations: a third)."""
    voxels = math.prod(float(g) for g in grid)
    activations = batch_size * voxels * base_channels(model_spec) * _ACTIVATIONS_PER_VOXEL_CHANNEL * _BYTES / 3
    return 1.0 * parameters * _BYTES + activations + 4 * batch_size * voxels * image_channels * _BYTES


def _gb(n: float) -> str:
    if not math.isfinite(n):
        return "more than any machine has"
    return f"{n / GB:.1f} GB" if n >= 0.1 * GB else f"{n / 1e6:.0f} MB"


def count_spec_parameters(model_spec: dict, num_class_embeds: int | None = None) -> int:
    """Parameters of the network a spec describes, counted on PyTorch's meta device (shapes only, no memory)."""
    import torch

    from CTDiffusionLib.models.factory import build_model

    with torch.device("meta"):
        model = build_model(model_spec, num_class_embeds)
    return sum(p.numel() for p in model.parameters())


def check_training_memory(config: dict, device, world_size: int = 1) -> None:
    """Refuse a training whose one step cannot fit (e.g. --batch-size 100000), before any data is read."""
    spec, grid = config["model"], config["data"]["grid"]
    batch = max(1, int(config["training"]["batch_size"]) // max(1, world_size))
    need = training_bytes(spec, grid, batch, int(spec["kwargs"]["in_channels"]), count_spec_parameters(spec))
    require_memory(need, f"Training with --batch-size {config['training']['batch_size']} on the "
                   f"{'x'.join(map(str, grid))} grid", str(device),
                   "Lower --batch-size (or the --grid), or train on a machine with more memory.")
