"""The run's request budget, and the parts of one large file sent in parallel.

A far S3 region gives one TCP stream tens of MB/s (its window over the round
trip), so the parts of a large file go out side by side, as boto3, rclone and
s5cmd send them. They share one budget with the small files: ``backup.workers``
requests at a time in all, whatever mix of single PUTs, parts, HEADs and
multipart Create/Complete is in flight (:class:`RequestSlots`).

Memory: a part is read from the file while it is sent (``s3.FileRange``), so
parts in flight cost socket buffers, not a part size each. The bound of a run's
upload data is ``workers x multipart_threshold`` (single PUTs are read whole by
the ``workers`` upload threads) plus one ``s3.READ_CHUNK`` per thread hashing a
large file; the part size does not enter it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")


class RequestSlots:
    """At most ``size`` upload requests in flight across the run's threads."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self._free = threading.BoundedSemaphore(self.size)

    def acquire(self) -> None:
        self._free.acquire()

    def release(self) -> None:
        self._free.release()

    @contextmanager
    def held(self) -> Iterator[None]:
        """One request's slot, for the duration of the block."""
        self._free.acquire()
        try:
            yield
        finally:
            self._free.release()


class PartsStopped(Exception):
    """No further part was started because the run is stopping."""


def send_parts(
    slots: RequestSlots,
    count: int,
    send: Callable[[int], T],
    stopping: Callable[[], bool],
) -> list[T]:
    """``send(1) .. send(count)`` in parallel, each holding one slot; results in order.

    Parts start in order, each as soon as a slot is free. After a part failed
    (``send`` raised, its own retries spent) or ``stopping()`` turned true, no
    further part starts; the parts in flight finish, then the first failure is
    raised (or :class:`PartsStopped`), and the caller aborts the upload.
    """
    results: dict[int, T] = {}
    failed = threading.Event()

    def run(number: int) -> T:
        try:
            return send(number)
        except BaseException:
            failed.set()
            raise
        finally:
            slots.release()

    futures: list[Future[T]] = []
    stopped = False
    with ThreadPoolExecutor(min(slots.size, count), "part") as pool:
        for number in range(1, count + 1):
            slots.acquire()
            if failed.is_set():
                slots.release()
                break
            if stopping():
                slots.release()
                stopped = True
                break
            try:
                futures.append(pool.submit(run, number))
            except BaseException:
                slots.release()
                raise
        # Leaving the with block waits for every part in flight.
    for number, future in enumerate(futures, start=1):
        error = future.exception()
        if error is not None:
            raise error
        results[number] = future.result()
    if stopped or len(results) < count:
        raise PartsStopped
    return [results[number] for number in range(1, count + 1)]
