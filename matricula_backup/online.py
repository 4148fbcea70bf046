"""Can this machine reach S3 and the webhook with this config? (check-config --online)

One cheap request per service, nothing written anywhere:

- S3: GetBucketVersioning of one backup folder's bucket (a GET, $0.0004 per
  1,000). S3 checks the signature before it looks for the bucket, so even
  NoSuchBucket proves endpoint, region and keys right; the run needs
  s3:GetBucketVersioning anyway.
- Webhook: a HEAD of the host's root ``/`` over the same httpx transport as
  the notifications (proxies, CA bundle). Any HTTP answer proves DNS, the
  connection and TLS; the URL's path and its ``sig=`` are not sent and nothing
  is posted, so it does not prove the URL itself: ``notify-test`` does.

``unreachable()`` also tells the dry run when an S3 error means that no
answer can be trusted (no connection, keys refused), so that it stops instead
of printing a plan built on nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from matricula_backup.config import Settings, redact_url
from matricula_backup.escape import http_url
from matricula_backup.s3 import buckets, client

TIMEOUT_SECONDS = 10.0

# S3 error codes that say the keys (or the clock) are wrong, whatever the bucket.
_KEYS_REFUSED = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "RequestTimeTooSkewed",
    "AuthorizationHeaderMalformed",
}


@dataclass(frozen=True)
class Check:
    service: str  # "S3" or "webhook"
    ok: bool
    message: str

    def __str__(self) -> str:
        return f"{self.service}: {'ok' if self.ok else 'FAILED'}: {self.message}"


def unreachable(exc: BaseException) -> bool:
    """An S3 error that no bucket could avoid: no connection, no keys, keys refused."""
    from botocore.exceptions import (
        ConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    if isinstance(exc, ConnectionError | NoCredentialsError | PartialCredentialsError):
        return True
    return client.error_code(exc) in _KEYS_REFUSED


def endpoint_of(store: client.Store) -> str:
    """The S3 endpoint as scheme://host[:port], without any user:password part."""
    parsed = http_url(str(store.client.meta.endpoint_url))
    if parsed is None:
        return "<invalid URL>"
    scheme, host, port = parsed
    return f"{scheme}://{host}{f':{port}' if port else ''}"


def check_s3(settings: Settings, bucket: str) -> Check:
    """GetBucketVersioning of ``bucket``: one GET request, with 2 attempts at most."""
    quick = replace(settings, aws=replace(settings.aws, max_attempts=2, crt=False))
    store = client.connect(quick)
    where = endpoint_of(store)
    try:
        status = buckets.versioning_status(store, bucket)
    except client.S3_ERRORS as exc:
        code = client.error_code(exc)
        if code in _KEYS_REFUSED:
            hint = "check aws.access_key, aws.secret_access_key and aws.region in config.json"
        elif unreachable(exc):
            hint = "check aws.endpoint_url and aws.region in config.json, and the network"
        elif code in ("AccessDenied", "403"):
            hint = (
                "the keys lack s3:GetBucketVersioning on it, or the bucket belongs to another "
                "AWS account (then set backup.bucket_prefix)"
            )
        else:
            hint = "see the S3 error"
        return Check("S3", False, f"could not reach S3 at {where}: {client.describe(exc)}; {hint}")
    if status is None:  # NoSuchBucket
        return Check(
            "S3",
            True,
            f"{where} answered and accepted the keys; bucket {bucket} does not exist "
            "yet (the first real run creates it)",
        )
    versioning = status or "not enabled"
    return Check(
        "S3",
        True,
        f"{where} answered and accepted the keys; bucket {bucket} exists (versioning {versioning})",
    )


def check_webhook(webhook: str) -> Check:
    """A HEAD of the webhook host's root: posts nothing, sends no path and no secret."""
    import httpx  # here: only check-config --online sends this request

    url = httpx.URL(webhook)
    root = url.copy_with(path="/", query=None, fragment=None, username=None, password=None)
    shown = redact_url(webhook)
    try:
        response = httpx.head(str(root), timeout=TIMEOUT_SECONDS)
    except httpx.HTTPError as exc:
        return Check(
            "webhook",
            False,
            f"could not reach {shown}: {type(exc).__name__}: {exc}; check "
            "notification.webhook and the network (proxy, firewall)",
        )
    return Check(
        "webhook",
        True,
        f"{shown} is reachable (its host answered HTTP {response.status_code} to a HEAD of /; "
        "nothing was posted: notify-test sends a test card to the URL itself)",
    )
