"""Which signer an UploadPart gets (s3/signing.py): botocore's Python one over plain HTTP only.

No request is made: ``connect`` builds the client, and the ``choose-signer``
event is asked as botocore asks it before each request. That the parts so
signed are accepted, retries included, is tested against SeaweedFS
(tests/test_seaweedfs.py).
"""

from __future__ import annotations

from pathlib import Path

import botocore
import pytest

from matricula_backup.config import parse_settings
from matricula_backup.s3.client import connect


def _choice(client: object, operation: str, context: dict[str, object]) -> object:
    _, answer = client.meta.events.emit_until_response(  # type: ignore[attr-defined]
        f"choose-signer.s3.{operation}",
        signing_name="s3",
        region_name="us-east-1",
        signature_version="v4",
        context=context,
        operation_name=operation,
    )
    return answer


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_only_parts_sent_over_plain_http_leave_botocore_s_signer(
    tmp_path: Path, scheme: str
) -> None:
    settings = parse_settings(
        {
            "backup": {"folders": [str(tmp_path)]},
            "aws": {
                "access_key": "AKIAEXAMPLE",
                "secret_access_key": "secret",
                "region": "us-east-1",
                "endpoint_url": f"{scheme}://127.0.0.1:9",
            },
        },
        tmp_path,
    )
    client = connect(settings).client
    context: dict[str, object] = {"auth_type": "v4"}

    if scheme == "http":
        assert _choice(client, "UploadPart", context) is botocore.UNSIGNED
        assert context.get("matricula_backup_signs") is True  # signed at before-sign instead
    else:  # over TLS botocore sends parts with UNSIGNED-PAYLOAD and their CRC64NVME
        assert _choice(client, "UploadPart", context) == "s3v4"
        assert "matricula_backup_signs" not in context
    assert _choice(client, "PutObject", {"auth_type": "v4"}) == "s3v4"  # nothing else changes
