"""The CPU thread count follows the cores that are free, and leaves a count the user fixed alone.

The decision rule is tested with injected readings (affinity, cgroup quota, per-CPU counters, this process's CPU
time): no timing thresholds. One test runs a real competing process to check that the counters see it."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from CTDiffusionLib import threads
from CTDiffusionLib.threads import CpuReading, ThreadGovernor, busy_elsewhere, quota_cores, threads_for, usable_cores


@pytest.fixture
def unfixed(monkeypatch):
    """No user-fixed count, and torch's thread count restored after the test."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("CTDIFFUSION_THREADS", raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def four_cpus(monkeypatch, unfixed):
    """A process allowed on 4 CPUs without a quota."""
    monkeypatch.setattr(threads, "allowed_cpus", lambda: [0, 1, 2, 3])
    monkeypatch.setattr(threads, "usable_cores", lambda cpus: len(cpus))


def reading(at: float, busy: list[float], own: float, total_per_cpu: float | None = None) -> CpuReading:
    """Counters as if `busy[i]` seconds of CPU i were busy out of `at` seconds (or `total_per_cpu`)."""
    total = at if total_per_cpu is None else total_per_cpu
    return CpuReading(at, tuple((b, total) for b in busy), own)


def test_threads_fit_the_free_cores():
    assert threads_for(2, 0.0) == 2
    assert threads_for(2, 1.0) == 1  # one competing job on 2 cores: 1 thread (measured 2x faster than 2)
    assert threads_for(2, 3.0) == 1  # never fewer than one
    assert threads_for(16, 3.4) == 13


def test_usable_cores_are_the_affinity_capped_by_a_quota():
    assert usable_cores([0, 1, 2, 3], "max 100000\n") == 4
    assert usable_cores([0, 1, 2, 3], "200000 100000\n") == 2  # docker --cpus 2
    assert usable_cores([0, 1, 2, 3], "150000 100000") == 2  # 1.5 cores: two threads share them
    assert usable_cores([5], "800000 100000") == 1  # taskset to one CPU
    assert quota_cores("") is None and quota_cores("garbage") is None and quota_cores("50000 100000") == 0.5


def test_busy_elsewhere_counts_only_the_allowed_cpus_less_our_own_time():
    before = reading(0.0, [0.0, 0.0, 0.0, 0.0], own=0.0)
    # 10 s: CPUs 0 and 1 fully busy, of which this process used 1 core; CPUs 2 and 3 (not ours) fully busy
    after = reading(10.0, [10.0, 10.0, 10.0, 10.0], own=10.0)
    assert busy_elsewhere(before, after, [0, 1], cores=2) == pytest.approx(1.0)
    # the same counters seen by a process allowed on all four CPUs: three cores busy elsewhere
    assert busy_elsewhere(before, after, [0, 1, 2, 3], cores=4) == pytest.approx(3.0)
    # a quota of 2 cores over 4 allowed CPUs: the load is taken as spread evenly, so 3 of 4 busy -> 1.5 of 2
    assert busy_elsewhere(before, after, [0, 1, 2, 3], cores=2) == pytest.approx(1.5)
    # our own time is never counted as someone else's, even when the counters disagree slightly
    idle = reading(10.0, [4.0, 4.0, 0.0, 0.0], own=9.0)
    assert busy_elsewhere(before, idle, [0, 1], cores=2) == 0.0


def test_busy_share_uses_each_cpus_own_total():
    before = reading(0.0, [0.0, 0.0], own=0.0, total_per_cpu=0.0)
    # half of each CPU's ticks busy, none of it ours: one core's worth of other work
    after = reading(10.0, [5.0, 5.0], own=0.0, total_per_cpu=10.0)
    assert busy_elsewhere(before, after, [0, 1], cores=2) == pytest.approx(1.0)


