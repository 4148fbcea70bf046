"""A config.json that stops the nightly backup reaches Teams, at most once a day
per error, through the real command and a real webhook receiver (pytest-httpserver)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.conftest import Setup

HOOK = "/workflows/abc/triggers/manual/paths/invoke"


@pytest.fixture()
def webhook(setup: Setup, httpserver: Any) -> str:
    httpserver.expect_request(HOOK, method="POST").respond_with_data("", status=202)
    url = httpserver.url_for(HOOK) + "?api-version=1&sig=SECRETSIG"
    setup.file("Band/a.tif", b"scan")
    setup.write_config(backup__folders=[str(setup.images / "Band")], notification__webhook=url)
    return url


def _cards(httpserver: Any) -> list[str]:
    return [json.dumps(request.get_json()) for request, _response in httpserver.log]


def test_a_config_error_is_sent_once_a_day_a_new_one_at_once_none_after_the_fix(
    setup: Setup, httpserver: Any, webhook: str
) -> None:
    setup.write_config(backup__folder=["/typo"])  # unknown key next to backup.folders

    first = setup.run()
    second = setup.run()

    assert first.returncode == second.returncode == 2
    assert "unknown key backup.folder" in first.stderr
    cards = _cards(httpserver)
    assert len(cards) == 1
    assert "no backup ran" in cards[0] and "unknown key backup.folder" in cards[0]
    assert "SECRETSIG" not in cards[0]
    log = (setup.cache / "matricula-backup.log").read_text()
    assert "SECRETSIG" not in log + first.stderr + second.stderr
    assert "not sent again" in log
    memory = setup.cache / "config-error-notified.json"
    assert memory.stat().st_mode & 0o077 == 0

    setup.write_config(backup__workers=0)  # a second error (the first one still there)
    del setup.config["backup"]["folder"]
    setup.write_config()
    third = setup.run()

    assert third.returncode == 2
    cards = _cards(httpserver)
    assert len(cards) == 2
    assert "backup.workers: must be a whole number" in cards[1]

    del setup.config["backup"]["workers"]
    setup.write_config()
    fixed = setup.run()

    assert fixed.returncode == 0, fixed.stderr
    assert len(httpserver.log) == 2
    assert not memory.exists()


def test_the_same_error_is_sent_again_on_a_later_day(
    setup: Setup, httpserver: Any, webhook: str
) -> None:
    setup.write_config(backup__workers="8")
    assert setup.run().returncode == 2
    memory = setup.cache / "config-error-notified.json"
    remembered = json.loads(memory.read_text())
    remembered["sent_at"] = time.time() - 86_400  # as if it was sent yesterday
    memory.write_text(json.dumps(remembered))

    assert setup.run().returncode == 2

    assert len(httpserver.log) == 2


def test_broken_json_still_finds_the_one_webhook_string(
    setup: Setup, httpserver: Any, webhook: str
) -> None:
    text = (setup.cache / "config.json").read_text()
    (setup.cache / "config.json").write_text(text.replace("}", ",}", 1))  # a trailing comma

    result = setup.run()

    assert result.returncode == 2
    assert "config.json: not valid JSON" in result.stderr
    cards = _cards(httpserver)
    assert len(cards) == 1 and "not valid JSON" in cards[0]


def test_no_card_for_a_dry_run_or_without_a_readable_webhook(
    setup: Setup, httpserver: Any, webhook: str
) -> None:
    setup.write_config(backup__folder=["/typo"])
    assert setup.run("--dry-run").returncode == 2
    assert httpserver.log == []

    setup.write_config(notification__webhook="ftp://not-a-webhook/?sig=SECRETSIG")
    result = setup.run()

    assert result.returncode == 2
    assert httpserver.log == []
    log = (setup.cache / "matricula-backup.log").read_text()
    assert "nobody is told of this error" in log
    assert "SECRETSIG" not in log + result.stderr
