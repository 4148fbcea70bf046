"""Signals during S3 work are noted and acted on at safe points (interrupt.py)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from matricula_backup import interrupt


@pytest.fixture
def installed() -> Iterator[None]:
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    interrupt.install()
    yield
    signal.signal(signal.SIGINT, before[0])
    signal.signal(signal.SIGTERM, before[1])
    interrupt.forget()


def test_outside_s3_work_a_signal_stops_at_once(installed: None) -> None:
    with pytest.raises(KeyboardInterrupt, match="signal 15"):
        os.kill(os.getpid(), signal.SIGTERM)
        signal.sigtimedwait([], 0)  # let the handler run


def test_inside_s3_work_a_signal_waits_for_the_next_check(installed: None) -> None:
    reached = []
    with pytest.raises(KeyboardInterrupt, match="signal 2"), interrupt.deferred():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)  # a second signal is no harder stop
        reached.append("after the signals")  # nothing raised in between
        assert interrupt.requested()
        reached.append("checked")
        interrupt.check()
    assert reached == ["after the signals", "checked"]


def test_a_signal_too_late_for_any_check_is_raised_on_leaving(installed: None) -> None:
    with pytest.raises(KeyboardInterrupt), interrupt.deferred():
        with interrupt.deferred():  # nested: only the outermost block raises
            os.kill(os.getpid(), signal.SIGTERM)
        assert interrupt.requested()
