"""``backup.max_bandwidth``: one token bucket shared by all upload threads.

Request bodies are wrapped so that every chunk the HTTP client reads waits for
its share of the budget: the link is used evenly, not in bursts of whole files.
"""

from __future__ import annotations

import io
import re
import threading
import time

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b|b)?\s*(?:/\s*s)?\s*$", re.IGNORECASE)


def parse_rate(text: str) -> int:
    """'20MB/s' -> 20000000 bytes per second; '512KiB/s', '1.5 MB/s', '100000' work too."""
    match = _RATE.match(text)
    if not match:
        raise ValueError(text)
    number, unit = match.groups()
    rate = int(float(number) * _UNITS[(unit or "").lower()])
    if rate <= 0:
        raise ValueError(text)
    return rate


class Throttle:
    """A token bucket: ``rate`` bytes per second, bursts of at most a quarter second."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.capacity = max(rate // 4, 64 * 1024)
        self._tokens = float(self.capacity)
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def consume(self, amount: int) -> None:
        while amount > 0:
            take = min(amount, self.capacity)
            with self._lock:
                now = time.monotonic()
                self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
                self._last = now
                wait = (take - self._tokens) / self.rate if self._tokens < take else 0.0
                self._tokens -= take  # may go negative: the debt is what ``wait`` pays off
            if wait > 0:
                time.sleep(wait)
            amount -= take


class ThrottledBody(io.BytesIO):
    """The bytes of a PUT or part, read no faster than the throttle allows."""

    def __init__(self, data: bytes, throttle: Throttle) -> None:
        super().__init__(data)
        self._throttle = throttle

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        self._throttle.consume(len(chunk))
        return chunk
