"""The Teams message sent at the end of a run with errors.

One payload works for both kinds of Teams webhook: the message envelope with
an Adaptive Card (version 1.4) inside, which the retiring Office 365
connectors and the Workflows (Power Automate) webhooks both accept. The card
stays under Teams' 28 KB limit by listing only the first errors.

The webhook URL carries its credential in the query (``sig=``): it is never
logged; httpx errors are reported by type and host only.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from matricula_backup.escape import REDACTED, printable, redact, redact_url
from matricula_backup.report import Problem, RunReport, human_bytes

logger = logging.getLogger(__name__)

MAX_PAYLOAD_BYTES = 27_000  # Teams refuses messages over 28 KB
MAX_LISTED_ERRORS = 25
TIMEOUT_SECONDS = 15.0


def failure_card(report: RunReport, log_path: Path) -> dict[str, Any]:
    """The message envelope with an Adaptive Card summarising the run."""
    total = report.totals()
    facts = [
        {"title": "Host", "value": report.hostname},
        {"title": "Folders", "value": str(len(report.folders))},
        {"title": "Errors", "value": str(report.error_count)},
        {
            "title": "Uploaded",
            "value": f"{total.uploaded} files ({human_bytes(total.bytes_uploaded)})",
        },
        {"title": "Deleted", "value": str(total.deleted)},
        {"title": "Log", "value": str(log_path)},
    ]
    failing = sorted({problem.folder for problem in report.problems})
    body: list[dict[str, Any]] = [
        _title(f"Matricula backup on {report.hostname}: {report.error_count} errors", "Attention"),
        {"type": "FactSet", "facts": facts},
        {"type": "TextBlock", "weight": "Bolder", "wrap": True, "text": "Folders with errors"},
        {
            "type": "TextBlock",
            "wrap": True,
            "text": "\n".join(f"- {_card_text(f)}" for f in failing[:20]),
        },
        {"type": "TextBlock", "weight": "Bolder", "wrap": True, "text": "First errors"},
    ]
    for problem in report.problems[:MAX_LISTED_ERRORS]:
        body.append(
            {
                "type": "TextBlock",
                "wrap": True,
                "spacing": "Small",
                "fontType": "Monospace",
                "size": "Small",
                "text": _card_text(str(problem))[:500],
            }
        )
    more = report.error_count - MAX_LISTED_ERRORS
    body.append(
        {
            "type": "TextBlock",
            "wrap": True,
            "isSubtle": True,
            "text": (f"…and {more} more. " if more > 0 else "")
            + "Files that failed are tried again on the next run. Details: the log above, or "
            "`SELECT * FROM problems WHERE run_id = (SELECT max(id) FROM runs)` in state.db.",
        }
    )
    card = _envelope(body)
    # Long paths could still push it over the limit: drop error lines until it fits.
    while len(json.dumps(card).encode()) > MAX_PAYLOAD_BYTES and len(body) > 6:
        body.pop(-2)
    return card


def success_card(report: RunReport, log_path: Path) -> dict[str, Any]:
    """The notice of a run without errors (only with notification.on_success)."""
    total = report.totals()
    return _envelope(
        [
            _title(f"Matricula backup on {report.hostname}: done", "Good"),
            {
                "type": "FactSet",
                "facts": [
                    {"title": "Folders", "value": str(len(report.folders))},
                    {"title": "Files on disk", "value": str(total.files_seen)},
                    {
                        "title": "Uploaded",
                        "value": f"{total.uploaded} files ({human_bytes(total.bytes_uploaded)})",
                    },
                    {"title": "Deleted", "value": str(total.deleted)},
                    {"title": "S3 requests", "value": str(report.s3_requests)},
                    {"title": "Log", "value": str(log_path)},
                ],
            },
        ]
    )


def test_card(hostname: str, config_path: Path) -> dict[str, Any]:
    """What ``notify-test`` sends: proof that the webhook reaches the channel."""
    return _envelope(
        [
            _title(f"Matricula backup on {hostname}: test message", "Accent"),
            {
                "type": "TextBlock",
                "wrap": True,
                "text": f"This channel will be told when a backup run has errors. "
                f"Sent by `matricula-backup notify-test` with {config_path}.",
            },
        ]
    )


def _card_text(text: str) -> str:
    """Untrusted text (file names) for a TextBlock: escaped, and no Markdown link, which
    a file named "[Log in again](https://...)" would otherwise put in the channel."""
    return printable(text).replace("](", "]\u200b(")


def config_error_card(
    hostname: str, config_path: Path, error: str, log_path: Path
) -> dict[str, Any]:
    """config.json stopped the run: which key is wrong, and that no backup ran."""
    return _envelope(
        [
            _title(f"Matricula backup on {hostname}: no backup ran (config.json)", "Attention"),
            {
                "type": "TextBlock",
                "wrap": True,
                "text": f"{config_path} is not valid, so the backup stopped before doing "
                "anything: no folder was scanned, nothing was uploaded or deleted.",
            },
            {
                "type": "TextBlock",
                "wrap": True,
                "fontType": "Monospace",
                "size": "Small",
                "text": error[:2000],
            },
            {
                "type": "TextBlock",
                "wrap": True,
                "isSubtle": True,
                "text": "Fix the key named above, then check it with `matricula-backup "
                f"check-config --cache {config_path.parent}`. Every run stops until then; "
                f"this message is repeated once a day while the error stays. Log: {log_path}",
            },
        ]
    )


def _title(text: str, color: str) -> dict[str, Any]:
    return {
        "type": "TextBlock",
        "size": "Large",
        "weight": "Bolder",
        "color": color,
        "wrap": True,
        "text": text,
    }


def _envelope(body: list[dict[str, Any]]) -> dict[str, Any]:
    """The message envelope both Teams connectors and Workflows accept."""
    return {
        "type": "message",
        "attachments": [
            {
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": None,
                "content": {
                    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "type": "AdaptiveCard",
                    "version": "1.4",
                    "msteams": {"width": "Full"},
                    "body": body,
                },
            }
        ],
    }


def send(webhook: str, payload: dict[str, Any], timeout: float = TIMEOUT_SECONDS) -> bool:
    """POST the payload; True if Teams took it. Never raises, never logs the URL.

    A slow or unreachable webhook costs at most ``timeout`` seconds per phase
    (connect, send, wait for the answer).
    """
    import httpx  # here: a run that tells nobody loads no HTTP client (start-up)

    where = redact_url(webhook)
    try:
        response = httpx.post(webhook, json=payload, timeout=timeout)
    except httpx.HTTPError as exc:
        logger.error("Teams notification to %s failed: %s", where, type(exc).__name__)
        return False
    text = response.text.strip()
    # Connectors answer 200 "1"; Workflows answer 202 with no body. Connectors may
    # also answer 200 with an error text instead of "1".
    if response.status_code == 202 or (response.status_code == 200 and text in ("", "1")):
        logger.info("Teams notification sent to %s", where)
        return True
    # The answer may echo the URL with its sig= (a credential): never log it.
    logger.error(
        "Teams notification to %s was refused: HTTP %d %s",
        where,
        response.status_code,
        _without_secret(text, webhook)[:200],
    )
    return False


def _without_secret(text: str, webhook: str) -> str:
    """A webhook's answer without the URL's query values, however they are encoded."""
    for pair in urlsplit(webhook).query.split("&"):
        raw = pair.partition("=")[2]
        if len(raw) >= 8:  # api-version=1 is no secret, and would blank out digits
            for form in sorted({raw, unquote(raw), quote(unquote(raw), safe="")}, key=len)[::-1]:
                text = text.replace(form, REDACTED)
    return printable(redact(text))


# An item of a fixity card: the file, facts about it, and a command to run (or None).
CardItem = tuple[str, list[tuple[str, str]], str | None]
MAX_CARD_ITEMS = 10


def fixity_card(
    title: str, color: str, intro: str, items: list[CardItem], log_path: Path
) -> dict[str, Any]:
    """A scrub's fixity failures or a finished restore drill: each file named, its facts,
    and the exact command that repairs it. File names are escaped (``_card_text``)."""
    body: list[dict[str, Any]] = [
        _title(title, color),
        {"type": "TextBlock", "wrap": True, "text": intro},
    ]
    for name, facts, command in items[:MAX_CARD_ITEMS]:
        body.append(
            {"type": "TextBlock", "weight": "Bolder", "wrap": True, "text": _card_text(name)}
        )
        body.append(
            {
                "type": "FactSet",
                "facts": [{"title": t, "value": _card_text(v)} for t, v in facts],
            }
        )
        if command:
            body.append(
                {
                    "type": "TextBlock",
                    "wrap": True,
                    "fontType": "Monospace",
                    "size": "Small",
                    "text": printable(command),
                }
            )
    if len(items) > MAX_CARD_ITEMS:
        body.append(
            {
                "type": "TextBlock",
                "wrap": True,
                "isSubtle": True,
                "text": f"... and {len(items) - MAX_CARD_ITEMS} more: see {log_path}",
            }
        )
    body.append({"type": "TextBlock", "wrap": True, "isSubtle": True, "text": f"Log: {log_path}"})
    return _envelope(body)


# Who is told, and when. cli.py only says what happened; these decide whether Teams
# hears of it and with which card.


def tell_run(webhook: str | None, report: RunReport, log_path: Path, on_success: bool) -> None:
    """The end of a run: errors always go to Teams; a clean run only with
    notification.on_success."""
    if report.error_count:
        tell_errors(webhook, report, log_path)
    elif on_success and webhook:
        send(webhook, success_card(report, log_path))


def tell_errors(webhook: str | None, report: RunReport, log_path: Path) -> None:
    """A failure card; without a webhook, a warning in the log that nobody is told."""
    if not webhook:
        logger.warning("no notification.webhook in config.json: nobody is told of these errors")
        return
    send(webhook, failure_card(report, log_path))


def tell_fatal(
    webhook: str | None,
    exc: BaseException,
    reset: bool,
    log_path: Path,
    *,
    lock_held: bool = False,
    held_since: float | None = None,
    stuck_after_hours: float = 0.0,
) -> None:
    """The backup could not run: Teams is told, except of a lock held by another run
    (normal while that run works) until the holder looks stuck: held for longer than
    notification.stuck_after_hours (a holder whose start is unknown never looks stuck)."""
    if lock_held and (held_since is None or time.time() - held_since <= stuck_after_hours * 3600):
        return
    report = RunReport(reset=reset)
    report.add_problem(Problem("(whole run)", "run", f"the backup could not run: {exc}"))
    tell_errors(webhook, report, log_path)


def tell_scrub_failures(
    webhook: str | None, failures: int, items: list[CardItem], log_path: Path
) -> None:
    """A scrub found files whose bytes changed: Teams gets each one and its repair command."""
    if not webhook:
        return
    title = f"Matricula scrub on {socket.gethostname()}: {failures} fixity failures"
    intro = (
        "These files changed on the image server although their size and mtime did not "
        "(bit rot or tampering). They are held: no run uploads them over the good copy. "
        "Restore the good copy with the command below, or run matricula-backup scrub "
        "--accept PATH if the new bytes are right."
    )
    send(webhook, fixity_card(title, "Attention", intro, items, log_path))


def tell_drill(
    webhook: str | None,
    passed: bool,
    identical: int,
    objects: int,
    tier: str,
    items: list[CardItem],
    log_path: Path,
) -> None:
    """A restore drill finished: one card, passed or failed."""
    if not webhook:
        return
    verdict = "passed" if passed else "FAILED"
    title = (
        f"Matricula restore drill on {socket.gethostname()} {verdict}: "
        f"{identical} of {objects} identical"
    )
    intro = (
        f"{objects} random objects were restored from Deep Archive "
        f"({tier} tier) and compared with the SHA-256 recorded at upload and with "
        "the local files."
        + ("" if passed else " These failed: find out why before relying on them.")
    )
    send(webhook, fixity_card(title, "Good" if passed else "Attention", intro, items, log_path))
