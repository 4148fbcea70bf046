"""The one loopback HTTP proxy in front of an S3 server, for tests and benchmarks.

Every S3 client under test (matricula-backup, rclone, aws s3 sync, s5cmd) is
pointed at the proxy instead of the S3 server, so each run's requests are
counted from the server's side, the same way for every tool, under the labels
of :func:`testkit.classify.classify` (``"PUT object"``, ``"PUT part"``,
``"POST delete"``, ...). It binds 127.0.0.1 only.

Counting
    ``requests`` counts the requests that reached the S3 server by label (a
    request answered or dropped by the proxy itself is not among them);
    ``log`` lists them as ``"METHOD path"``; ``status`` counts the server's
    status codes; ``errors`` the requests the proxy could not forward (502).
    ``in_flight`` and ``most`` give the requests under way now and at most at
    once, by label and ``"all"``: from the whole request received to just
    before its answer (the client is certainly waiting in between).

Delay (``delay_ms``)
    a fixed latency added to every request after it was received and before
    its answer, as a crude model of the distance to a real S3 endpoint: the
    delay is per request, in the request's own thread, so parallel requests
    wait in parallel.

Bandwidth cap (``bandwidth_mib``)
    caps each client connection at that many MiB/s in each direction (request
    bodies as they are read, answers as they are written): a model of one TCP
    stream over a long link. Parallel connections each get the cap; an idle
    connection saves no credit for later.

Request bodies
    up to ``STREAM_ABOVE`` bytes are read whole before forwarding (over a kept
    -alive upstream connection; the request is sent again when that connection
    turned out to be closed). Larger bodies (multipart parts) are forwarded as
    they arrive, at the connection's pace, over a fresh upstream connection, so
    a 128 MiB part costs no 128 MiB of memory and no store-then-forward delay.
    A body that ends early (a client killed in mid-request) is never forwarded
    complete: the proxy drops the upstream connection, so S3 sees a broken
    request, as it would from the client itself.

Faults (``configure``)
    for a share ``rate`` of the requests (drawn from a seeded
    ``random.Random``), optionally only for some labels (``only``) or methods,
    one of ``kinds`` is done:

    ``slowdown``       answer 503 with S3's SlowDown error body (not forwarded);
    ``internal``       answer 500 InternalError (not forwarded);
    ``drop``           read the request, then close the connection without answering;
    ``delay``          forward the request at once, send the answer ``delay``
                       seconds later (a client with a shorter read timeout gives
                       up although the server did the work);
    ``lost``           forward the request, then close the connection without the
                       answer (the server did the work, the client never hears);
    ``delete_errors``  for DeleteObjects only (elsewhere as ``internal``): answer
                       200 with a per-key ``InternalError`` for every key (not
                       forwarded), as S3 does when some deletes of a batch fail;
    ``denied``         answer 403 AccessDenied (not forwarded);
    ``unsupported``    answer 501 NotImplemented (not forwarded), as
                       S3-compatible servers do for features they lack.

    Injected faults are counted in ``faults`` (by kind) and ``faulted`` (by
    label); ``seen`` counts every request that reached the proxy, ``payloads``
    lists each one's label, path and ``X-Amz-Content-SHA256`` (what SigV4 signed
    as its body).

Usage::

    proxy = S3Proxy(moto_url, seed=1).start()
    proxy.configure(rate=0.3, kinds=("slowdown", "internal", "drop"))
    ...
    proxy.off()  # faults off
    proxy.stop()
"""

from __future__ import annotations

import http.client
import io
import random
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Collection, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from testkit.classify import classify

PACE_CHUNK = 256 * 1024  # bytes read or written between two waits of the bandwidth cap
STREAM_ABOVE = 1024 * 1024  # request bodies larger than this are forwarded as they arrive
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}

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


