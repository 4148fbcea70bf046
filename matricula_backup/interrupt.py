"""Ctrl-C and SIGTERM: stop at a point where nothing S3 confirmed is forgotten.

Outside S3 work a signal raises KeyboardInterrupt at once (a scan or a query
is simply abandoned: its transaction rolls back). While uploads or deletes
are in flight (:func:`deferred`), raising at an arbitrary bytecode could drop
a result S3 already confirmed (for example between submitting an upload and
remembering it), which would cost a second PUT next run. There the handler
only notes the request; the loop calls :func:`check` at safe points, lets the
requests in flight finish and records them, then stops.

The handler sets a plain attribute, never a lock: a second signal arriving
while the first handler runs must not deadlock.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class _State:
    signum: int | None = None
    deferring = 0


_state = _State()


def install() -> None:
    """Route SIGINT and SIGTERM (systemd's stop) through :func:`_handler`."""
    forget()
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)


def forget() -> None:
    """Forget a stop asked for earlier (a new command starts)."""
    _state.signum = None


def _handler(signum: int, _frame: FrameType | None) -> None:
    if _state.signum is None:
        _state.signum = signum
    if not _state.deferring:
        raise KeyboardInterrupt(f"signal {signum}")


def requested() -> bool:
    """Whether a stop was asked for (safe to call from any thread)."""
    return _state.signum is not None


def check() -> None:
    """Raise KeyboardInterrupt here if a stop was asked for while deferred."""
    if _state.signum is not None:
        raise KeyboardInterrupt(f"signal {_state.signum}")


@contextmanager
def deferred() -> Iterator[None]:
    """Within this block a signal is only noted; the block calls :func:`check`.

    A stop asked for too late for the block's own checks is raised on leaving it.
    """
    _state.deferring += 1
    try:
        yield
    finally:
        _state.deferring -= 1
    if not _state.deferring:
        check()
