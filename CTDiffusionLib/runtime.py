"""Where the work runs: device choice, mixed precision, and the torchrun/DDP process group."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX). Only there does bf16 autocast pay on a CPU:
    oneDNN emulates bf16 everywhere else, ~100x slower than fp32 (docs/performance.md)."""
    checks = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return any(check is not None and check() for check in checks)


def autocast_dtype(device: torch.device, amp: str | None) -> torch.dtype | None:
    """bf16 autocast where the hardware computes bf16 natively and correctly (Ampere and later GPUs: no loss scaling
    needed), fp32 elsewhere.

    'auto' stays fp32 on pre-Ampere GPUs and on every CPU: torch 2.13's oneDNN bf16 convolutions on CPUs with AMX
    corrupt the heap for some 3D shapes (a single Conv3d(1, 16, (1, 3, 3)) weight gradient on 2x1x8x96x96 aborts with
    "double free or corruption"; at 128x128x8 the tiny preset's loss turns NaN instead), and without AMX bf16 was
    slower than fp32 on the demo network (docs/reliability.md). 'on' asks for bf16 anyway (the CPU demo does, on its
    fixed, exercised shapes, for 1.5x the steps on AMX) and is refused on a GPU that cannot do it."""
    amp = amp or "auto"
    if amp == "off":
        return None
    if device.type != "cuda":
        return torch.bfloat16 if amp == "on" else None
    if not torch.cuda.is_bf16_supported():
        if amp == "on":
            raise InputError(f"--amp on: {torch.cuda.get_device_name(device)} has no bf16 support.",
                             "Use --amp auto or off (fp32 training).")
        return None
    return torch.bfloat16


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    wait_group: object = field(default=None, compare=False, repr=False)  # gloo group for waiting on rank 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


# Training collectives (gradient all-reduce) fail after COLLECTIVE_TIMEOUT_S, so a hung rank ends the job. While
# rank 0 alone works (preprocessing, checkpoint, validation, preview) the others wait on a separate gloo group with
# a long timeout instead, so a slow disk never trips the training timeout. Both can be set for tests / clusters.
COLLECTIVE_TIMEOUT_S = float(os.environ.get("CTDIFFUSION_COLLECTIVE_TIMEOUT_S", 30 * 60))
RANK0_WAIT_TIMEOUT_S = float(os.environ.get("CTDIFFUSION_RANK0_WAIT_TIMEOUT_S", 6 * 3600))


def check_device_for_torchrun(device_spec: str | None) -> None:
    """Under torchrun each process takes GPU LOCAL_RANK; a fixed cuda:N would put every rank on one GPU."""
    spec = (device_spec or "auto").strip().lower()
    if spec.startswith("cuda:"):
        raise InputError(f"--device {spec} cannot be used with torchrun: every process would use the same GPU.",
                         "Use --device cuda (each process takes the GPU of its LOCAL_RANK); choose GPUs with "
                         "CUDA_VISIBLE_DEVICES.")


def init_distributed(device_spec: str | None) -> Distributed:
    """Joins the torchrun process group when launched by torchrun (WORLD_SIZE > 1); a no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    check_device_for_torchrun(device_spec)
    import datetime

    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device_spec or "auto") != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo",
                                timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    wait_group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=RANK0_WAIT_TIMEOUT_S))
    return Distributed(rank, world, local_rank, wait_group)


def wait_for_main(dist: Distributed) -> None:
    """Every rank waits here until rank 0 has finished its own work (on the long-timeout group)."""
    if dist.enabled:
        import torch.distributed as tdist

        tdist.barrier(group=dist.wait_group)


def run_on_main_then_share(dist: Distributed, work, describe: str):
    """Rank 0 runs `work()` while the others wait; a failure there ends every rank with the same error.

    Without this, a rank-0 exception (e.g. an unreadable file during preprocessing) leaves the other ranks waiting
    at the barrier until the collective timeout. Rank 0 broadcasts "ok" or its error (a CTDiffusionError keeps its
    class, message and hint; anything else becomes a TrainingFailed naming `describe`); after "ok" the other ranks
    run `work()` themselves (reading what rank 0 wrote, e.g. the preprocessing cache)."""
    if not dist.enabled:
        return work()
    import torch.distributed as tdist

    from CTDiffusionLib import errors

    result, failure, box = None, None, [None]
    if dist.is_main:
        try:
            result = work()
        except errors.CTDiffusionError as exc:
            failure, box = exc, [(type(exc).__name__, exc.message, exc.hint)]
        except Exception as exc:
            failure, box = exc, [("TrainingFailed", f"{describe} failed on rank 0 ({type(exc).__name__}: {exc}).",
                                  "See the log of rank 0 for the traceback.")]
    tdist.broadcast_object_list(box, src=0, group=dist.wait_group)
    if box[0] is not None:
        # rank 0 must not exit before every rank holds the error: torchrun stops the others when one rank ends
        tdist.barrier(group=dist.wait_group)
    if failure is not None:
        raise failure
    if box[0] is not None:
        kind, message, hint = box[0]
        raise getattr(errors, kind, errors.TrainingFailed)(message, hint)
    return result if dist.is_main else work()
