"""init, check-config, notify-test and the optional notice of a successful run."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from tests.conftest import CLI, Setup


def test_init_writes_an_owner_only_template_that_check_config_reads(tmp_path: Path) -> None:
    result = subprocess.run([CLI, "init", "--cache", str(tmp_path)], capture_output=True, text=True)

    assert result.returncode == 0, result.stderr
    config = tmp_path / "config.json"
    assert config.stat().st_mode & 0o777 == 0o600
    data = json.loads(config.read_text())
    assert data["backup"]["workers"] == 8 and data["aws"]["retry_mode"] == "standard"
    assert data["notification"] == {"webhook": None, "on_success": False, "stuck_after_hours": 72}
    assert data["pricing"]["put_per_1000"] == 0.05 and data["backup"]["max_bandwidth"] is None

    again = subprocess.run([CLI, "init", "--cache", str(tmp_path)], capture_output=True, text=True)
    assert again.returncode == 2 and "not overwritten" in again.stderr

    check = subprocess.run(
        [CLI, "check-config", "--cache", str(tmp_path)], capture_output=True, text=True
    )
    assert check.returncode == 1  # valid, but the placeholder folder does not exist
    assert "/path/to/an/image/folder (backup.folders[0]) -> bucket folder-" in check.stdout
    assert "(missing: not mounted?)" in check.stdout
    assert "config.json is valid: 1 backup folders" in check.stdout


def test_check_config_shows_recorded_buckets_and_reports_errors(setup: Setup) -> None:
    setup.file("Band/a.tif")
    setup.write_config(backup__folders=[str(setup.images / "Band")])
    assert setup.run().returncode == 0
    bucket = setup.bucket(setup.images / "Band")
    setup.write_config(backup__bucket_prefix="changed-")

    ok = setup.run("check-config")

    assert ok.returncode == 0, ok.stderr
    assert f"-> bucket {bucket}" in ok.stdout  # the recorded one, not a new derivation
    setup.write_config(backup__workers=0)
    bad = setup.run("check-config")
    assert bad.returncode == 2 and "backup.workers: must be a whole number" in bad.stderr


def test_notify_test_sends_a_card(setup: Setup, httpserver: Any) -> None:
    httpserver.expect_request("/hook").respond_with_data("1")
    setup.write_config(
        backup__folders=["/images"], notification__webhook=httpserver.url_for("/hook") + "?sig=X"
    )

    result = setup.run("notify-test")

    assert result.returncode == 0, result.stderr
    assert "test message accepted by http://localhost/…" in result.stdout
    assert "sig=X" not in result.stdout
    payload = httpserver.log[0][0].get_json()
    assert "test message" in json.dumps(payload)


def test_notify_test_reports_a_refusal(setup: Setup, httpserver: Any) -> None:
    httpserver.expect_request("/hook").respond_with_data("Bad Request", status=400)
    setup.write_config(
        backup__folders=["/images"], notification__webhook=httpserver.url_for("/hook")
    )

    result = setup.run("notify-test")

    assert result.returncode == 1
    assert "NOT accepted" in result.stderr


def test_on_success_sends_a_notice_after_a_clean_run(setup: Setup, httpserver: Any) -> None:
    httpserver.expect_request("/hook").respond_with_data("", status=202)
    setup.file("Band/a.tif")
    setup.write_config(
        backup__folders=[str(setup.images / "Band")],
        notification__webhook=httpserver.url_for("/hook"),
        notification__on_success=True,
    )

    assert setup.run().returncode == 0
    assert setup.run("--dry-run").returncode == 0  # a dry run sends nothing

    assert len(httpserver.log) == 1
    assert ": done" in json.dumps(httpserver.log[0][0].get_json())


def test_runs_show_their_cost_and_prices_can_be_overridden(setup: Setup) -> None:
    for number in range(10):
        setup.file(f"Band/{number}.tif", b"x" * 1000)
    setup.write_config(backup__folders=[str(setup.images / "Band")])

    dry = setup.run("--dry-run")

    assert "estimated cost of this run: $0.00050 for about 10 PUT requests" in dry.stdout
    assert "archive: 10 files, 9.8 KiB: about $" in dry.stdout
    assert "the 40 KB S3 keeps per object makes" in dry.stdout

    setup.write_config(pricing__put_per_1000=5.0)  # a region with dearer requests
    real = setup.run()

    assert real.returncode == 0, real.stderr
    # 10 PUTs, the listing of the new bucket, the bucket creation and its 4 settings
    requests = re.search(r"(\d+) S3 requests", real.stdout)
    assert requests, real.stdout
    assert (
        f"cost of this run: about $0.08 for its {requests.group(1)} S3 requests: 16 PUT/LIST "
        "at $5.00 per 1,000 and " in real.stdout
    )


def test_a_bad_price_is_a_config_error(setup: Setup) -> None:
    setup.write_config(backup__folders=["/images"], pricing__put_per_1000="cheap")
    result = setup.run("check-config")
    assert result.returncode == 2
    assert "pricing.put_per_1000: must be a price in USD" in result.stderr


def test_init_creates_a_missing_cache_directory_owner_only(tmp_path: Path) -> None:
    cache = tmp_path / "var" / "lib" / "matricula-backup"
    for command in ("status", "check-config"):  # the other commands still refuse it
        refused = subprocess.run(
            [CLI, command, "--cache", str(cache)], capture_output=True, text=True
        )
        assert refused.returncode == 2 and "no such directory" in refused.stderr
        assert not cache.parent.exists()

    result = subprocess.run([CLI, "init", "--cache", str(cache)], capture_output=True, text=True)

    assert result.returncode == 0, result.stderr
    assert f"created {cache} (mode 700)" in result.stdout
    assert cache.stat().st_mode & 0o777 == 0o700
    umask = os.umask(0o022)
    os.umask(umask)
    assert (tmp_path / "var").stat().st_mode & 0o777 == 0o777 & ~umask  # parents: the usual mode
    assert (cache / "config.json").stat().st_mode & 0o777 == 0o600
    check = subprocess.run(
        [CLI, "check-config", "--cache", str(cache)], capture_output=True, text=True
    )
    assert "config.json is valid" in check.stdout


def test_init_says_why_it_cannot_create_the_cache_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    result = subprocess.run(
        [CLI, "init", "--cache", str(tmp_path / "file" / "cache")], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "cannot create the cache directory" in result.stderr and "Traceback" not in result.stderr
