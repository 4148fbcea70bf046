"""Single PUTs through the AWS Common Runtime: the per-file cost is C's, not Python's.

A first backup is tens of thousands of small scans; each costs one PutObject.
Through botocore every request spends about 2 ms of Python (signing, event
hooks, urllib3) under one GIL, which caps a run at one core whatever the
number of workers. The CRT S3 client (awscrt, AWS's own library behind
``boto3[crt]`` and the AWS CLI's fast path) signs and sends in C threads and
needs about a third of that CPU (see benchmarks/RESULTS.md).

Only single PUTs of files up to 8 MiB go this way (``s3.FAST_PUT_MAX``): the
bytes were read and hashed by the caller,
and the server checks them against ``x-amz-checksum-sha256``. A restore's GETs
of objects up to 8 MiB go this way too (``get_object``, or ``start_get`` without
waiting; the caller checks size and SHA-256), and so do version listings
(``list_object_versions``: objects.py reads the XML in 9-11 ms of the GIL per
page of 1,000 versions, where botocore took 20-22 ms to parse it plus 4 ms to
parse it again looking for an error body).
Everything else (buckets, multipart uploads, other listings, deletes, HEAD
and RestoreObject) stays on botocore.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from io import BytesIO
from typing import Any
from urllib.parse import quote, urlsplit

from awscrt import auth, s3
from awscrt.http import HttpHeaders, HttpRequest
from botocore.credentials import RefreshableCredentials

from matricula_backup.errors import RequestFailed

# A stalled request is given up after this long (plus time for its bytes at
# 64 KiB/s): the file is then retried on the next run.
BASE_TIMEOUT = 600.0
SLOWEST_BYTES_PER_SECOND = 64 * 1024
MIN_PART = 5 * 1024 * 1024
LISTING_BYTES = 1024 * 1024  # a page of 1,000 versions is ~400 KB: its timeout's allowance
_CODE = re.compile(rb"<Code>([^<]{1,200})</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]{1,500})</Message>")
_S3_CODES = {
    "AWS_ERROR_S3_INTERNAL_ERROR": "InternalError",
    "AWS_ERROR_S3_SLOW_DOWN": "SlowDown",
    "AWS_ERROR_S3_REQUEST_TIME_TOO_SKEWED": "RequestTimeTooSkewed",
}


_KEPT: set[int] = set()  # the threads given a lasting Python thread state


def _keep_thread_state() -> None:
    """Give the CRT thread running this callback a Python thread state for good.

    awscrt enters Python from its event-loop threads with ``PyGILState_Ensure``
    and leaves with ``PyGILState_Release``. On a thread Python did not start,
    each pair made and destroyed a thread state, with an mmap and a munmap of its
    frame stack (and the munmap made the kernel flush the other core's TLB):
    three times per GET, 60,000 of each in a 20,000-file restore. One more
    ``Ensure``, never released, keeps the thread's state while the thread lives;
    awscrt's later ``Release`` calls then only let go of the GIL (the C API's
    rule for nested calls). Harmless on a thread Python started: its state is
    deleted when it ends, whatever the count.
    """
    ident = threading.get_ident()
    if ident not in _KEPT:
        import ctypes

        _KEPT.add(ident)
        ctypes.pythonapi.PyGILState_Ensure()


class FastPut:
    """Sends PutObject requests with the CRT S3 client; safe to use from many threads."""

    def __init__(
        self,
        endpoint_url: str,
        path_style: bool,
        region: str,
        credentials: Any,
        max_attempts: int,
        connect_timeout: float,
    ) -> None:
        parts = urlsplit(endpoint_url)
        self.https = parts.scheme == "https"
        self.host = parts.netloc
        self.base_path = parts.path.rstrip("/")
        self.path_style = path_style

        if isinstance(credentials, RefreshableCredentials):

            def frozen() -> auth.AwsCredentials:
                # Credentials that refresh themselves (instance roles, SSO): ask
                # them at each signing instead of copying them once.
                now = credentials.get_frozen_credentials()
                return auth.AwsCredentials(now.access_key, now.secret_key, now.token)

            provider = auth.AwsCredentialsProvider.new_delegate(frozen)
        else:
            # Keys from config.json never change: signing needs no call into Python
            # (which took the GIL from a CRT thread for every request).
            now = credentials.get_frozen_credentials()
            provider = auth.AwsCredentialsProvider.new_static(
                now.access_key, now.secret_key, now.token
            )
        self.client = s3.S3Client(
            region=region,
            tls_mode=s3.S3RequestTlsMode.ENABLED if self.https else s3.S3RequestTlsMode.DISABLED,
            signing_config=s3.create_default_s3_signing_config(
                region=region, credential_provider=provider
            ),
            # The same number of tries as botocore's (the first try plus retries).
            retry_config=s3.S3RetryConfig(max_retries=max_attempts - 1),
            connect_timeout_ms=int(connect_timeout * 1000),
            # The CRT opens connections in proportion to this target; its own
            # default (10 Gbps) lets every worker have one. 1 Gbps took 11.4 s
            # instead of 8.8 s for 4,000 PUTs with 20 ms latency, at the same RSS.
            throughput_target_gbps=10.0,
        )

    @staticmethod
    def timeout(size: int) -> float:
        """How long a request for ``size`` bytes may take before it is given up."""
        return BASE_TIMEOUT + size / SLOWEST_BYTES_PER_SECOND

    def _where(self, bucket: str, key: str) -> tuple[str, str]:
        path = "/" + quote(key, safe="/~")
        if self.path_style:
            return self.host, f"{self.base_path}/{bucket}{path}"
        return f"{bucket}.{self.host}", self.base_path + path

    def get_object(
        self, bucket: str, key: str, version_id: str, size: int
    ) -> tuple[dict[str, str], bytes]:
        """GET one version of ``size`` bytes in one request and wait; (headers, body).

        The body is held in memory: only for objects up to ``s3.FAST_PUT_MAX``.
        """
        got: tuple[dict[str, str], bytes] = _wait(
            "GetObject",
            size,
            lambda done: self.start_get(bucket, key, version_id, size, done),
        )
        return got

    def start_get(
        self,
        bucket: str,
        key: str,
        version_id: str,
        size: int,
        done: Callable[[tuple[dict[str, str], bytes] | RequestFailed], None],
    ) -> s3.S3Request:
        """Start the GET of ``get_object`` without waiting; ``done`` gets (headers,
        body) or the RequestFailed, on a CRT thread. The caller enforces
        ``timeout(size)`` (``cancel()`` the request returned: ``done`` then
        gets the failure)."""
        host, path = self._where(bucket, key)
        request = HttpRequest(
            "GET", f"{path}?versionId={quote(version_id, safe='')}", HttpHeaders([("Host", host)])
        )
        body, on_body = _collector("GetObject")

        def finish(answer: dict[str, str] | RequestFailed) -> None:
            done(answer if isinstance(answer, RequestFailed) else (answer, bytes(body)))

        single = max(MIN_PART, size + 1)  # one ranged GET covers the whole object
        return self._start(
            "GetObject",
            request,
            finish,
            type=s3.S3RequestType.GET_OBJECT,
            part_size=single,
            on_body=on_body,
        )

    def list_object_versions(self, bucket: str, params: list[tuple[str, str]]) -> bytes:
        """One ListObjectVersions page: the XML body of the answer (objects.py reads it)."""
        host, path = self._where(bucket, "")
        query = "&".join(
            f"{name}={quote(value, safe='')}" if value else name for name, value in params
        )
        request = HttpRequest("GET", f"{path}?{query}", HttpHeaders([("Host", host)]))
        body, on_body = _collector("ListObjectVersions")

        self._send(
            "ListObjectVersions",
            request,
            LISTING_BYTES,
            type=s3.S3RequestType.DEFAULT,
            operation_name="ListObjectVersions",
            on_body=on_body,
        )
        return bytes(body)

    def put(self, bucket: str, key: str, data: bytes, headers: dict[str, str]) -> dict[str, str]:
        """PUT ``data`` as ``key``; return the answer's headers (lower-case names)."""
        host, path = self._where(bucket, key)
        request = HttpRequest(
            "PUT",
            path,
            HttpHeaders([("Host", host), ("Content-Length", str(len(data))), *headers.items()]),
            BytesIO(data),  # shares the bytes, no copy
        )
        # One request whatever the size (the CRT would split a large body into
        # a multipart upload of its own): large files are multipart uploads in upload.py.
        single = max(MIN_PART, len(data))
        return self._send(
            "PutObject",
            request,
            len(data),
            type=s3.S3RequestType.PUT_OBJECT,
            part_size=single,
            multipart_upload_threshold=single,
        )

    def _send(
        self, operation: str, request: HttpRequest, size: int, **options: Any
    ) -> dict[str, str]:
        """Send one request and wait for it, bounded by its size; the answer's headers
        (lower-case names), or RequestFailed with S3's code and message."""
        headers: dict[str, str] = _wait(
            operation,
            size,
            lambda done: self._start(operation, request, done, **options),
        )
        return headers

    def _start(
        self,
        operation: str,
        request: HttpRequest,
        done: Callable[[dict[str, str] | RequestFailed], None],
        **options: Any,
    ) -> s3.S3Request:
        """Send one request; ``done`` gets the answer's headers (lower-case names) or
        RequestFailed with S3's code and message, on a CRT thread."""
        answer: dict[str, Any] = {}

        def on_headers(status_code: int, headers: list[tuple[str, str]], **_: Any) -> None:
            _keep_thread_state()
            answer["headers"] = {name.lower(): value for name, value in headers}

        def on_done(
            error: BaseException | None = None,
            status_code: int | None = None,
            error_body: bytes | None = None,
            **_: Any,
        ) -> None:
            _keep_thread_state()
            if error is None:
                done(answer.get("headers", {}))
            else:
                answer.update(error=error, status=status_code, body=error_body or b"")
                done(_failure(answer, operation))

        return self.client.make_request(
            request=request, on_headers=on_headers, on_done=on_done, **options
        )


