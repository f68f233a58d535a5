"""Where the work runs: device choice, mixed precision, and the torchrun/DDP process group."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from CTDiffusionLib.errors import InputError


def resolve_device(spec: str | None, local_rank: int = 0) -> torch.device:
    """'auto' -> CUDA if present else CPU; 'cuda' / 'cuda:N' / 'cpu' checked against what PyTorch sees."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"--device {spec}: PyTorch sees no CUDA GPU on this machine.",
                             "Use --device cpu (slow) or install a CUDA build of PyTorch.")
        index = int(spec.split(":")[1]) if ":" in spec else local_rank
        if index >= torch.cuda.device_count():
            raise InputError(f"--device {spec}: only {torch.cuda.device_count()} GPU(s) are visible.",
                             "Pick an index below that number.")
        return torch.device("cuda", index)
    raise InputError(f"--device {spec!r} is not a device.", "Use auto, cpu, cuda or cuda:N.")


def autocast_dtype(device: torch.device, amp: str | None) -> torch.dtype | None:
    """bf16 autocast on CUDA by default (no loss scaling needed); off on CPU, where it is slower for conv3d."""
    amp = amp or "auto"
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_spec: str | None) -> Distributed:
    """Joins the torchrun process group when launched by torchrun (WORLD_SIZE > 1); a no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device_spec or "auto") != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Distributed(rank, world, local_rank)
