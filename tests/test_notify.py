"""The Teams card, and sending it to a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from matricula_backup import notify
from matricula_backup.report import FolderReport, Problem, RunReport


def _report(problems: int) -> RunReport:
    report = RunReport(hostname="imageserver")
    report.folders.append(FolderReport(folder="/images/a", bucket="a-12345678", uploaded=7))
    for number in range(problems):
        report.add_problem(
            Problem("/images/a", "upload", "AccessDenied " * 20, f"/images/a/{'x' * 300}{number}")
        )
    return report


def test_the_card_is_an_adaptive_card_in_a_message_envelope() -> None:
    card = notify.failure_card(_report(3), Path("/var/lib/mb/matricula-backup.log"))
    assert card["type"] == "message"
    content = card["attachments"][0]["content"]
    assert card["attachments"][0]["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert content["type"] == "AdaptiveCard" and content["version"] == "1.4"
    text = json.dumps(content)
    assert "imageserver" in text and "/images/a" in text and "3 errors" in text
    assert "/var/lib/mb/matricula-backup.log" in text


def test_ten_thousand_errors_still_fit_in_28_kb() -> None:
    card = notify.failure_card(_report(10_000), Path("/log"))
    assert len(json.dumps(card).encode()) < 28_000
    assert "and 9975 more" in json.dumps(card)


@pytest.mark.parametrize(
    ("status", "body", "accepted"),
    [
        (202, "", True),
        (200, "1", True),
        (200, "Webhook message delivery failed", False),
        (400, "Bad payload", False),
    ],
)
def test_send_understands_connectors_and_workflows(
    httpserver: Any, status: int, body: str, accepted: bool
) -> None:
    httpserver.expect_request("/workflows/x").respond_with_data(body, status=status)
    url = httpserver.url_for("/workflows/x") + "?sig=TOPSECRET"
    assert notify.send(url, {"type": "message"}) is accepted
    assert httpserver.log[0][0].get_json() == {"type": "message"}


def test_an_unreachable_webhook_is_logged_without_its_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    assert notify.send("http://127.0.0.1:9/hook?sig=TOPSECRET", {"type": "message"}) is False
    assert "Teams notification" in caplog.text
    assert "TOPSECRET" not in caplog.text


def test_a_slow_webhook_costs_bounded_time(httpserver: Any) -> None:
    import time

    def slow(request: Any) -> Any:
        from werkzeug import Response

        time.sleep(3)
        return Response("1")

    httpserver.expect_request("/slow").respond_with_handler(slow)
    started = time.monotonic()
    assert notify.send(httpserver.url_for("/slow") + "?sig=S", {"type": "message"}, 1.0) is False
    assert time.monotonic() - started < 2.5