def _wait(operation: str, size: int, start: Callable[[Callable[[Any], None]], s3.S3Request]) -> Any:
    """Start a request with ``start(done)`` and wait for what ``done`` is given;
    RequestFailed if that is one, or if no answer came in ``FastPut.timeout(size)``."""
    got: list[Any] = []
    # A bare lock, released on a CRT thread: an Event's set() (Condition.notify_all)
    # was 8.5% of the GIL-holding samples of a 20,000-file restore.
    finished = threading.Lock()
    finished.acquire()

    def done(result: Any) -> None:
        got.append(result)
        finished.release()

    sent = start(done)
    limit = FastPut.timeout(size)
    if not finished.acquire(timeout=limit):
        sent.cancel()
        raise RequestFailed(operation, "Timeout", f"no answer in {limit:.0f} s")
    if isinstance(got[0], RequestFailed):
        raise got[0]
    return got[0]


def _collector(operation: str) -> tuple[bytearray, Callable[..., None]]:
    """A buffer and the on_body callback that fills it: one request, so the bytes
    come in order."""
    body = bytearray()

    def on_body(chunk: bytes, offset: int, **_: Any) -> None:
        _keep_thread_state()
        if offset != len(body):
            raise RequestFailed(operation, "", f"body chunk at {offset}, {len(body)} expected")
        body.extend(chunk)

    return body, on_body


def _failure(answer: dict[str, Any], operation: str) -> RequestFailed:
    exc = answer["error"]
    body: bytes = answer.get("body", b"")
    status = answer.get("status")
    code = _CODE.search(body)
    message = _MESSAGE.search(body)
    if status and code:
        return RequestFailed(
            operation,
            code.group(1).decode(errors="replace"),
            (message.group(1).decode(errors="replace") if message else f"HTTP {status}"),
        )
    # Retries used up on a 5xx, or a connection problem: only the CRT's error
    # name, e.g. "socket is closed (AWS_IO_SOCKET_CLOSED)".
    name = getattr(exc, "name", type(exc).__name__)
    detail = str(getattr(exc, "message", "") or exc).rstrip(".")
    http = f", HTTP {status}" if status else ""
    return RequestFailed(operation, _S3_CODES.get(name, ""), f"{detail} ({name}{http})")
