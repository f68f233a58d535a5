"""The input prefetcher the trainer uses on GPUs (on CPUs it builds inputs inline; CI has no GPU, so test it here)."""

import threading

import pytest

from CTDiffusionLib.training.prefetch import Prefetcher


def test_prefetcher_returns_each_steps_inputs_and_builds_the_next_one_ahead():
    built: list[int] = []
    ahead = threading.Event()

    def make(step: int) -> int:
        built.append(step)
        if step == 4:
            ahead.set()
        return step * 10

    prefetch = Prefetcher(make)
    try:
        assert prefetch.get(3) == 30
        assert ahead.wait(5)  # step 4 was started before anyone asked for it
        assert prefetch.get(4) == 40
        assert prefetch.get(9) == 90  # a jump (resume) builds the asked step, not the stale one
    finally:
        prefetch.close()
    assert built.count(4) == 1 and 9 in built


def test_prefetcher_re_raises_the_workers_error_in_the_caller():
    def make(step: int) -> int:
        if step == 1:
            raise ValueError("sample 1 is unreadable")
        return step

    prefetch = Prefetcher(make)
    try:
        assert prefetch.get(0) == 0
        with pytest.raises(ValueError, match="sample 1 is unreadable"):
            prefetch.get(1)
    finally:
        prefetch.close()
