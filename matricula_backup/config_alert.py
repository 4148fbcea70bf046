"""Tell Teams when config.json stops the nightly backup, at most once a day per error.

A config error stops every run before anything is done (exit 2), and cron's
mail is read by nobody: without a card, a typo is a silent outage. When a
webhook URL can still be read from the file, a card says which key is wrong
and that no backup ran. The same error is sent again on a later calendar day
(local time: one card a night for a nightly run, one a day for an hourly
one); a different error is sent at once. What was sent and when is kept in
``config-error-notified.json`` in the cache directory, written atomically; a
config.json that loads again removes it.

Where the webhook comes from in a file that does not load:

- valid JSON: ``notification.webhook``, if it is a string holding an http(s) URL;
- broken JSON (a missing or trailing comma, the commonest slips): the one
  ``"webhook": "..."`` string of the text, if there is exactly one such string
  and it holds an http(s) URL. Nothing cleverer: a file that has several, or
  none, sends nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from matricula_backup import notify
from matricula_backup.config import CONFIG_NAME, redact_url
from matricula_backup.escape import http_url

logger = logging.getLogger(__name__)

MEMORY_NAME = "config-error-notified.json"
_WEBHOOK_STRING = re.compile(r'"webhook"\s*:\s*("(?:[^"\\\n]|\\.)*")')
_SIG = re.compile(r"(?i)(sig=)[^&\s\"']+")


def tell_teams(cache: Path, error: str, log_path: Path, now: float | None = None) -> None:
    """Send the config-error card, unless this error was sent today already."""
    webhook = webhook_in(cache / CONFIG_NAME)
    if webhook is None:
        logger.warning(
            "no notification.webhook could be read from %s: nobody is told of this error",
            cache / CONFIG_NAME,
        )
        return
    now = time.time() if now is None else now
    fingerprint = hashlib.sha256(error.encode("utf-8", "backslashreplace")).hexdigest()
    sent_at = _sent_at(cache, fingerprint)
    if sent_at is not None and _day(sent_at) == _day(now):
        logger.info(
            "config error already sent to Teams today (at %s); not sent again",
            time.strftime("%H:%M", time.localtime(sent_at)),
        )
        return
    shown = _SIG.sub(r"\1…", error.replace(webhook, redact_url(webhook)))
    card = notify.config_error_card(socket.gethostname(), cache / CONFIG_NAME, shown, log_path)
    if notify.send(webhook, card):
        _remember(cache, fingerprint, now)


def forget(cache: Path) -> None:
    """config.json loads again: the next config error is sent at once."""
    try:
        (cache / MEMORY_NAME).unlink()
    except FileNotFoundError:
        return
    except OSError as exc:  # a cache directory that is not writable is reported later
        logger.warning("cannot remove %s: %s", cache / MEMORY_NAME, exc)
        return
    logger.info("config.json loads again; the config error is no longer remembered")


def webhook_in(path: Path) -> str | None:
    """The webhook URL of a config.json that does not load, if one can be read."""
    try:
        text = path.read_bytes().decode("utf-8", "replace").removeprefix("\ufeff")
    except OSError:
        return None
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):  # broken JSON, or a number too long to convert
        found = {match.group(1) for match in _WEBHOOK_STRING.finditer(text)}
        if len(found) != 1:
            return None
        try:
            url: Any = json.loads(found.pop())
        except ValueError:
            return None
    else:
        notification = document.get("notification") if isinstance(document, dict) else None
        url = notification.get("webhook") if isinstance(notification, dict) else None
    return url.strip() if isinstance(url, str) and _usable(url.strip()) else None


def _usable(url: str) -> bool:
    return http_url(url) is not None


def _day(moment: float) -> str:
    return time.strftime("%Y-%m-%d", time.localtime(moment))


def _sent_at(cache: Path, fingerprint: str) -> float | None:
    """When this error's card was sent, if it is the one remembered."""
    try:
        memory = json.loads((cache / MEMORY_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(memory, dict) or memory.get("error_sha256") != fingerprint:
        return None
    sent_at = memory.get("sent_at")
    if isinstance(sent_at, bool) or not isinstance(sent_at, int | float):
        return None
    return float(sent_at)


def _remember(cache: Path, fingerprint: str, now: float) -> None:
    """Write the memory atomically: a crash leaves the old file or the new one."""
    memory = {"error_sha256": fingerprint, "sent_at": now, "sent_day": _day(now)}
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{MEMORY_NAME}.", dir=cache)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(memory, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, cache / MEMORY_NAME)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
    except OSError as exc:  # the card went out; the next run may send it again
        logger.warning("cannot write %s: %s", cache / MEMORY_NAME, exc)
