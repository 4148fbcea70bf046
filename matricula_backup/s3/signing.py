"""How an UploadPart is signed over plain HTTP: SHA-256 of the part in 1 MiB reads.

Over HTTPS a part goes with ``UNSIGNED-PAYLOAD``: TLS protects the bytes and S3
checks the part's CRC64NVME (upload.py). Over plain HTTP (an S3-compatible
server on the LAN) SigV4 signs the part's SHA-256, so that no one on the way
can change the bytes and fix up the CRC, which is easy to forge.

With awscrt installed (botocore's ``crt`` extra, which the tool uses for small
PUTs, crt.py), botocore signs every request with the CRT signer. That signer
hashes a streamed body by calling back into Python for every 4 KiB, with the
GIL held: ~1.5 s of CPU per GiB that the other threads wait for, more than the
parts' own sending costs (benchmarks/RESULTS.md, issue 13). botocore's own
Python signer reads 1 MiB at a time and hashes with the GIL released. So, over
plain HTTP only, an UploadPart is given no signer by botocore (``choose-signer``
answers UNSIGNED) and is signed here, at ``before-sign``, by that Python
signer, with the same credentials, region and service name, on every attempt
(botocore signs a retry again). The signature is the same SigV4 with the same
signed payload; only who computes it changes.

A ``FileRange`` body is hashed with its own unpaced reads: the bandwidth limit
(throttle.py) counts the bytes sent, not those read to sign them.
"""

from __future__ import annotations

from typing import Any

import botocore
from botocore.auth import S3SigV4Auth

OPERATION = "UploadPart"
SIGV4 = ("v4", "s3v4")
_MARK = "matricula_backup_signs"  # in the request context: sign() takes over


class _PartSigner(S3SigV4Auth):
    """botocore's Python S3 SigV4 signer; a body that can hash itself does so."""

    def payload(self, request: Any) -> str:
        sha256_hex = getattr(request.body, "sha256_hex", None)
        # (botocore's own test of whether to sign the body; not in the type stubs)
        if sha256_hex is not None and self._should_sha256_sign_payload(request):  # type: ignore[attr-defined]
            return str(sha256_hex())
        return str(super().payload(request))


class PlainHttpPartSigning:
    """The two event handlers; registered for a plain-HTTP endpoint with credentials
    only (client.connect)."""

    def __init__(self, credentials: Any) -> None:
        self._credentials = credentials  # botocore's (refreshable) credentials object

    def register(self, events: Any) -> None:
        events.register(f"choose-signer.s3.{OPERATION}", self.choose_signer)
        events.register_last(f"before-sign.s3.{OPERATION}", self.sign)

    def choose_signer(self, signature_version: Any, context: dict[str, Any], **_: Any) -> Any:
        # botocore offers "v4" here (its own handler makes it "s3v4" next); anything
        # else (anonymous, SigV4a, S3 Express) is left to botocore.
        if signature_version not in SIGV4:
            return None
        context[_MARK] = True
        return botocore.UNSIGNED

    def sign(
        self, request: Any, signing_name: str, region_name: str, signature_version: Any, **_: Any
    ) -> None:
        if not request.context.get(_MARK) or signature_version is not botocore.UNSIGNED:
            return
        signing = request.context.get("signing", {})
        signer = _PartSigner(
            self._credentials.get_frozen_credentials(),
            signing.get("signing_name") or signing_name,
            signing.get("region") or region_name,
        )
        signer.add_auth(request)