class S3Proxy(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(
        self,
        upstream: str,
        delay_ms: float = 0.0,
        port: int = 0,
        bandwidth_mib: float = 0.0,
        *,
        rate: float = 0.0,
        kinds: Sequence[str] = ("slowdown", "internal", "drop"),
        only: Collection[str] | None = None,
        methods: Collection[str] | None = None,
        delay: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.latency = delay_ms / 1000.0
        self.bandwidth = bandwidth_mib * 1024 * 1024  # bytes/s per connection and direction
        self.requests: Counter[str] = Counter()
        self.log: list[str] = []
        # (time.monotonic() when a forwarded S3 request's headers were read, when
        # the server's answer came back): where a client's time goes (benchmarks)
        self.spans: list[tuple[float, float]] = []
        self.errors = 0  # requests the proxy could not forward (answered 502)
        self.status: Counter[int] = Counter()  # upstream status codes
        self.in_flight: Counter[str] = Counter()
        self.most: Counter[str] = Counter()
        # (label, path, X-Amz-Content-SHA256) of every S3 request, faulted ones too
        self.payloads: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        # faults
        self.random = random.Random(seed)
        self.faults: Counter[str] = Counter()  # injected faults by kind
        self.faulted: Counter[str] = Counter()  # injected faults by request label
        self.seen = 0  # requests that reached the proxy (forwarded or not)
        self.rate = 0.0
        self.kinds: tuple[str, ...] = ()
        self.only: frozenset[str] | None = None
        self.methods: frozenset[str] | None = None
        self.delay = delay  # seconds the answer of a "delay" fault is held
        self.configure(rate=rate, kinds=kinds, only=only, methods=methods, delay=delay)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> S3Proxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    # --- counting ---------------------------------------------------------------------

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()
            self.log.clear()
            self.spans.clear()
            self.payloads.clear()
            self.status.clear()
            self.errors = 0
            self.faults.clear()
            self.faulted.clear()
            self.seen = 0

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self.requests.items()))

    def record(self, label: str, method: str, path: str) -> None:
        with self._lock:
            self.requests[label] += 1
            self.log.append(f"{method} {path}")

    def record_payload(self, label: str, path: str, payload: str) -> None:
        with self._lock:
            self.payloads.append((label, path, payload))

    def spans_snapshot(self) -> list[tuple[float, float]]:
        with self._lock:
            return list(self.spans)

    def record_span(self, began: float, answered: float) -> None:
        with self._lock:
            self.spans.append((began, answered))

    def record_status(self, status: int) -> None:
        with self._lock:
            self.status[status] += 1

    def enter(self, label: str | None) -> None:
        if label is None:  # not an S3 request (moto's reset API)
            return
        with self._lock:
            for name in ("all", label):
                self.in_flight[name] += 1
                self.most[name] = max(self.most[name], self.in_flight[name])

    def leave(self, label: str | None) -> None:
        if label is None:
            return
        with self._lock:
            for name in ("all", label):
                self.in_flight[name] -= 1

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.requests.values())

    # --- faults -----------------------------------------------------------------------

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
        with self._lock:
            self.rate = rate
            self.kinds = tuple(kinds)
            self.only = frozenset(only) if only is not None else None
            self.methods = frozenset(m.upper() for m in methods) if methods is not None else None
            if delay is not None:
                self.delay = delay

    def off(self) -> None:
        self.configure(rate=0.0)

    def choose(self, method: str, label: str) -> str | None:
        """The fault to inject into this request, or None to forward it."""
        with self._lock:
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
        with self._lock:
            return sum(self.faults.values())

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up (killed, or gave up after a read timeout) is normal here.
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


