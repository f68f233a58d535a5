"""How many CPU threads torch should use: the cores this process may run on, less what other processes keep busy.

Oversubscribed threads wait on each other: measured on the 2-core development machine with the demo preset at
48x48x12 and one competing busy process, 2 torch threads made 0.91 steps/s and 1 thread 1.79 (docs/performance.md,
"Under load"). Users train beside Slicer's GUI, a test run or other jobs, so the count is chosen from the cores
actually free: before the first step (the load during a START_SAMPLE_S pause), again FIRST_CHECK_S seconds later,
and then every RECHECK_S seconds while the run goes on.
A count the user fixed (CTDIFFUSION_THREADS, else OMP_NUM_THREADS) is applied and left alone.

"Cores" are the CPUs in this process's affinity (taskset, a container's cpuset), capped by a cgroup CPU quota
(docker --cpus). "Busy elsewhere" is the busy time of those CPUs less this process's own CPU time, from
/proc/stat-style counters (psutil.cpu_times) read at two moments. Niced processes count as fully busy: keeping one
thread too few costs a third of the speed alone (docs/performance.md), one too many under a competitor half of it.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch

log = logging.getLogger("ctdiffusion")
START_SAMPLE_S = 0.25  # the choice before the first step: under load a first demo step with 2 threads took 16 s
FIRST_CHECK_S = 2.0  # a second look soon after: a job that started with this one, short enough for a 10-s generation
RECHECK_S = 15.0  # seconds between later re-choices: long enough to average load, short enough to follow a new job
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "QUOTA PERIOD" or "max PERIOD"


def allowed_cpus() -> list[int]:
    """The CPU numbers this process may run on (its affinity)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return list(range(os.cpu_count() or 1))


def quota_cores(cpu_max: str | None) -> float | None:
    """Cores a cgroup v2 `cpu.max` line allows ("200000 100000" -> 2.0), None without a quota."""
    parts = (cpu_max or "").split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = float(parts[0]), float(parts[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def usable_cores(cpus: list[int] | None = None, cpu_max: str | None = None) -> int:
    """Cores this process may use: its affinity, capped by a cgroup CPU quota (rounded up: 1.5 cores -> 2)."""
    cpus = allowed_cpus() if cpus is None else cpus
    if cpu_max is None:
        try:
            cpu_max = CGROUP_CPU_MAX.read_text(encoding="ascii")
        except OSError:
            cpu_max = ""
    quota = quota_cores(cpu_max)
    cores = len(cpus) if quota is None else min(len(cpus), math.ceil(quota))
    return max(1, cores)


def fixed_by_user() -> int | None:
    """A thread count the user set for this process: CTDIFFUSION_THREADS, else OMP_NUM_THREADS."""
    for name in ("CTDIFFUSION_THREADS", "OMP_NUM_THREADS"):
        text = os.environ.get(name, "").strip()
        if text.isdigit() and int(text) > 0:
            return int(text)
    return None


def threads_for(cores: int, busy_elsewhere: float) -> int:
    """Threads that fit on the free cores: `busy_elsewhere` is how many cores other processes keep busy."""
    return int(min(cores, max(1, round(cores - busy_elsewhere))))


@dataclass(frozen=True)
class CpuReading:
    """Counters at one moment: per CPU (busy seconds, total seconds) since boot, and this process's CPU seconds."""

    at: float  # time.monotonic()
    cpus: tuple[tuple[float, float], ...]
    own: float


def read_cpu() -> CpuReading:
    """psutil's counters now. Busy = total less idle and iowait, guest time being inside user time (as psutil's
    cpu_percent counts it); steal counts as busy: a core the hypervisor lends elsewhere is not ours either."""
    cpus = []
    for t in psutil.cpu_times(percpu=True):
        total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
        cpus.append((total - t.idle - getattr(t, "iowait", 0.0), total))
    own = psutil.Process().cpu_times()
    return CpuReading(time.monotonic(), tuple(cpus), own.user + own.system)


def busy_elsewhere(before: CpuReading, after: CpuReading, cpus: list[int], cores: int) -> float:
    """Cores kept busy by other processes between two readings: the busy share of each allowed CPU, summed, less
    this process's CPU time over the wall time, scaled to the `cores` a quota leaves of the allowed CPUs."""
    busy = 0.0
    for i in cpus:
        if i >= len(after.cpus) or i >= len(before.cpus):
            continue
        d_busy = after.cpus[i][0] - before.cpus[i][0]
        d_total = after.cpus[i][1] - before.cpus[i][1]
        if d_total > 0:
            busy += min(1.0, max(0.0, d_busy / d_total))
    wall = after.at - before.at
    own = (after.own - before.own) / wall if wall > 0 else 0.0
    others = max(0.0, busy - own)
    return min(float(cores), others * cores / max(1, len(cpus)))


class ThreadGovernor:
    """Sets torch's intra-op threads when created (from the load over a START_SAMPLE_S pause), FIRST_CHECK_S seconds
    later and then every RECHECK_S seconds; call `tick()` often (each training report, each sampling step): it does
    nothing until a choice is due. `reader` and `sleep` are the counters and the pause (tests inject both)."""

    def __init__(self, device: torch.device, recheck_s: float = RECHECK_S, first_check_s: float = FIRST_CHECK_S,
                 reader=read_cpu, sleep=time.sleep, start_sample_s: float = START_SAMPLE_S):
        fixed = fixed_by_user()
        self.enabled = device.type == "cpu" and fixed is None
        if device.type == "cpu" and fixed is not None and fixed != torch.get_num_threads():
            torch.set_num_threads(fixed)  # CTDIFFUSION_THREADS: torch itself reads only OMP_NUM_THREADS
        self.recheck_s = recheck_s
        self.read = reader
        self.cpus = allowed_cpus()
        self.cores = usable_cores(self.cpus)
        self.threads = torch.get_num_threads()
        self._reading = None
        if self.enabled:
            self._reading = self.read()
            sleep(start_sample_s)  # a short look at the CPUs before the first step (own time is subtracted)
            self._choose()
        self._due = time.monotonic() + first_check_s

    def tick(self, now: float | None = None) -> int | None:
        """Re-choose when due; returns the new count when it changed, else None."""
        if not self.enabled:
            return None
        now = time.monotonic() if now is None else now
        if now < self._due:
            return None
        self._due = now + self.recheck_s
        return self._choose()

    def _choose(self) -> int | None:
        """Threads for the load since the last reading; sets and returns the count when it changed, else None."""
        reading = self.read()
        busy = busy_elsewhere(self._reading, reading, self.cpus, self.cores)
        self._reading = reading
        wanted = threads_for(self.cores, busy)
        if wanted == self.threads:
            return None
        log.info("CPU threads: %d -> %d (%d usable cores, %.1f of them busy with other work)", self.threads, wanted,
                 self.cores, busy)
        torch.set_num_threads(wanted)
        self.threads = wanted
        return wanted
