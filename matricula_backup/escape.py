"""Text from outside made safe to print, log and send.

File names, bucket keys and webhook answers are chosen by whoever controls
the disk, the bucket or the server. A name holding a newline could forge a log
line ("...\\n2026-11-27 01:00:00 INFO backup finished: 0 errors"), an escape
sequence (``\\x1b[2J``) could clear the administrator's terminal. Every path
to a person (``Problem.__str__``, the log formatter of ``logs.py``, the Teams
card, the CLI's echo) goes through ``printable``; the log formatter also
passes every line through ``redact`` so that a webhook's ``sig=`` credential,
echoed back by a server in an error, never reaches a log or stderr.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# The credential of a Teams/Workflows webhook URL, also percent-encoded (sig%3D).
_SIG = re.compile(r"(?i)(\bsig(?:=|%3D))[^&\s\"'<>\\]+")
REDACTED = "<redacted>"


def printable(text: str) -> str:
    """``text`` with every non-printable character written as a Python escape.

    Control characters (C0, DEL, C1), line and paragraph separators, format
    characters (bidirectional overrides) and lone surrogates become ``\\n``,
    ``\\x1b``, ``\\u202e``, ...; everything else, spaces and backslashes
    included, stays as it is, so ``printable(printable(s)) == printable(s)``.
    """
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def redact(text: str) -> str:
    """``text`` without the value of any ``sig=`` query parameter."""
    return _SIG.sub(lambda match: match.group(1) + REDACTED, text)


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def redact_url(url: str) -> str:
    """The URL without its path and query: safe to log (a webhook's ``sig=`` is a secret)."""
    parsed = http_url(url)
    if parsed is None:
        return "<invalid URL>"
    scheme, host, _ = parsed
    return f"{scheme}://{host}/…"


def http_url(url: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port) of an ``http://`` or ``https://`` URL with a host, or None.

    Standard library only: a run validates its config.json webhook and endpoint
    every time, and should not load an HTTP client unless it sends something.
    Whitespace and control characters anywhere, a missing host, a userinfo-only
    host or a port that is not a number make the URL invalid (None).
    """
    if not url or any(ch <= " " or ch == "\x7f" for ch in url):
        return None
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a port that is not a number
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in ("http", "https") or not host:
        return None
    if ":" in host:  # IPv6: keep the brackets of the URL form
        host = f"[{host}]"
    return scheme, host, port
