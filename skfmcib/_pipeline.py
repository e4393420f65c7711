"""Ordered prefetching: run per-image work in background threads, consume in order."""

from __future__ import annotations

import itertools
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

_END = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _next(q: queue.Queue, check: Callable[[], None] | None):
    """The next item of ``q``; ``check()`` about every 50 ms while waiting."""
    if check is None:
        return q.get()
    while True:
        check()
        try:
            return q.get(timeout=0.05)
        except queue.Empty:
            continue


def prefetch(
    tasks: Iterable[Callable[[], Iterable[T]]],
    n_threads: int,
    buffer: int = 8,
    ahead: int = 4,
    running: Callable[[], int] | None = None,
    check: Callable[[], None] | None = None,
) -> Iterator[T]:
    """Yield the items of each task's iterable, in task order, computed ahead in threads.

    Parameters
    ----------
    tasks : iterable of callables
        Each returns an iterable (typically a generator over one image's lesions).
    n_threads : int
        Background threads. 0 runs every task in the calling thread, when its items
        are asked for.
    buffer : int, default=8
        Items a task may compute ahead of the consumer.
    ahead : int, default=4
        Tasks queued beyond those running: the threads go on to the next images while
        the consumer is busy (encoding) instead of waiting for it. At most
        ``(n_threads + ahead) * buffer`` items are held.
    running : callable, optional
        Returns how many tasks may run at once now (1 to ``n_threads``); asked before
        each task starts. Default: ``n_threads``. Lets the caller read with every core
        while nothing else runs, and with fewer once its own work starts.
    check : callable, optional
        Called while the consumer waits for an item (about every 50 ms) and before
        each item is yielded; an exception it raises (work the caller runs beside
        the threads has failed, say) stops the threads and is raised here at once.

    Yields
    ------
    Items of the tasks, in order. An exception raised by a task is raised here, in
    the consumer, when its turn comes. Closing the generator stops the threads.
    """
    if n_threads <= 0:
        for task in tasks:
            for item in task():
                if check is not None:
                    check()
                yield item
        return
    stop = threading.Event()
    gate = threading.Condition()
    active = [0]
    next_start = [0]  # tasks start in submission order
    pending: deque[queue.Queue] = deque()
    todo = iter(tasks)

    def put(q: queue.Queue, item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def allowed() -> int:
        return n_threads if running is None else max(1, min(n_threads, running()))

    def run(task: Callable[[], Iterable[T]], q: queue.Queue, ticket: int) -> None:
        # In submission order, so that the task the consumer waits for always runs.
        with gate:
            while (next_start[0] != ticket or active[0] >= allowed()) and not stop.is_set():
                gate.wait(0.02)
            next_start[0] += 1
            active[0] += 1
            gate.notify_all()
        try:
            if stop.is_set():
                return
            for item in task():
                if not put(q, item):
                    return
        except BaseException as exc:  # handed to the consumer
            put(q, _Failure(exc))
            return
        finally:
            with gate:
                active[0] -= 1
                gate.notify_all()
        put(q, _END)

    executor = ThreadPoolExecutor(max(1, n_threads), thread_name_prefix="skfmcib-read")

    tickets = itertools.count()

    def submit() -> None:
        task = next(todo, None)
        if task is not None:
            q: queue.Queue = queue.Queue(maxsize=max(1, buffer))
            executor.submit(run, task, q, next(tickets))
            pending.append(q)

    try:
        for _ in range(n_threads + max(1, ahead)):
            submit()
        while pending:
            item = _next(pending[0], check)
            if item is _END:
                pending.popleft()
                submit()
            elif isinstance(item, _Failure):
                raise item.exc
            else:
                yield item
    finally:
        stop.set()
        executor.shutdown(wait=True, cancel_futures=True)
