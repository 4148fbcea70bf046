"""A small loopback HTTP proxy for the benchmark: counts S3 requests by operation.

Every S3 client under test (matricula-backup, rclone, aws s3 sync, s5cmd) is
pointed at this proxy instead of the S3 server, so each run's requests are
counted from the server's side, the same way for every tool:

    "PUT object"        PutObject
    "PUT copy"          CopyObject (PUT with x-amz-copy-source)
    "PUT part"          UploadPart (PUT ?partNumber&uploadId)
    "POST uploads"      CreateMultipartUpload
    "POST complete"     CompleteMultipartUpload (POST ?uploadId)
    "DELETE upload"     AbortMultipartUpload
    "HEAD object"       HeadObject
    "GET object"        GetObject
    "DELETE object"     DeleteObject
    "POST delete"       DeleteObjects (up to 1,000 keys)
    "GET list"          ListObjects (v1)
    "GET list-v2"       ListObjectsV2
    "GET versions"      ListObjectVersions
    "GET uploads"       ListMultipartUploads
    "PUT bucket"        CreateBucket, "HEAD bucket" HeadBucket, "GET service" ListBuckets
    "GET versioning", "PUT lifecycle", ...  any other sub-resource by its name

``--delay-ms`` (``delay`` here) adds a fixed latency to every request before it
is forwarded, as a crude model of the distance to a real S3 endpoint: the
delay is per request, in the request's own thread, so parallel requests wait
in parallel.

``--bandwidth-mib`` (``bandwidth``) caps each client connection at that many
MiB/s in each direction (request bodies as they are read, answers as they are
written): a model of one TCP stream over a long link, whose window and round
trip limit it to tens of MB/s however fast the line is. Parallel connections
each get the cap; an idle connection saves no credit for later.

Request bodies are read whole before forwarding (at most a few x 30 MiB in the
benchmark), which keeps the upstream connection reusable and lets a request be
sent again when a kept-alive upstream connection turned out to be closed.
The proxy binds 127.0.0.1 only.

    python benchmarks/proxy.py --upstream http://127.0.0.1:5000 --port 0 --delay-ms 20
    python benchmarks/proxy.py --upstream http://127.0.0.1:5000 --delay-ms 20 --bandwidth-mib 25
"""

from __future__ import annotations

import argparse
import http.client
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from testkit.classify import classify  # noqa: E402

PACE_CHUNK = 256 * 1024  # bytes read or written between two waits of the bandwidth cap
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


class CountingProxy(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(
        self, upstream: str, delay_ms: float = 0.0, port: int = 0, bandwidth_mib: float = 0.0
    ) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.delay = delay_ms / 1000.0
        self.bandwidth = bandwidth_mib * 1024 * 1024  # bytes/s per connection and direction
        self.requests: Counter[str] = Counter()
        self.errors = 0  # requests the proxy could not forward (answered 502)
        self.status: Counter[int] = Counter()  # upstream status codes
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> CountingProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()
            self.status.clear()
            self.errors = 0

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self.requests.items()))

    def record(self, operation: str) -> None:
        with self._lock:
            self.requests[operation] += 1

    def record_status(self, status: int) -> None:
        with self._lock:
            self.status[status] += 1

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.requests.values())


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
    server: CountingProxy
    _upstream: http.client.HTTPConnection | None = None
    _pace_in: _Pace | None = None
    _pace_out: _Pace | None = None

    def setup(self) -> None:
        super().setup()
        if self.server.bandwidth:
            self._pace_in = _Pace(self.server.bandwidth)
            self._pace_out = _Pace(self.server.bandwidth)

    def _read(self, size: int) -> bytes:
        """``size`` bytes of the request body, at the connection's pace."""
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

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def _connection(self, fresh: bool = False) -> http.client.HTTPConnection:
        if fresh and self._upstream is not None:
            self._upstream.close()
            self._upstream = None
        if self._upstream is None:
            self._upstream = http.client.HTTPConnection(*self.server.upstream, timeout=600)
        return self._upstream

    def _forward(self) -> None:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        if not self.path.startswith("/moto-api"):
            self.server.record(classify(self.command, self.path, headers))
        body = self._read_body()
        if body is not None:
            headers["Content-Length"] = str(len(body))
        if self.server.delay:
            time.sleep(self.server.delay)
        response = None
        for attempt in range(2):
            try:
                upstream = self._connection(fresh=attempt > 0)
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                break
            except (http.client.HTTPException, OSError):
                response = None
                if attempt == 1:
                    break
        if response is None:
            with self.server._lock:
                self.server.errors += 1
            self.send_error(502, "upstream failed")
            return
        self.server.record_status(response.status)
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

    def _read_body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self._read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self._read(length) if length else None

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="the S3 server, http://127.0.0.1:PORT")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="added to every request")
    parser.add_argument(
        "--bandwidth-mib", type=float, default=0.0, help="MiB/s per connection and direction"
    )
    args = parser.parse_args()
    proxy = CountingProxy(args.upstream, args.delay_ms, args.port, args.bandwidth_mib)
    print(proxy.url, flush=True)
    try:
        proxy.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        print(dict(proxy.requests), flush=True)


if __name__ == "__main__":
    main()
