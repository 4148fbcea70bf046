"""drill: a restore drill against moto, from the request to the card; tampering and kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from testkit.proxy import S3Proxy
from tests.conftest import CLI, Setup


def _backed_up(
    setup: Setup, files: int = 3, size: int = 3000, webhook: str | None = None
) -> list[Path]:
    folders = [setup.images / "Taufbuch", setup.images / "Trauungsbuch"]
    for folder in folders:
        for number in range(files):
            setup.file(f"{folder.name}/{number:03}.tif", os.urandom(size))
    setup.write_config(
        backup__folders=[str(f) for f in folders],
        **({"notification__webhook": webhook} if webhook else {}),
    )
    assert setup.run().returncode == 0
    return folders


def test_a_drill_from_request_to_card(setup: Setup, s3_proxy: S3Proxy, httpserver: Any) -> None:
    httpserver.expect_request("/hook").respond_with_data("", status=202)
    _backed_up(setup, webhook=httpserver.url_for("/hook") + "?sig=TOPSECRET")
    s3_proxy.reset_counts()

    first = setup.run("drill", "--sample", "4")
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert lines[0].startswith(
        "drill #1 (new): 4 objects, Bulk tier; cost of what is left: about $"
    )
    assert "4 restores requested now, 4 waiting" in first.stdout
    assert s3_proxy.requests["POST restore"] == 4
    assert s3_proxy.requests["GET object"] == 0
    assert not httpserver.log  # one card, at the end
    # Spread over the folders: two of each.
    assert sorted(setup.db("SELECT folder, count(*) FROM drill_objects GROUP BY folder")) == [
        (str(setup.images / "Taufbuch"), 2),
        (str(setup.images / "Trauungsbuch"), 2),
    ]

    second = setup.run("drill", "--sample", "4")  # moto makes restores readable at once
    assert second.returncode == 0, second.stderr
    assert "drill #1 PASSED: 4 of 4 restored copies identical" in second.stdout
    assert s3_proxy.requests["POST restore"] == 4  # none asked twice
    assert len(httpserver.log) == 1
    card = str(httpserver.log[0][0].get_json())
    assert "passed: 4 of 4 identical" in card and "TOPSECRET" not in card
    assert setup.db("SELECT outcome FROM drills") == [("passed",)]
    assert setup.db("SELECT count(*), min(result) FROM fixity_events WHERE kind = 'drill'") == [
        (4, "ok")
    ]
    assert not (setup.cache / "drill-scratch").exists()

    # A daily timer with --every 30 starts no new drill before 30 days.
    third = setup.run("drill", "--every", "30")
    assert third.returncode == 0 and "none due" in third.stdout
    assert setup.db("SELECT count(*) FROM drills") == [(1,)]


def test_a_latest_version_replaced_by_hand_fails_the_drill_loudly(
    setup: Setup, s3: Any, httpserver: Any
) -> None:
    httpserver.expect_request("/hook").respond_with_data("", status=202)
    folders = _backed_up(setup, files=1, webhook=httpserver.url_for("/hook"))
    replaced = folders[0] / "000.tif"
    bucket = setup.bucket(folders[0])
    s3.put_object(Bucket=bucket, Key=str(replaced).lstrip("/"), Body=b"other bytes")

    first = setup.run("drill", "--sample", "2")
    assert first.returncode == 1  # known at once, before the drill ends
    assert f"failed: {replaced}:" in first.stderr
    assert not httpserver.log  # the card comes at the end
    second = setup.run("drill", "--sample", "2")
    assert second.returncode == 1
    assert "drill #1 FAILED: 1 of 2 restored copies identical" in second.stdout
    assert f"failed: {replaced}:" in second.stderr
    assert "replaced or deleted outside this tool" in second.stderr
    card = str(httpserver.log[-1][0].get_json())
    assert str(replaced) in card and "FAILED" in card
    assert setup.db(
        "SELECT path, result FROM fixity_events WHERE kind = 'drill' ORDER BY path, result"
    ) == [
        ("000.tif", "failed"),
        ("000.tif", "ok"),
    ]


def test_a_drill_killed_mid_way_resumes(setup: Setup, s3_proxy: S3Proxy) -> None:
    _backed_up(setup, files=10, size=400_000)
    assert setup.run("drill").returncode == 0  # requests the 20 restores
    assert s3_proxy.requests["POST restore"] == 20
    s3_proxy.reset_counts()

    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    process = subprocess.Popen(
        [CLI, "drill", "--cache", str(setup.cache)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while s3_proxy.requests["GET object"] < 3 and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    checked = setup.db("SELECT count(*) FROM drill_objects WHERE result IS NOT NULL")[0][0]
    assert 0 < checked < 20, checked  # killed mid-way, with progress kept
    s3_proxy.reset_counts()

    resumed = setup.run("drill")
    assert resumed.returncode == 0, resumed.stderr
    assert "drill #1 PASSED: 20 of 20 restored copies identical" in resumed.stdout
    assert s3_proxy.requests["POST restore"] == 0  # nothing asked twice
    assert s3_proxy.requests["GET object"] == 20 - checked  # nothing read twice
    assert setup.db("SELECT count(*) FROM fixity_events WHERE kind = 'drill'") == [(20,)]
    assert not (setup.cache / "drill-scratch").exists()


def _auditor_query() -> str:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("**The auditor's query**", 1)[1]
    return section.split("```sql\n", 1)[1].split("```", 1)[0]


def test_status_and_the_auditors_query_show_every_check(setup: Setup) -> None:
    folders = _backed_up(setup, files=1)
    assert setup.run("scrub").returncode == 0
    deep = setup.run("verify", "--deep")
    assert deep.returncode == 0, deep.stdout
    assert setup.run("drill", "--sample", "2").returncode == 0
    assert setup.run("drill", "--sample", "2").returncode == 0

    for folder in folders:
        kinds = setup.db(
            "SELECT kind, copy, result FROM fixity_events WHERE folder = ? ORDER BY id", str(folder)
        )
        assert kinds == [
            ("upload", "both", "ok"),
            ("scrub", "local", "ok"),
            ("cloud check", "bucket", "ok"),
            ("drill", "bucket", "ok"),
        ]
    query = _auditor_query()
    assert "'/images/Taufbuch 1890'" in query and "'001.tif'" in query
    rows = setup.db(
        query.replace("'/images/Taufbuch 1890'", "?").replace("'001.tif'", "?"),
        str(folders[0]),
        "000.tif",
    )
    assert [row[0] for row in rows] == ["both", "bucket", "local"]
    assert rows[0][1] == "upload" and rows[2][1] == "scrub"
    assert rows[1][1] in ("drill", "cloud check")  # the latest of the two (same second?)

    status = setup.run("status")
    assert status.returncode == 0
    line = next(x for x in status.stdout.splitlines() if x.startswith(f"{folders[0]}: scrubbed"))
    assert "scrubbed within 90 days: 1 of 1 files (100%)" in line
    assert "last drill #1 passed" in line and "(1 of 1 objects of this folder identical)" in line
    assert "last verify --deep never" not in line
    as_json = setup.run("status", "--json").stdout
    assert '"last_drill_outcome": "passed"' in as_json and '"scrubbed_recently": 1' in as_json


def test_keys_that_may_not_restore_make_the_drill_say_so(setup: Setup, moto_url: str) -> None:
    """The nightly role's keys have no s3:RestoreObject: S3 answers 403 (the proxy plays it)."""
    proxy = S3Proxy(moto_url, seed=1).start()
    try:
        setup.write_config(aws__endpoint_url=proxy.url)
        _backed_up(setup, files=1)
        proxy.configure(rate=1.0, kinds=("denied",), only={"POST restore"})
        result = setup.run("drill", "--sample", "2")
        assert result.returncode == 1
        assert "AccessDenied" in result.stderr and "iam-policy --role restore" in result.stderr
        assert setup.db("SELECT count(*) FROM drill_objects WHERE requested_at IS NULL") == [(2,)]

        proxy.configure(rate=0.0)  # the right keys: the same drill goes on
        assert setup.run("drill").returncode == 0
        finished = setup.run("drill")
        assert "drill #1 PASSED: 2 of 2" in finished.stdout, finished.stderr
    finally:
        proxy.stop()
