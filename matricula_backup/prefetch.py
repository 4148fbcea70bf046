"""An iterator run on a thread of its own, a bounded number of items ahead of its reader.

Used where a producer waits on I/O and the reader has work of its own to do
meanwhile: the scan reads the walk's pipe while it writes the previous batch to
SQLite (``scan.py``), the restore lists the next pages of versions while the
objects of the pages already listed are downloaded (``restore.py``).

The queue is bounded, so memory stays flat however fast the producer is.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

_END = object()


@dataclass(frozen=True)
class _Failed:
    error: BaseException


@contextlib.contextmanager
def prefetched(source: Iterator[T], depth: int, name: str) -> Iterator[Iterator[T]]:
    """``source`` run on a thread named ``name``, at most ``depth`` items ahead of the reader.

    An exception in ``source`` is raised by the reader at that point. Leaving the
    block early (an error, Ctrl-C) stops the thread at its next item; the block
    waits for it, so anything ``source`` holds is free again afterwards (a source
    blocked in a read must be unblocked by the caller first, e.g. by ending the
    process it reads from).
    """
    ahead: queue.Queue[Any] = queue.Queue(depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                ahead.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in source:
                if not put(item):
                    return
        except BaseException as exc:  # handed to the reader, which raises it
            put(_Failed(exc))
            return
        put(_END)

    def consume() -> Iterator[T]:
        while True:
            item = ahead.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        yield consume()
    finally:
        stop.set()
        thread.join()
