"""Files that change while they are read are never recorded with the wrong size or mtime."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from awscrt.checksums import crc64nvme

from testkit.proxy import S3Proxy
from tests.conftest import Setup


def _run_while(setup: Setup, change: Callable[[], None]) -> subprocess.CompletedProcess[str]:
    """A backup run while another thread calls ``change`` over and over."""
    stop = threading.Event()

    def keep_changing() -> None:
        while not stop.is_set():
            change()

    writer = threading.Thread(target=keep_changing)
    writer.start()
    try:
        return setup.run()
    finally:
        stop.set()
        writer.join()


def test_a_file_growing_during_its_upload_is_left_for_the_next_run(setup: Setup, s3: Any) -> None:
    folder = setup.images / "Band"
    growing = setup.file("Band/growing.tif", os.urandom(30 * 1024 * 1024))
    setup.file("Band/still.tif", b"still")
    setup.write_config(
        backup__folders=[str(folder)], backup__multipart_threshold_mb=5, backup__part_size_mb=5
    )

    def append() -> None:
        with open(growing, "ab") as handle:
            handle.write(b"more")
        time.sleep(0.005)

    first = _run_while(setup, append)

    assert first.returncode == 1
    assert "growing.tif" in first.stderr and "changed while it was" in first.stderr
    table = setup.table(folder)
    assert setup.db(f'SELECT path, state FROM "{table}" ORDER BY path') == [
        ("growing.tif", "failed"),
        ("still.tif", "backed_up"),
    ]
    bucket = setup.bucket(folder)
    keys = [v["Key"] for v in s3.list_object_versions(Bucket=bucket).get("Versions", [])]
    assert keys == [str(folder / "still.tif").lstrip("/")]
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []  # aborted

    second = setup.run()

    assert second.returncode == 0, second.stderr
    data = growing.read_bytes()
    stat = growing.stat()
    assert setup.db(
        f"SELECT size, mtime_ns, state, hex(sha256) FROM \"{table}\" WHERE path = 'growing.tif'"
    ) == [(len(data), stat.st_mtime_ns, "backed_up", hashlib.sha256(data).hexdigest().upper())]
    head = s3.head_object(Bucket=bucket, Key=str(growing).lstrip("/"))
    assert head["ContentLength"] == len(data)


def test_a_file_cut_short_while_its_parts_are_signed_and_sent_is_left_for_the_next_run(
    setup: Setup, s3: Any, moto_url: str
) -> None:
    """Truncated once its first part is on the way: the parts still to go are hashed
    for their signature (s3/signing.py, over plain HTTP) or read as sent, and both
    find the file shorter. Nothing is recorded, the upload is aborted."""
    usual = setup.config["aws"]["endpoint_url"]
    proxy = S3Proxy(moto_url, delay_ms=250).start()  # parts in flight for a while
    try:
        folder = setup.images / "Band"
        big = setup.file("Band/big.tif", os.urandom(30 * 1024 * 1024))  # 6 parts
        setup.write_config(
            backup__folders=[str(folder)],
            backup__workers=2,
            backup__multipart_threshold_mb=5,
            backup__part_size_mb=5,
            aws__endpoint_url=proxy.url,
        )
        cut = threading.Event()

        def cut_when_the_first_part_goes() -> None:
            deadline = time.monotonic() + 60
            while proxy.requests["PUT part"] < 1 and time.monotonic() < deadline:
                time.sleep(0.005)
            os.truncate(big, 1024 * 1024)
            cut.set()

        cutter = threading.Thread(target=cut_when_the_first_part_goes)
        cutter.start()
        first = setup.run()
        cutter.join()

        assert cut.is_set()
        assert first.returncode == 1, first.stdout + first.stderr
        assert "big.tif" in first.stderr
        assert "became shorter while it was uploaded" in first.stderr, first.stderr
        table = setup.table(folder)
        assert setup.db(f'SELECT path, state FROM "{table}"') == [("big.tif", "failed")]
        bucket = setup.bucket(folder)
        assert s3.list_object_versions(Bucket=bucket).get("Versions", []) == []
        assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []  # aborted
    finally:
        proxy.stop()

    setup.write_config(aws__endpoint_url=usual)
    second = setup.run()

    assert second.returncode == 0, second.stdout + second.stderr
    data = big.read_bytes()
    assert setup.db(f'SELECT state, hex(sha256) FROM "{table}"') == [
        ("backed_up", hashlib.sha256(data).hexdigest().upper())
    ]


def test_a_rewrite_that_puts_the_mtime_back_during_a_multipart_upload_is_caught(
    setup: Setup, s3: Any
) -> None:
    """Same size, same mtime, other bytes: the object must never differ from its digest."""
    folder = setup.images / "Band"
    scan = setup.file("Band/scan.tif", os.urandom(12 * 1024 * 1024))
    setup.write_config(
        backup__folders=[str(folder)], backup__multipart_threshold_mb=5, backup__part_size_mb=5
    )
    mtime_ns = scan.stat().st_mtime_ns

    def rewrite() -> None:
        with open(scan, "r+b") as handle:
            handle.seek(6 * 1024 * 1024)  # inside the second part
            handle.write(os.urandom(16))
        os.utime(scan, ns=(mtime_ns, mtime_ns))
        time.sleep(0.002)

    first = _run_while(setup, rewrite)

    assert first.returncode == 1, first.stdout
    table = setup.table(folder)
    assert setup.db(f'SELECT state FROM "{table}"') == [("failed",)]
    bucket = setup.bucket(folder)
    assert s3.list_object_versions(Bucket=bucket).get("Versions", []) == []
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []

    second = setup.run()

    assert second.returncode == 0, second.stderr
    data = scan.read_bytes()
    head = s3.head_object(Bucket=bucket, Key=str(scan).lstrip("/"), ChecksumMode="ENABLED")
    assert head["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
    # The parts carried CRC64NVME checksums: S3 combines them into the whole object's.
    expected = base64.b64encode(crc64nvme(data).to_bytes(8, "big")).decode()
    assert head["ChecksumCRC64NVME"] == expected


def test_a_file_changed_after_the_scan_is_uploaded_in_its_final_state(
    setup: Setup, s3: Any
) -> None:
    """The row records what was read (stat before and after), not what the scan saw."""
    folder = setup.images / "Band"
    setup.file("Band/a.tif", b"first")
    setup.write_config(backup__folders=[str(folder)])
    assert setup.run().returncode == 0
    table = setup.table(folder)
    # As if the scan had seen an older state: the row says 5 bytes at an old mtime.
    setup.file("Band/a.tif", b"second version", mtime=1_700_000_000)

    assert setup.run().returncode == 0

    stat = (folder / "a.tif").stat()
    assert setup.db(f'SELECT size, mtime_ns, state FROM "{table}"') == [
        (14, stat.st_mtime_ns, "backed_up")
    ]
    head = s3.head_object(Bucket=setup.bucket(folder), Key=str(folder / "a.tif").lstrip("/"))
    assert head["ContentLength"] == 14 and head["Metadata"]["mtime"] == "1700000000.000000000"


def test_a_part_is_read_from_the_file_as_sent_and_can_be_sent_again(tmp_path: Any) -> None:
    """FileRange, the body of an UploadPart: a window of the file, rewound for a retry."""
    from matricula_backup.errors import FileChanged
    from matricula_backup.s3.upload import FileRange

    path = tmp_path / "scan.tif"
    data = os.urandom(3000)
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        part = FileRange(fd, 1000, 1500, None)
        assert len(part) == 1500
        assert part.read(1000) == data[1000:2000]
        assert part.read() == data[2000:2500]
        assert part.read() == b""  # the window ends, not the file
        assert part.seek(0) == 0 and part.tell() == 0  # what botocore does before a retry
        assert part.read() == data[1000:2500]
        part.seek(0)
        os.truncate(path, 1200)  # the file shrank after it was hashed
        assert part.read(100) == data[1000:1100]
        assert part.read(100) == data[1100:1200]
        with pytest.raises(FileChanged, match="shorter"):  # never a short part
            part.read(100)
    finally:
        os.close(fd)


def test_a_part_hashed_for_signing_is_not_charged_to_the_bandwidth_limit(tmp_path: Any) -> None:
    """Over plain HTTP the part is read once to sign its SHA-256 (s3/signing.py),
    once to send it: only the sending counts against ``backup.max_bandwidth``."""
    from matricula_backup.s3.upload import FileRange
    from matricula_backup.throttle import Throttle

    class Counting(Throttle):
        charged = 0

        def consume(self, amount: int) -> None:
            Counting.charged += amount
            super().consume(amount)

    path = tmp_path / "master.tif"
    data = os.urandom(3 * 1024 * 1024 + 7)
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        length = 2 * 1024 * 1024 + 5  # three reads of up to 1 MiB
        part = FileRange(fd, 1000, length, Counting(1024**3))
        assert part.sha256_hex() == hashlib.sha256(data[1000 : 1000 + length]).hexdigest()
        assert Counting.charged == 0 and part.tell() == 0  # unpaced, position untouched
        assert part.read() == data[1000 : 1000 + length]
        assert Counting.charged == length
    finally:
        os.close(fd)
