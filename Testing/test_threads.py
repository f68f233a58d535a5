"""The CPU thread count follows the cores that are free, and leaves a count the user fixed alone."""

from __future__ import annotations

import subprocess
import sys
import time

import torch

from CTDiffusionLib import threads
from CTDiffusionLib.threads import ThreadGovernor, threads_for


def test_threads_fit_the_free_cores():
    assert threads_for(2, 0.0) == 2
    assert threads_for(2, 1.0) == 1  # one competing job on 2 cores: 1 thread (measured 2x faster than 2)
    assert threads_for(2, 3.0) == 1  # never fewer than one
    assert threads_for(16, 3.4) == 13


def test_a_count_the_user_fixed_is_kept(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert not ThreadGovernor(torch.device("cpu")).enabled
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setenv("CTDIFFUSION_THREADS", "3")
    assert threads.fixed_by_user() == 3
    monkeypatch.delenv("CTDIFFUSION_THREADS")
    assert ThreadGovernor(torch.device("cpu")).enabled
    assert not ThreadGovernor(torch.device("cuda")).enabled


def test_governor_rechooses_when_due(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("CTDIFFUSION_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        gov = ThreadGovernor(torch.device("cpu"), recheck_s=10.0)
        gov.cores, gov.threads = 4, 4
        monkeypatch.setattr(gov, "busy_elsewhere", lambda: 2.2)
        start = gov._last
        assert gov.tick(start + 1.0) is None  # not due yet
        assert gov.tick(start + 11.0) == 2 and torch.get_num_threads() == 2
        assert gov.tick(start + 30.0) is None  # unchanged load, unchanged count
        monkeypatch.setattr(gov, "busy_elsewhere", lambda: 0.0)
        assert gov.tick(start + 45.0) == 4 and torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(before)


def test_busy_elsewhere_sees_a_competing_process(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("CTDIFFUSION_THREADS", raising=False)
    gov = ThreadGovernor(torch.device("cpu"))
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        gov.busy_elsewhere()  # restart the measurement now that the competitor runs
        time.sleep(1.5)
        assert gov.busy_elsewhere() >= 0.5
    finally:
        busy.kill()
        busy.wait()
