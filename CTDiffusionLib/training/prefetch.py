"""Build the next step's inputs on a worker thread while the current step trains.

Every step's inputs are a pure function of the step number (trainer.step_inputs), so building them early changes
nothing but the wall-clock time: augmentation (NumPy/SciPy, which release the GIL) overlaps the GPU step.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Prefetcher(Generic[T]):
    def __init__(self, make: Callable[[int], T]):
        self._make = make
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ctdiffusion-prefetch")
        self._next: tuple[int, Future] | None = None

    def get(self, step: int) -> T:
        """Inputs of `step` (waiting for the worker if it is still busy); starts building step + 1."""
        if self._next is not None and self._next[0] == step:
            future = self._next[1]
        else:
            future = self._pool.submit(self._make, step)
        self._next = (step + 1, self._pool.submit(self._make, step + 1))
        return future.result()  # re-raises the worker's exception (e.g. an unreadable sample) in the trainer

    def close(self) -> None:
        if self._next is not None:
            self._next[1].cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
