"""Runs at a time: each run is a child process, launched from a thread of a small pool.

Threads only wait on their child, so ``jobs`` threads keep ``jobs`` cores busy. A slot
semaphore bounds the children to ``jobs`` even while the main thread tunes a cell (each
tuning trial is a child too). With one job everything runs inline, in order, in the main
thread: the exact sequential loop, and what tests use to check order.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from typing import Any


class RunPool:
    """Submit jobs, wait for them (re-raising the first error), stop on an interrupt."""

    def __init__(self, jobs: int) -> None:
        self.jobs = max(1, jobs)
        self.stopped = threading.Event()
        self._slots = threading.Semaphore(self.jobs)
        self._executor = ThreadPoolExecutor(self.jobs) if self.jobs > 1 else None

    def submit(self, function: Callable[..., Any], *args: Any) -> Future[Any]:
        """Start ``function(*args)`` (inline with one job: it has run when this returns)."""
        if self._executor is None:
            done: Future[Any] = Future()
            done.set_result(function(*args))
            return done
        return self._executor.submit(self._in_slot, function, *args)

    def _in_slot(self, function: Callable[..., Any], *args: Any) -> Any:
        with self._slots:
            if self.stopped.is_set():  # interrupted while this job waited for a slot
                return None
            return function(*args)

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one slot in the calling thread (a tuning search: one child at a time)."""
        with self._slots if self._executor is not None else nullcontext():
            yield

    @staticmethod
    def wait(futures: Iterable[Future[Any]]) -> None:
        for future in list(futures):
            future.result()

    def close(self, *, interrupted: bool = False) -> None:
        """Drop the jobs not started when interrupted; wait for those in flight."""
        if interrupted:
            self.stopped.set()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=interrupted)