def test_a_count_the_user_fixed_is_kept_and_applied(unfixed, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert not ThreadGovernor(torch.device("cpu")).enabled
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setenv("CTDIFFUSION_THREADS", "3")
    assert threads.fixed_by_user() == 3
    gov = ThreadGovernor(torch.device("cpu"))
    assert not gov.enabled and torch.get_num_threads() == 3  # torch itself does not read CTDIFFUSION_THREADS
    assert gov.tick(1e9) is None
    monkeypatch.delenv("CTDIFFUSION_THREADS")
    assert ThreadGovernor(torch.device("cpu")).enabled
    assert not ThreadGovernor(torch.device("cuda")).enabled


class FakeCounters:
    """Injected readings: `load` other cores busy on a 4-CPU machine, this process using `own` cores."""

    def __init__(self):
        self.t, self.busy, self.own_s = 0.0, [0.0] * 4, 0.0
        self.load, self.own = 0.0, 2.0

    def advance(self, seconds: float) -> None:
        used = min(4.0, self.load + self.own)
        self.t += seconds
        self.busy = [b + seconds * used / 4 for b in self.busy]
        self.own_s += seconds * self.own

    def __call__(self) -> CpuReading:
        return reading(self.t, self.busy, self.own_s)


def test_the_first_choice_comes_before_the_first_step(four_cpus):
    fake = FakeCounters()
    fake.load, fake.own = 3.0, 0.0  # three busy processes while this one pauses
    gov = ThreadGovernor(torch.device("cpu"), reader=fake, sleep=fake.advance)
    assert gov.threads == 1 and torch.get_num_threads() == 1
    assert fake.t == threads.START_SAMPLE_S  # one short pause, not a wait for the first re-check
    fake.load = 0.0
    gov = ThreadGovernor(torch.device("cpu"), reader=fake, sleep=fake.advance)
    assert gov.threads == 4 and torch.get_num_threads() == 4


def test_governor_adapts_while_the_run_goes_on(four_cpus):
    fake = FakeCounters()
    gov = ThreadGovernor(torch.device("cpu"), recheck_s=15.0, first_check_s=2.0, reader=fake, sleep=fake.advance)
    assert gov.threads == 4  # idle at the start
    start = gov._due - 2.0
    fake.load, fake.own = 2.2, 1.8  # a competing job starts with the run
    fake.advance(1.0)
    assert gov.tick(start + 1.0) is None  # not due yet, and nothing read
    fake.advance(1.5)
    assert gov.tick(start + 2.5) == 2 and torch.get_num_threads() == 2  # a second look after 2 s, not after 15
    fake.own = 2.0
    fake.advance(10.0)
    assert gov.tick(start + 12.5) is None  # not due again before 15 s
    fake.advance(5.0)
    assert gov.tick(start + 17.5) is None  # same load: same count
    fake.load = 0.0  # the competitor ended
    fake.advance(15.0)
    assert gov.tick(start + 32.5) == 4 and torch.get_num_threads() == 4
    fake.load, fake.own = 3.0, 1.0  # three competitors
    fake.advance(15.0)
    assert gov.tick(start + 47.5) == 1 and torch.get_num_threads() == 1


def test_governor_reads_the_load_between_its_own_choices(four_cpus):
    """Each choice uses the counters since the previous choice, not since the start: an old load is forgotten."""
    fake = FakeCounters()
    gov = ThreadGovernor(torch.device("cpu"), recheck_s=15.0, first_check_s=2.0, reader=fake, sleep=fake.advance)
    start = gov._due - 2.0
    fake.load = 2.0
    fake.advance(600.0)  # ten busy minutes before the first choice
    assert gov.tick(start + 600.0) == 2
    fake.load = 0.0
    fake.advance(15.0)
    assert gov.tick(start + 615.0) == 4  # a since-the-start average would still say 1.95 cores busy


def test_read_cpu_sees_a_competing_process(unfixed):
    """The real counters: a busy child process shows up as busy elsewhere (it is not this process)."""
    cpus = threads.allowed_cpus()
    before = threads.read_cpu()
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.5)
        after = threads.read_cpu()
    finally:
        busy.kill()
        busy.wait()
    assert after.own - before.own < 0.5 * (after.at - before.at)  # this process slept
    assert busy_elsewhere(before, after, cpus, len(cpus)) >= 0.5
