"""What an administrator meets in the first week (issue 15): setting up, checking the
connection, reading the output. Every test runs the real command."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer

from testkit.servers import free_port
from tests.conftest import CLI, Setup, skip_unless_other_users_can_run_the_command

NOBODY = 65534


# --- config.json missing or unreadable -------------------------------------------------------


def test_a_missing_config_points_at_init(setup: Setup) -> None:
    (setup.cache / "config.json").unlink()

    result = setup.run()

    assert result.returncode == 2
    assert f"matricula-backup init --cache {setup.cache}" in result.stderr

    # ... and that command works as written.
    init = setup.run("init")
    assert init.returncode == 0, init.stderr
    assert (setup.cache / "config.json").exists()


def test_an_unreadable_config_says_whose_it_is_and_how_to_fix_it() -> None:
    skip_unless_other_users_can_run_the_command()
    # The service user's cache directory, with a config.json root wrote (mode 600).
    top = Path(tempfile.mkdtemp(prefix="mb-config-", dir="/tmp"))  # tmp_path is root-only
    try:
        top.chmod(0o755)
        cache = top / "cache"
        cache.mkdir()
        os.chown(cache, NOBODY, NOBODY)
        config = cache / "config.json"
        config.write_text('{"backup": {"folders": ["/srv/images"]}}')
        config.chmod(0o600)
        result = subprocess.run(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
            + [CLI, "check-config", "--cache", str(cache)],
            capture_output=True,
            text=True,
            env={"PATH": os.environ["PATH"], "HOME": "/"},
            timeout=120,
        )
    finally:
        shutil.rmtree(top)

    assert result.returncode == 2
    assert f"{config}: cannot read: Permission denied" in result.stderr
    assert "belongs to root (mode 600) and this runs as nobody" in result.stderr
    assert f"chown nobody {config} && chmod 600 {config}" in result.stderr
    assert "runuser -u root --" in result.stderr


def test_permission_denied_says_how_to_give_the_account_read_access(setup: Setup) -> None:
    skip_unless_other_users_can_run_the_command()
    top = Path(tempfile.mkdtemp(prefix="mb-denied-", dir="/tmp"))  # tmp_path is root-only
    try:
        top.chmod(0o755)
        folder = top / "Band"
        (folder / "locked").mkdir(parents=True)
        folder.chmod(0o755)
        (folder / "locked").chmod(0o700)  # root's
        (folder / "secret.tif").write_bytes(b"scan")
        (folder / "secret.tif").chmod(0o600)  # root's
        cache = top / "cache"
        cache.mkdir()
        config = dict(setup.config, backup={"folders": [str(folder)]})
        (cache / "config.json").write_text(json.dumps(config))
        (cache / "config.json").chmod(0o600)
        for path in (cache, cache / "config.json"):
            os.chown(path, NOBODY, NOBODY)
        result = subprocess.run(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
            + [CLI, "--cache", str(cache)],
            capture_output=True,
            text=True,
            env={"PATH": os.environ["PATH"], "HOME": "/"},
            timeout=120,
        )
    finally:
        shutil.rmtree(top)

    assert result.returncode == 1, result.stderr
    hint = (
        "(give nobody read access, e.g. setfacl -R -m u:nobody:rX FOLDER and "
        "setfacl -R -d -m u:nobody:rX FOLDER, or a group with g+rX: see the README)"
    )
    assert f"{folder}/secret.tif: cannot read: Permission denied {hint}" in result.stderr
    assert f"{folder}/locked: cannot list this directory: Permission denied {hint}" in (
        result.stderr
    )


# --- check-config --online -------------------------------------------------------------------


def test_check_config_online_reaches_s3_and_the_webhook_and_posts_nothing(
    setup: Setup, httpserver: HTTPServer, s3_proxy: Any
) -> None:
    folder = setup.images / "Band"
    folder.mkdir()
    webhook = httpserver.url_for("/workflows/x/invoke") + "?api-version=1&sig=SECRET-SIG"
    setup.write_config(backup__folders=[str(folder)], notification__webhook=webhook)
    httpserver.expect_request("/", method="HEAD").respond_with_data("", status=404)

    result = setup.run("check-config", "--online")

    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(
        r"^S3: ok: .*accepted the keys; bucket band-\w+ does not exist yet", result.stdout, re.M
    )
    assert re.search(
        r"^webhook: ok: http://(localhost|127\.0\.0\.1)/… is reachable", result.stdout, re.M
    )
    assert [(r.method, r.path) for r, _ in httpserver.log] == [("HEAD", "/")]  # nothing posted
    assert "SECRET-SIG" not in result.stdout + result.stderr
    assert "test-secret-never-logged" not in result.stdout + result.stderr
    assert s3_proxy.total == 1  # one cheap request to S3

    # After the first run the bucket exists, and that is said too.
    setup.file("Band/a.tif")
    assert setup.run().returncode == 0
    again = setup.run("check-config", "--online")
    assert again.returncode == 0
    assert "exists (versioning Enabled)" in again.stdout


def test_check_config_online_says_what_cannot_be_reached(setup: Setup) -> None:
    folder = setup.images / "Band"
    folder.mkdir()
    down = f"http://127.0.0.1:{free_port()}"
    setup.write_config(
        backup__folders=[str(folder)],
        aws__endpoint_url=down,
        notification__webhook=f"{down}/workflows/x?sig=SECRET-SIG",
    )

    result = setup.run("check-config", "--online")

    assert result.returncode == 1
    assert f"S3: FAILED: could not reach S3 at {down}: EndpointConnectionError" in result.stderr
    assert "check aws.endpoint_url" in result.stderr
    assert "webhook: FAILED: could not reach http://127.0.0.1/…: ConnectError" in result.stderr
    assert "SECRET-SIG" not in result.stdout + result.stderr
    assert "test-secret-never-logged" not in result.stdout + result.stderr


def test_a_dry_run_that_cannot_reach_s3_says_so_instead_of_a_plan(setup: Setup) -> None:
    setup.file("Band/a.tif")
    setup.write_config(
        backup__folders=[str(setup.images / "Band")],
        aws__endpoint_url=f"http://127.0.0.1:{free_port()}",
        aws__max_attempts=1,
    )

    result = setup.run("--dry-run")

    assert result.returncode == 2
    assert "could not reach S3 at http://127.0.0.1:" in result.stderr
    assert "EndpointConnectionError" in result.stderr
    assert "check-config --online" in result.stderr
    assert "would upload" not in result.stdout
    assert not (setup.cache / "state.db").exists()  # a dry run still writes nothing


@pytest.fixture()
def moto_checking_keys() -> Iterator[str]:
    """A moto server of its own that checks the keys (INITIAL_NO_AUTH_ACTION_COUNT=0):
    the shared one accepts any key."""
    server = shutil.which("moto_server", path=os.path.dirname(sys.executable))
    if server is None:
        pytest.skip("moto_server is not installed in this venv")
    port = free_port()  # nothing listens there
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
    process = subprocess.Popen(
        [server, "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_keys_s3_refuses_are_named_by_check_config_and_stop_the_dry_run(
    setup: Setup, moto_checking_keys: str
) -> None:
    setup.file("Band/a.tif")
    setup.write_config(
        backup__folders=[str(setup.images / "Band")], aws__endpoint_url=moto_checking_keys
    )

    check = setup.run("check-config", "--online")
    dry = setup.run("--dry-run")

    assert check.returncode == 1
    assert "S3: FAILED: could not reach S3 at" in check.stderr
    assert "InvalidAccessKeyId" in check.stderr
    assert "check aws.access_key, aws.secret_access_key" in check.stderr
    assert dry.returncode == 2
    assert "could not reach S3 at" in dry.stderr and "InvalidAccessKeyId" in dry.stderr
    assert "would upload" not in dry.stdout
    for output in (check.stdout, check.stderr, dry.stdout, dry.stderr):
        assert "test-secret-never-logged" not in output


# --- output ----------------------------------------------------------------------------------


def test_a_touched_file_is_checked_not_announced_as_an_upload(setup: Setup) -> None:
    folder = setup.images / "Band"
    setup.file("Band/a.tif", b"same bytes", mtime=1_700_000_000)
    setup.write_config(backup__folders=[str(folder)])
    assert setup.run().returncode == 0
    os.utime(folder / "a.tif", (1_700_000_100, 1_700_000_100))  # touched only

    dry = setup.run("--dry-run")

    assert dry.returncode == 0, dry.stderr
    assert "would upload 0 files (0 B), would check 1 (mtime only changed; " in dry.stdout
    summary = dry.stdout.splitlines()[1]
    assert summary.startswith("dry run done") and "would check 1 (mtime only changed; " in summary

    real = setup.run()

    assert real.returncode == 0, real.stderr
    assert "uploaded 0/0 files (0 B)" in real.stdout
    assert "; 1 unchanged (only touched, same bytes: not uploaded)" in real.stdout


def test_the_cost_line_counts_the_same_requests_as_the_summary(setup: Setup) -> None:
    setup.file("Band/a.tif", b"a")
    setup.file("Band/b.tif", b"b")
    setup.write_config(backup__folders=[str(setup.images / "Band")])

    result = setup.run()

    assert result.returncode == 0, result.stderr
    summary = re.search(r"(\d+) S3 requests", result.stdout)
    cost = re.search(
        r"^cost of this run: about \$[\d.]+ for its (\d+) S3 requests: (\d+) PUT/LIST at "
        r"\$0\.05 per 1,000 and (\d+) others \(",
        result.stdout,
        re.M,
    )
    assert summary and cost, result.stdout
    assert summary.group(1) == cost.group(1)
    assert int(cost.group(2)) + int(cost.group(3)) == int(cost.group(1))
    assert int(cost.group(2)) >= 2  # the two PUTs at least


def test_the_live_display_fits_80_columns(setup: Setup) -> None:
    if not shutil.which("script"):
        pytest.skip("needs script(1) from util-linux for a pseudo terminal")
    # A long folder name, and sizes whose totals have many digits.
    folder = setup.images / ("Taufbuch der Pfarrei Sankt Johannes Baptist " * 2).strip()
    for number in range(30):
        setup.file(f"{folder.name}/{number:02d}.tif", os.urandom(70_000))
    setup.write_config(backup__folders=[str(folder)], backup__workers=2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["COLUMNS"] = "80"

    result = subprocess.run(
        ["script", "-qec", shlex.join([CLI, "--cache", str(setup.cache)]), "/dev/null"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )

    assert result.returncode == 0, result.stdout
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", result.stdout)
    display = [
        line
        for line in re.split(r"[\r\n]+", plain)
        if re.search(r"\d+/\d+ files", line) and "errors" in line
    ]
    assert display, plain
    assert max(len(line) for line in display) <= 80, display
    assert any("30/30 files" in line for line in display)
    for line in display:  # whole numbers: nothing cut, nothing wrapped
        assert re.search(r"\d+/\d+ files", line)
        assert re.search(r"\d+ errors$", line.rstrip()), line
        assert not re.search(r"\d\.\.\.|\d…", line), line
