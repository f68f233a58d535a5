"""How many CPU threads torch should use: the cores this process may run on, less what other processes keep busy.

Oversubscribed threads wait on each other: measured on the 2-core development machine with the demo preset at
48x48x12 and one competing busy process, 2 torch threads made 0.91 steps/s and 1 thread 1.79 (docs/performance.md).
Users train beside Slicer's GUI, a test run or other jobs, so the count is chosen from the cores actually free and
re-chosen while the run goes on. A count the user fixed (OMP_NUM_THREADS, or CTDIFFUSION_THREADS) is left alone.
"""

from __future__ import annotations

import logging
import os
import time

import psutil
import torch

log = logging.getLogger("ctdiffusion")
RECHECK_S = 15.0  # seconds between re-choices: long enough to average load, short enough to follow a new job


def usable_cores() -> int:
    """Cores this process may run on (its affinity, e.g. under taskset or a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


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


class ThreadGovernor:
    """Sets torch's intra-op threads now and at most every RECHECK_S seconds after (call `tick()` once per step).

    The load of other processes is the machine's busy time less this process's own, both measured since the last
    choice, scaled to the cores this process may use."""

    def __init__(self, device: torch.device, recheck_s: float = RECHECK_S):
        self.enabled = device.type == "cpu" and fixed_by_user() is None
        self.recheck_s = recheck_s
        self.cores = usable_cores()
        self.process = psutil.Process()
        self.threads = torch.get_num_threads()
        self._last = 0.0
        if self.enabled:
            psutil.cpu_percent(None)  # start both measurements now
            self.process.cpu_percent(None)
            self._last = time.monotonic()

    def busy_elsewhere(self) -> float:
        """Cores kept busy by other processes since the last call (0 .. all cores of the machine)."""
        machine_cores = psutil.cpu_count() or self.cores
        total = psutil.cpu_percent(None) / 100.0 * machine_cores
        own = self.process.cpu_percent(None) / 100.0
        return max(0.0, (total - own) * self.cores / machine_cores)

    def tick(self, now: float | None = None) -> int | None:
        """Re-choose when due; returns the new count when it changed, else None."""
        if not self.enabled:
            return None
        now = time.monotonic() if now is None else now
        if now - self._last < self.recheck_s:
            return None
        self._last = now
        busy = self.busy_elsewhere()
        wanted = threads_for(self.cores, busy)
        if wanted == self.threads:
            return None
        log.info("CPU threads: %d -> %d (%d usable cores, %.1f of them busy with other work)", self.threads, wanted,
                 self.cores, busy)
        torch.set_num_threads(wanted)
        self.threads = wanted
        return wanted
