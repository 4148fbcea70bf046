"""S3 timestamps (s3/client.py parse_timestamp): the same datetimes as botocore's parser.

The client parses every LastModified of a listing with it (botocore's own
parser, dateutil, costs ~95 us each); the listings themselves run against
moto and SeaweedFS in the restore, adoption and verify tests.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from botocore.utils import parse_timestamp as botocore_parse
from hypothesis import given
from hypothesis import strategies as st

from matricula_backup.s3.client import parse_timestamp

MOMENTS = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)


@given(MOMENTS)
def test_s3_s_iso_forms_parse_as_botocore_parses_them(moment: datetime) -> None:
    millis = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    for text in (
        millis.strftime("%Y-%m-%dT%H:%M:%S.") + f"{millis.microsecond // 1000:03d}Z",
        moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
        moment.isoformat(),
        moment.astimezone(timezone(timedelta(hours=1))).isoformat(),
    ):
        ours, theirs = parse_timestamp(text), botocore_parse(text)
        assert ours == theirs, text
        assert ours.utcoffset() is not None


@given(MOMENTS)
def test_header_and_epoch_forms_go_to_botocore_s_parser(moment: datetime) -> None:
    header = moment.strftime("%a, %d %b %Y %H:%M:%S GMT")  # Last-Modified of a HEAD
    assert parse_timestamp(header) == botocore_parse(header)
    epoch = int(moment.timestamp())
    assert parse_timestamp(epoch) == botocore_parse(epoch)


def test_a_time_without_a_zone_is_left_to_botocore() -> None:
    # fromisoformat would give a naive datetime; botocore decides what it means.
    assert parse_timestamp("2026-12-06T12:00:00") == botocore_parse("2026-12-06T12:00:00")
