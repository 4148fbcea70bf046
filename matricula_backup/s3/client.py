"""The run's one S3 client, the Store every S3 call gets, and request counting.

One boto3 client is built per run and shared by the worker threads (clients
are thread-safe). Errors of S3 calls are described here without secrets.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from matricula_backup.config import Settings
from matricula_backup.errors import (
    RequestFailed,
)
from matricula_backup.s3.parts import RequestSlots
from matricula_backup.throttle import Throttle, ThrottledBody

if TYPE_CHECKING:
    from matricula_backup.s3.crt import FastPut

logger = logging.getLogger(__name__)


READ_CHUNK = 8 * 1024 * 1024
CONNECT_TIMEOUT = 20

# The CRT saves CPU per request, which matters for small files; it also copies
# the body into buffers of its own, which a large one would double (crt.py).
FAST_PUT_MAX = 8 * 1024 * 1024


class RequestCounter:
    """Counts HTTP requests sent to S3, by operation.

    Each botocore retry counts; retries the CRT makes inside a single PUT
    (crt.py) cannot be seen: such a PUT counts once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_operation: Counter[str] = Counter()

    def __call__(self, event_name: str, **_: Any) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        with self._lock:
            self.by_operation[operation] += 1

    @property
    def total(self) -> int:
        return sum(self.by_operation.values())


@dataclass(frozen=True)
class Store:
    """The shared client plus what every S3 call needs to know."""

    client: Any
    region: str
    counter: RequestCounter
    part_size: int
    multipart_threshold: int
    throttle: Throttle | None = None
    fast_put: FastPut | None = None  # single PUTs through the CRT (crt.py)
    sts: Any = None  # for the account id of the keys (bucket policy checks)
    # backup.workers upload requests at a time, small files and parts together (parts.py)
    slots: RequestSlots = field(default_factory=lambda: RequestSlots(8))

    def body(self, data: bytes) -> Any:
        """What to send: the bytes, read at the allowed pace if there is a limit."""
        return ThrottledBody(data, self.throttle) if self.throttle else data


def parse_timestamp(value: Any) -> datetime:
    """A timestamp in an S3 answer, as botocore's parser gives it, ~300x faster.

    botocore parses every timestamp with dateutil (~95 us each): 1.9 s of CPU
    for a listing of 20,000 versions, each with its LastModified. S3 sends
    ISO 8601 with a zone ('2026-12-06T12:00:00.000Z'), which
    ``datetime.fromisoformat`` reads; anything else goes to botocore's parser.
    """
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if moment.tzinfo is not None:
                return moment
    from botocore.utils import parse_timestamp as botocore_parse

    return botocore_parse(value)


def connect(settings: Settings) -> Store:
    """Build the run's one S3 client. Makes no request."""
    # Imported here, not at the top: boto3 and botocore's config (which loads
    # awscrt) cost ~0.2 s of start-up that a run with nothing to upload skips.
    import boto3
    import botocore.session
    from botocore.config import Config

    from matricula_backup.s3.signing import PlainHttpPartSigning

    aws = settings.aws
    core = botocore.session.get_session()
    # The AWS CLI replaces this parser the same way (awscli/customizations/scalarparse.py).
    core.get_component("response_parser_factory").set_parser_defaults(
        timestamp_parser=parse_timestamp
    )
    session = boto3.session.Session(
        botocore_session=core,
        aws_access_key_id=aws.access_key or None,
        aws_secret_access_key=aws.secret_access_key or None,
        # botocore reads AWS_DEFAULT_REGION; AWS_REGION is the newer standard name.
        region_name=aws.region or os.environ.get("AWS_REGION") or None,
    )
    endpoint = (
        aws.endpoint_url
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
    )
    config = Config(
        # 503 SlowDown, 500s, timeouts and dropped connections are retried with
        # backoff; what still fails is recorded and retried on the next run.
        # total_max_attempts counts the first try too (max_attempts would not).
        retries={"mode": aws.retry_mode, "total_max_attempts": aws.max_attempts},  # type: ignore[arg-type]
        max_pool_connections=settings.workers + 4,
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=300,
        # We send our own SHA-256; no extra CRC32 that some S3 servers reject.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path"} if endpoint else {},
    )
    client = session.client("s3", endpoint_url=endpoint or None, config=config)
    counter = RequestCounter()
    client.meta.events.register("before-send.s3", counter)
    credentials = session.get_credentials()
    if credentials is not None and client.meta.endpoint_url.startswith("http://"):
        PlainHttpPartSigning(credentials).register(client.meta.events)
    region = client.meta.region_name or "us-east-1"
    throttle = Throttle(settings.max_bandwidth) if settings.max_bandwidth else None
    fast_put = None
    # A bandwidth limit needs botocore's body (throttle.py); one attempt only
    # cannot be told to the CRT (max_retries 0 means its default, 5).
    if aws.crt and throttle is None and aws.max_attempts > 1:
        fast_put = _fast_put(session, client, region, endpoint is not None, aws.max_attempts)
    return Store(
        client,
        region,
        counter,
        settings.part_size,
        settings.multipart_threshold,
        throttle,
        fast_put,
        # An S3-compatible server may answer STS at its endpoint (moto does) or not.
        session.client("sts", endpoint_url=endpoint or None, config=config),
        RequestSlots(settings.workers),
    )


def _fast_put(
    session: Any, client: Any, region: str, path_style: bool, max_attempts: int
) -> FastPut | None:
    credentials = session.get_credentials()
    if credentials is None:  # botocore says what is missing at the first request
        return None
    try:
        from matricula_backup.s3.crt import FastPut
    except ImportError as exc:
        logger.warning("AWS CRT not available (%s): botocore sends every request", exc)
        return None
    return FastPut(
        client.meta.endpoint_url, path_style, region, credentials, max_attempts, CONNECT_TIMEOUT
    )


def describe(exc: BaseException) -> str:
    """A short, secret-free text for an S3 error."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code", "?")
        message = error.get("Message") or ""
        operation = getattr(exc, "operation_name", "")
        return f"{operation} failed: {code} {message}".strip()
    if isinstance(exc, RequestFailed):
        return str(exc)
    if isinstance(exc, BotoCoreError | OSError):
        return f"{type(exc).__name__}: {exc}"
    return f"{type(exc).__name__}: {exc}"


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    if isinstance(exc, RequestFailed):
        return exc.code
    return ""


S3_ERRORS = (ClientError, BotoCoreError, RequestFailed)
