"""backup.max_bandwidth: uploads together stay under the limit."""

from __future__ import annotations

import os
import time

import pytest

from matricula_backup.throttle import Throttle, parse_rate
from tests.conftest import Setup


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("20MB/s", 20_000_000),
        ("512KiB/s", 524_288),
        ("1.5 MB/s", 1_500_000),
        ("100000", 100_000),
        ("2 GiB", 2 * 1024**3),
    ],
)
def test_rates_are_read_as_people_write_them(text: str, rate: int) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["fast", "0MB/s", "-1", "20 MB/h"])
def test_nonsense_rates_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rate(text)


def test_the_bucket_paces_consumers_across_threads() -> None:
    import threading

    throttle = Throttle(2_000_000)
    started = time.monotonic()
    threads = [
        threading.Thread(target=lambda: [throttle.consume(50_000) for _ in range(20)])
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # 3 MB at 2 MB/s, less the initial burst of half a megabyte: at least 1.2 s.
    assert time.monotonic() - started >= 1.2


def test_a_run_with_a_limit_takes_at_least_size_over_rate(setup: Setup) -> None:
    for number in range(6):
        setup.file(f"Band/{number}.tif", os.urandom(500_000))
    setup.write_config(backup__folders=[str(setup.images / "Band")], backup__max_bandwidth="1MB/s")

    started = time.monotonic()
    result = setup.run()
    elapsed = time.monotonic() - started

    assert result.returncode == 0, result.stderr
    assert "uploaded 6/6 files" in result.stdout
    assert elapsed >= 2.5  # 3 MB at 1 MB/s, less the quarter-second burst


def test_a_bad_limit_is_a_config_error(setup: Setup) -> None:
    setup.write_config(backup__folders=["/images"], backup__max_bandwidth="fast")
    result = setup.run("check-config")
    assert result.returncode == 2
    assert "backup.max_bandwidth: 'fast' is not a rate" in result.stderr