class _Pace:
    """One direction of one connection: at most ``rate`` bytes/s.

    Credit saved up while idle is capped at ``SLACK`` seconds' worth: enough
    that a thread woken late (the proxy's threads share one GIL) catches up,
    too little to make a burst.
    """

    SLACK = 0.1

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.free_at = 0.0  # when the bytes counted so far have gone through

    def __call__(self, size: int) -> None:
        now = time.monotonic()
        self.free_at = max(self.free_at, now - self.SLACK) + size / self.rate
        if self.free_at > now:
            time.sleep(self.free_at - now)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # An answer goes out as two writes (headers, then body). With Nagle on, the body
    # waits for the client's delayed ACK of the headers: ~40 ms more per answer with
    # a body, which no S3 server adds (Go's net/http, SeaweedFS's, sets TCP_NODELAY).
    disable_nagle_algorithm = True
    server: S3Proxy
    _upstream: http.client.HTTPConnection | None = None
    _pace_in: _Pace | None = None
    _pace_out: _Pace | None = None

    def setup(self) -> None:
        super().setup()
        if self.server.bandwidth:
            self._pace_in = _Pace(self.server.bandwidth)
            self._pace_out = _Pace(self.server.bandwidth)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if self._upstream is not None:
                self._upstream.close()
                self._upstream = None

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    # --- the client side --------------------------------------------------------------

    def _read(self, size: int) -> bytes:
        """``size`` bytes of the request body, at the connection's pace; fewer if it ended."""
        if self._pace_in is None:
            return self.rfile.read(size)
        chunks = []
        while size > 0:
            chunk = self.rfile.read(min(size, PACE_CHUNK))
            if not chunk:
                break
            self._pace_in(len(chunk))
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    def _write(self, data: bytes) -> None:
        if self._pace_out is None:
            self.wfile.write(data)
            return
        view = memoryview(data)
        for offset in range(0, len(view), PACE_CHUNK):
            chunk = view[offset : offset + PACE_CHUNK]
            self.wfile.write(chunk)
            self._pace_out(len(chunk))

    def _chunked(self) -> bool:
        return self.headers.get("Transfer-Encoding", "").lower() == "chunked"

    def _length(self) -> int:
        return int(self.headers.get("Content-Length") or 0)

    def _read_body(self) -> bytes | None:
        """The whole request body. A client killed in the middle of its request must not
        make the proxy forward a truncated body: S3 would never see such a request."""
        if self._chunked():
            chunks = []
            while True:
                try:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                except ValueError as exc:
                    raise ConnectionAbortedError("incomplete chunked request body") from exc
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunk = self._read(size)
                if len(chunk) != size:
                    raise ConnectionAbortedError("incomplete chunked request body")
                chunks.append(chunk)
                self.rfile.readline()
            return b"".join(chunks)
        length = self._length()
        if not length:
            return None
        body = self._read(length)
        if len(body) != length:
            raise ConnectionAbortedError("incomplete request body")
        return body

    # --- the upstream side ------------------------------------------------------------

    def _connection(self, fresh: bool = False) -> http.client.HTTPConnection:
        if fresh and self._upstream is not None:
            self._upstream.close()
            self._upstream = None
        if self._upstream is None:
            self._upstream = http.client.HTTPConnection(*self.server.upstream, timeout=600)
        return self._upstream

    def _headers(self) -> dict[str, str]:
        return {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}

    def _stream(self, label: str | None) -> tuple[http.client.HTTPResponse, bytes]:
        """Forward a large Content-Length body as it arrives, over a fresh connection."""
        upstream = self._connection(fresh=True)
        upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        for key, value in self._headers().items():
            upstream.putheader(key, value)
        upstream.endheaders()
        left = self._length()
        while left > 0:
            chunk = self.rfile.read(min(left, PACE_CHUNK))
            if not chunk:  # the client went away in mid-body: S3 gets no complete request
                self._connection(fresh=True)
                raise ConnectionAbortedError("incomplete request body")
            if self._pace_in is not None:
                self._pace_in(len(chunk))
            upstream.send(chunk)
            left -= len(chunk)
        self.server.enter(label)
        try:
            if self.server.latency:
                time.sleep(self.server.latency)
            response = upstream.getresponse()
            return response, response.read()
        finally:
            self.server.leave(label)

    def _send_whole(
        self, label: str | None, body: bytes | None
    ) -> tuple[http.client.HTTPResponse, bytes]:
        headers = self._headers()
        if body is not None:
            headers["Content-Length"] = str(len(body))
        self.server.enter(label)
        try:
            if self.server.latency:
                time.sleep(self.server.latency)
            for attempt in range(2):
                try:
                    upstream = self._connection(fresh=attempt > 0)
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    return response, response.read()
                except (http.client.HTTPException, OSError):
                    # a kept-alive upstream connection the server had closed: once more
                    if attempt == 1:
                        raise
            raise AssertionError("unreachable")
        finally:
            self.server.leave(label)

    def _pass(self, label: str | None) -> None:
        """Forward the request and its answer (counted under ``label`` unless None)."""
        if label is not None:
            self.server.record(label, self.command, self.path)
        began = time.monotonic()
        stream = not self._chunked() and self._length() > STREAM_ABOVE
        try:
            if stream:
                response, data = self._stream(label)
            else:
                response, data = self._send_whole(label, self._read_body())
        except ConnectionAbortedError:
            raise
        except (http.client.HTTPException, OSError):
            with self.server._lock:
                self.server.errors += 1
            self._connection(fresh=True)
            self.close_connection = stream  # the rest of the body may be unread
            self.send_error(502, "upstream failed")
            return
        self.server.record_status(response.status)
        if label is not None:
            self.server.record_span(began, time.monotonic())
        self.send_response(response.status, response.reason)
        head = self.command == "HEAD"
        for key, value in response.getheaders():
            # A HEAD answer has no body but the Content-Length of the object: keep it.
            if key.lower() not in HOP_BY_HOP and (head or key.lower() != "content-length"):
                self.send_header(key, value)
        if not head:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head:
            self._write(data)
        if response.will_close:
            self._connection(fresh=True)

    # --- one request ------------------------------------------------------------------

    def _forward(self) -> None:
        if self.path.startswith("/moto-api"):
            self._pass(None)
            return
        label = classify(self.command, self.path, dict(self.headers.items()))
        self.server.record_payload(label, self.path, self.headers.get("X-Amz-Content-SHA256", ""))
        fault = self.server.choose(self.command, label)
        if fault is None:
            self._pass(label)
        elif fault in ("delay", "lost"):
            self._pass_then(label, fault)
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

    def _pass_then(self, label: str, fault: str) -> None:
        """Forward the request, keeping the answer; send it late, or never."""
        real = self.wfile
        held = io.BytesIO()
        self.wfile = held
        try:
            self._pass(label)
        finally:
            self.wfile = real
        if fault == "lost":
            self.close_connection = True
            return
        time.sleep(self.server.delay)
        self.wfile.write(held.getvalue())

    def _answer(self, status: int, reason: str, body: bytes) -> None:
        self.send_response(status, reason)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amz-request-id", "S3PROXY")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

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
