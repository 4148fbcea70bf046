"""A fault-injecting loopback proxy in front of the S3 server.

Built on :class:`tests.s3proxy.CountingProxy`: a request that reaches the S3
server is counted in ``requests`` exactly as there (so ``requests["PUT object"]``
is the number of PutObject/UploadPart requests the server saw). A request that
is answered or dropped by the proxy itself never reaches the server; it is
counted in ``faults`` (by fault kind) and ``faulted`` (by request label) instead.

For a share ``rate`` of the requests (drawn from a seeded ``random.Random``),
optionally only for some request labels (``"PUT object"``, ``"POST delete"``,
the labels of ``CountingProxy.requests``) or methods, one of ``kinds`` is done:

``slowdown``
    answer 503 with S3's SlowDown error body (not forwarded);
``internal``
    answer 500 InternalError (not forwarded);
``drop``
    read the request, then close the connection without answering (not forwarded);
``delay``
    forward the request at once, send the answer ``delay`` seconds later (a
    client with a shorter read timeout gives up although the server did the work);
``lost``
    forward the request, then close the connection without the answer (the
    server did the work, the client never hears of it);
``delete_errors``
    for DeleteObjects only (elsewhere it acts as ``internal``): answer 200 with a
    per-key ``InternalError`` for every key of the request (not forwarded), as S3
    does when some deletes of a batch fail;
``denied``
    answer 403 AccessDenied (not forwarded), as S3 does to keys whose IAM
    policy lacks the action;
``unsupported``
    answer 501 NotImplemented (not forwarded), as S3-compatible servers do for
    features they lack.

Everything binds 127.0.0.1. Usage::

    proxy = FaultProxy(moto_url, seed=1).start()
    proxy.configure(rate=0.3, kinds=("slowdown", "internal", "drop"))
    ...
    proxy.configure(rate=0)  # faults off
    proxy.stop()
"""

from __future__ import annotations

import io
import random
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Collection, Sequence
from typing import Any

from testkit.classify import classify
from tests.s3proxy import CountingProxy, _Handler

KINDS = ("slowdown", "internal", "drop", "delay", "lost", "delete_errors", "denied", "unsupported")

SLOWDOWN_BODY = (
    b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
)
DENIED_BODY = b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
UNSUPPORTED_BODY = (
    b"<Error><Code>NotImplemented</Code>"
    b"<Message>A header you provided implies functionality that is not implemented</Message>"
    b"</Error>"
)
INTERNAL_BODY = (
    b"<Error><Code>InternalError</Code>"
    b"<Message>We encountered an internal error. Please try again.</Message></Error>"
)


class FaultProxy(CountingProxy):
    """CountingProxy that fails a configurable share of the requests."""

    def __init__(
        self,
        upstream: str,
        *,
        rate: float = 0.0,
        kinds: Sequence[str] = ("slowdown", "internal", "drop"),
        only: Collection[str] | None = None,
        methods: Collection[str] | None = None,
        delay: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__(upstream)
        self.RequestHandlerClass = _FaultHandler
        self.random = random.Random(seed)
        self.faults: Counter[str] = Counter()  # injected faults by kind
        self.faulted: Counter[str] = Counter()  # injected faults by request label
        self.seen = 0  # requests that reached the proxy (forwarded or not)
        self._fault_lock = threading.Lock()
        self.rate = 0.0
        self.kinds: tuple[str, ...] = ()
        self.only: frozenset[str] | None = None
        self.methods: frozenset[str] | None = None
        self.delay = delay
        self.configure(rate=rate, kinds=kinds, only=only, methods=methods, delay=delay)

    def configure(
        self,
        *,
        rate: float,
        kinds: Sequence[str] = ("slowdown", "internal", "drop"),
        only: Collection[str] | None = None,
        methods: Collection[str] | None = None,
        delay: float | None = None,
    ) -> None:
        """Replace the fault plan (every argument not given takes its default)."""
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds: {sorted(unknown)}; known: {KINDS}")
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be within 0..1, not {rate}")
        if rate and not kinds:
            raise ValueError("a fault rate needs at least one kind")
        with self._fault_lock:
            self.rate = rate
            self.kinds = tuple(kinds)
            self.only = frozenset(only) if only is not None else None
            self.methods = frozenset(m.upper() for m in methods) if methods is not None else None
            if delay is not None:
                self.delay = delay

    def start(self) -> FaultProxy:
        super().start()
        return self

    def off(self) -> None:
        self.configure(rate=0.0)

    def choose(self, method: str, label: str) -> str | None:
        """The fault to inject into this request, or None to forward it."""
        with self._fault_lock:
            self.seen += 1
            if self.rate <= 0:
                return None
            if self.only is not None and label not in self.only:
                return None
            if self.methods is not None and method not in self.methods:
                return None
            if self.random.random() >= self.rate:
                return None
            kind = self.random.choice(self.kinds)
            self.faults[kind] += 1
            self.faulted[label] += 1
            return kind

    @property
    def injected(self) -> int:
        with self._fault_lock:
            return sum(self.faults.values())

    def reset_counts(self) -> None:
        super().reset_counts()
        with self._fault_lock:
            self.faults.clear()
            self.faulted.clear()
            self.seen = 0

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up (killed, or gave up after a read timeout) is normal here.
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


class _FaultHandler(_Handler):
    server: FaultProxy

    def _forward(self) -> None:
        if self.path.startswith("/moto-api"):
            super()._forward()
            return
        label = classify(self.command, self.path, self.headers)
        fault = self.server.choose(self.command, label)
        if fault is None:
            super()._forward()
        elif fault in ("delay", "lost"):
            self._forward_then(fault)
        else:
            body = self._read_body()
            if fault == "drop":
                self.close_connection = True
            elif fault == "slowdown":
                self._answer(503, "Slow Down", SLOWDOWN_BODY)
            elif fault == "denied":
                self._answer(403, "Forbidden", DENIED_BODY)
            elif fault == "unsupported":
                self._answer(501, "Not Implemented", UNSUPPORTED_BODY)
            elif fault == "delete_errors" and label == "POST delete":
                self._answer(200, "OK", _delete_errors(body or b""))
            else:
                self._answer(500, "Internal Server Error", INTERNAL_BODY)

    def _forward_then(self, fault: str) -> None:
        """Forward the request, keeping the answer; send it late, or never."""
        real = self.wfile
        held = io.BytesIO()
        self.wfile = held
        try:
            super()._forward()
        finally:
            self.wfile = real
        if fault == "lost":
            self.close_connection = True
            return
        time.sleep(self.server.delay)
        self.wfile.write(held.getvalue())

    def _read_body(self) -> bytes | None:
        # A client killed in the middle of its request must not make the proxy
        # forward a truncated body: S3 would never see such a request.
        try:
            body = super()._read_body()
        except ValueError as exc:  # a broken chunked body
            raise ConnectionAbortedError("incomplete chunked request body") from exc
        expected = self.headers.get("Content-Length")
        if (
            expected
            and self.headers.get("Transfer-Encoding", "").lower() != "chunked"
            and len(body or b"") != int(expected)
        ):
            raise ConnectionAbortedError("incomplete request body")
        return body

    def _answer(self, status: int, reason: str, body: bytes) -> None:
        self.send_response(status, reason)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amz-request-id", "FAULTPROXY")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    # The base class binds these to its own _forward: bind them to ours.
    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward


def _delete_errors(request_body: bytes) -> bytes:
    """A DeleteObjects answer in which every key of the request failed."""
    # The keys stay XML-escaped as the client sent them.
    keys = re.findall(rb"<Key>(.*?)</Key>", request_body, flags=re.DOTALL)
    errors = b"".join(
        b"<Error><Key>" + key + b"</Key><Code>InternalError</Code>"
        b"<Message>We encountered an internal error. Please try again.</Message></Error>"
        for key in keys
    )
    return (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<DeleteResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        + errors
        + b"</DeleteResult>"
    )
