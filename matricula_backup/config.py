"""Load and validate ``config.json`` from the cache directory.

The file is read once per run into a frozen ``Settings``. Every problem is a
``ConfigError`` whose message names the file, the field and what is wrong, e.g.
``config.json: backup.roots[0]: not a directory: /images/archives``.

Missing folders are not a config error: an unmounted share must not stop the
other folders, so ``folders.py`` reports them per folder at run time.
"""

from __future__ import annotations

import json
import math
import os.path
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from matricula_backup.access import owner_hint
from matricula_backup.errors import ConfigError
from matricula_backup.pricing import Prices
from matricula_backup.throttle import parse_rate

CONFIG_NAME = "config.json"
MIB = 1024 * 1024

# S3 allows 10,000 parts and at least 5 MiB per part. Each part is a PUT billed at
# Deep Archive request prices, so parts are large: a 1 GiB TIFF costs 8 part PUTs.
DEFAULT_PART_SIZE_MB = 128
DEFAULT_MULTIPART_THRESHOLD_MB = 128
DEFAULT_WORKERS = 8
DEFAULT_MAX_DELETE_PERCENT = 20
DEFAULT_MAX_CHANGE_PERCENT = 20
DEFAULT_RETRY_MODE = "standard"
DEFAULT_MAX_ATTEMPTS = 6
DEFAULT_STUCK_AFTER_HOURS = 72

_ALLOWED: dict[str, set[str]] = {
    "": {"backup", "notification", "aws", "pricing", "preservation"},
    "backup": {
        "folders",
        "roots",
        "bucket_prefix",
        "workers",
        "part_size_mb",
        "multipart_threshold_mb",
        "max_delete_percent",
        "exclude",
        "max_bandwidth",
        "object_lock",
        "max_change_percent",
        "follow_root_symlinks",
    },
    "notification": {"webhook", "on_success", "stuck_after_hours"},
    "pricing": Prices.keys(),
    "aws": {
        "access_key",
        "secret_access_key",
        "region",
        "endpoint_url",
        "retry_mode",
        "max_attempts",
        "crt",
    },
    "preservation": {"scrub_days", "scrub_rate", "scrub_nightly", "scrub_nightly_minutes"},
}
_PREFIX_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,29}$")
_OBJECT_LOCK_KEYS = {"mode", "days", "renew_days"}
MAX_LOCK_DAYS = 36500  # S3's limit on a default retention: 100 years


@dataclass(frozen=True)
class ObjectLock:
    """backup.object_lock: every version is protected for ``days`` days (s3.py).

    A version that stays current is protected for ``days`` more each time
    fewer than ``renew_days`` remain (worker.py): runs must come more often than that.
    """

    mode: str  # GOVERNANCE | COMPLIANCE
    days: int
    renew_days: int


@dataclass(frozen=True)
class Preservation:
    """preservation: how often scrub re-reads every file, how fast, and whether the
    nightly run ends with one (scrub.py)."""

    scrub_days: int = 90
    scrub_rate: int = 50 * 1000**2  # bytes per second read from the image server
    scrub_nightly: bool = False
    scrub_nightly_minutes: int = 120  # the nightly scrub's time budget; the rest waits


def _preservation(section: dict[str, Any]) -> Preservation:
    rate = section.get("scrub_rate", "50MB/s")
    try:
        if not isinstance(rate, str):
            raise ValueError(rate)
        parsed = parse_rate(rate)
    except ValueError:
        raise ConfigError(
            f'{CONFIG_NAME}: preservation.scrub_rate: must be a read rate like "50MB/s" or '
            f'"200MiB/s", not {rate!r}'
        ) from None
    return Preservation(
        scrub_days=_int(section, "scrub_days", 90, 1, 3650, "preservation"),
        scrub_rate=parsed,
        scrub_nightly=_bool(section, "preservation", "scrub_nightly"),
        scrub_nightly_minutes=_int(section, "scrub_nightly_minutes", 120, 1, 1440, "preservation"),
    )


MAX_PRICE = 1_000_000  # USD; the list prices are fractions of a dollar


@dataclass(frozen=True)
class AwsSettings:
    """How to reach S3. Absent keys fall back to boto3's usual chain and env vars."""

    access_key: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    region: str | None = None
    endpoint_url: str | None = None
    retry_mode: str = DEFAULT_RETRY_MODE  # botocore: standard | adaptive | legacy
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    # Single PUTs of files up to 8 MiB through the AWS Common Runtime (crt.py);
    # false: botocore for every request.
    crt: bool = True


@dataclass(frozen=True)
class Settings:
    """Everything a run needs from config.json, validated."""

    cache_dir: Path
    folders: tuple[Path, ...] = ()
    roots: tuple[Path, ...] = ()
    bucket_prefix: str = ""
    workers: int = DEFAULT_WORKERS
    part_size: int = DEFAULT_PART_SIZE_MB * MIB
    multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD_MB * MIB
    max_delete_percent: int = DEFAULT_MAX_DELETE_PERCENT
    exclude: tuple[str, ...] = ()  # glob patterns, see exclude.py
    max_bandwidth: int | None = None  # bytes per second for all uploads together
    # Mass change guard (run.py): a larger share of changed files is held back.
    max_change_percent: int = DEFAULT_MAX_CHANGE_PERCENT
    # A symlinked subfolder of a root is backed up (its target, under the link's path).
    follow_root_symlinks: bool = False
    webhook: str | None = field(default=None, repr=False)
    notify_on_success: bool = False
    # A run that cannot start because the lock has been held this long tells Teams.
    stuck_after_hours: int = DEFAULT_STUCK_AFTER_HOURS
    aws: AwsSettings = AwsSettings()
    prices: Prices = Prices()
    object_lock: ObjectLock | None = None  # off unless config.json sets it
    preservation: Preservation = Preservation()
    warnings: tuple[str, ...] = ()  # not errors: printed and logged, the run goes on

    @property
    def config_path(self) -> Path:
        return self.cache_dir / CONFIG_NAME


def load_settings(cache_dir: Path) -> Settings:
    """Read ``cache_dir/config.json`` and return validated settings."""
    path = cache_dir / CONFIG_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such file. Write a template, then edit it (see the README): "
            f"matricula-backup init --cache {cache_dir}"
        ) from None
    except PermissionError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}; {owner_hint(path)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    try:
        # A byte-order mark (Windows Notepad writes one) is not part of the JSON.
        raw = json.loads(text.removeprefix("\ufeff"), **_JSON_HOOKS)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{CONFIG_NAME}: not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from None
    except ValueError as exc:
        raise ConfigError(f"{CONFIG_NAME}: not valid JSON: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{CONFIG_NAME}: not valid JSON: nested too deeply") from None
    settings = parse_settings(raw, cache_dir)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077 and (settings.aws.secret_access_key or settings.webhook):
        warning = (
            f"{path} can be read by other users (mode {mode:o}) and holds secrets (the AWS "
            f"secret key, the webhook URL): chmod 600 {path}"
        )
        settings = replace(settings, warnings=(*settings.warnings, warning))
    return settings


def parse_settings(raw: Any, cache_dir: Path) -> Settings:
    """Validate the parsed JSON document; raise ConfigError naming the bad field."""
    _check_values(raw)
    top = _section(raw, "")
    backup = _section(top.get("backup", {}), "backup")
    notification = _section(top.get("notification", {}), "notification")
    aws = _section(top.get("aws", {}), "aws")
    prices = _section(top.get("pricing", {}), "pricing")
    for key, value in prices.items():
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not 0 <= value <= MAX_PRICE
        ):
            raise ConfigError(
                f"{CONFIG_NAME}: pricing.{key}: must be a price in USD (a number from 0 to "
                f"{MAX_PRICE:,}), not {value!r}"
            )

    folders = _paths(backup, "folders")
    roots = _paths(backup, "roots")
    if not folders and not roots:
        raise ConfigError(
            f"{CONFIG_NAME}: backup: give at least one folder in backup.folders or backup.roots"
        )

    prefix = _string(backup, "backup", "bucket_prefix") or ""
    if prefix and (
        not _PREFIX_RE.match(prefix) or prefix.startswith(("xn--", "sthree-", "amzn-s3-demo-"))
    ):
        raise ConfigError(
            f"{CONFIG_NAME}: backup.bucket_prefix: {prefix!r} is not usable in a bucket name: "
            "use 1-30 lowercase letters, digits or '-', starting with a letter or digit "
            "(and not with xn--, sthree- or amzn-s3-demo-, which AWS reserves)"
        )

    webhook = _string(notification, "notification", "webhook")
    if webhook:
        _check_url(webhook, "notification.webhook", secret=True)
    endpoint = _string(aws, "aws", "endpoint_url")
    if endpoint:
        _check_url(endpoint, "aws.endpoint_url", secret=False)

    access_key = _string(aws, "aws", "access_key")
    secret_key = _string(aws, "aws", "secret_access_key")
    if bool(access_key) != bool(secret_key):
        given, missing = (
            ("access_key", "secret_access_key")
            if access_key
            else ("secret_access_key", "access_key")
        )
        raise ConfigError(
            f"{CONFIG_NAME}: aws.{missing}: missing while aws.{given} is set; give both, or "
            "neither to use the AWS credential chain (environment, ~/.aws, instance role)"
        )

    part_size = _int(backup, "part_size_mb", DEFAULT_PART_SIZE_MB, 5, 5 * 1024) * MIB
    threshold = (
        _int(backup, "multipart_threshold_mb", DEFAULT_MULTIPART_THRESHOLD_MB, 5, 5 * 1024) * MIB
    )
    retry_mode = _string(aws, "aws", "retry_mode") or DEFAULT_RETRY_MODE
    if retry_mode not in ("standard", "adaptive", "legacy"):
        raise ConfigError(
            f"{CONFIG_NAME}: aws.retry_mode: must be standard, adaptive or legacy, "
            f"not {retry_mode!r}"
        )
    return Settings(
        cache_dir=cache_dir,
        folders=folders,
        roots=roots,
        bucket_prefix=prefix,
        workers=_int(backup, "workers", DEFAULT_WORKERS, 1, 64),
        exclude=_patterns(backup),
        max_bandwidth=_bandwidth(backup),
        max_change_percent=_int(backup, "max_change_percent", DEFAULT_MAX_CHANGE_PERCENT, 0, 100),
        follow_root_symlinks=_bool(backup, "backup", "follow_root_symlinks"),
        max_delete_percent=_int(backup, "max_delete_percent", DEFAULT_MAX_DELETE_PERCENT, 0, 100),
        part_size=part_size,
        multipart_threshold=threshold,
        webhook=webhook or None,
        notify_on_success=_bool(notification, "notification", "on_success"),
        stuck_after_hours=_int(
            notification,
            "stuck_after_hours",
            DEFAULT_STUCK_AFTER_HOURS,
            1,
            24 * 365,
            "notification",
        ),
        prices=Prices(**{key: float(value) for key, value in prices.items()}),
        aws=AwsSettings(
            access_key=access_key or None,
            secret_access_key=secret_key or None,
            region=_string(aws, "aws", "region"),
            endpoint_url=endpoint or None,
            retry_mode=retry_mode,
            max_attempts=_int(aws, "max_attempts", DEFAULT_MAX_ATTEMPTS, 1, 20, "aws"),
            crt=_bool(aws, "aws", "crt", default=True),
        ),
        object_lock=_object_lock(backup.get("object_lock")),
        preservation=_preservation(_section(top.get("preservation", {}), "preservation")),
    )


def redact_url(url: str) -> str:
    """The URL without its path and query: safe to log (a webhook's ``sig=`` is a secret)."""
    try:
        parsed = httpx.URL(url)
    except Exception:
        return "<invalid URL>"
    return f"{parsed.scheme}://{parsed.host}/…"


def _section(value: Any, name: str) -> dict[str, Any]:
    where = f"{CONFIG_NAME}: {name}" if name else CONFIG_NAME
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: must be a JSON object, not {_kind(value)}")
    unknown = sorted(set(value) - _ALLOWED[name])
    if unknown:
        dotted = ", ".join(f"{name}.{key}" if name else key for key in unknown)
        known = ", ".join(sorted(_ALLOWED[name]))
        raise ConfigError(f"{where}: unknown key {dotted} (a typo? known keys: {known})")
    return value


def _paths(section: dict[str, Any], key: str) -> tuple[Path, ...]:
    value = section.get(key, [])
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(
            f"{CONFIG_NAME}: backup.{key}: must be a list of paths, not {_kind(value)}"
        )
    paths: list[Path] = []
    for index, item in enumerate(value):
        where = f"{CONFIG_NAME}: backup.{key}[{index}]"
        if not isinstance(item, str) or not item:
            raise ConfigError(f"{where}: must be a path string, not {_kind(item)}")
        path = Path(item)
        if not path.is_absolute():
            raise ConfigError(f"{where}: must be an absolute path (starting with /): {item}")
        # Keep symlinks as written (the key is the path the user knows); drop '.', '//'.
        path = Path(os.path.normpath(item))
        if path == Path("/"):
            raise ConfigError(f"{where}: the file system root cannot be a backup folder")
        try:
            not_a_directory = path.exists() and not path.is_dir()
        except OSError as exc:  # a name too long for the file system, ...
            raise ConfigError(f"{where}: cannot be used: {exc.strerror}: {item}") from None
        if not_a_directory:
            raise ConfigError(f"{where}: not a directory: {item}")
        if path in paths:
            raise ConfigError(f"{where}: listed twice: {item}")
        paths.append(path)
    return tuple(paths)


def _string(section: dict[str, Any], name: str, key: str) -> str | None:
    value = section.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{CONFIG_NAME}: {name}.{key}: must be a string, not {_kind(value)}")
    return value.strip()


def _int(
    section: dict[str, Any], key: str, default: int, low: int, high: int, name: str = "backup"
) -> int:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(
            f"{CONFIG_NAME}: {name}.{key}: must be a whole number from {low} to {high}, "
            f"not {value!r}"
        )
    return value


def _bandwidth(section: dict[str, Any]) -> int | None:
    value = section.get("max_bandwidth")
    if value is None or value == "":
        return None
    try:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValueError(value)
        return parse_rate(str(value))
    except (ValueError, OverflowError):  # "999...9" overflows the float it goes through
        raise ConfigError(
            f"{CONFIG_NAME}: backup.max_bandwidth: {value!r} is not a rate; write e.g. "
            '"20MB/s", "512KiB/s" or null for no limit'
        ) from None


def _patterns(section: dict[str, Any]) -> tuple[str, ...]:
    value = section.get("exclude", [])
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(
            f"{CONFIG_NAME}: backup.exclude: must be a list of glob patterns, not {_kind(value)}"
        )
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item.strip("/"):
            raise ConfigError(
                f"{CONFIG_NAME}: backup.exclude[{index}]: must be a glob pattern such as "
                f'"*.tmp", not {item!r}'
            )
    return tuple(value)


def _object_lock(value: Any) -> ObjectLock | None:
    where = f"{CONFIG_NAME}: backup.object_lock"
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(
            f'{where}: must be an object such as {{"mode": "GOVERNANCE", "days": 180}} or '
            f"null, not {_kind(value)}"
        )
    unknown = sorted(set(value) - _OBJECT_LOCK_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {', '.join(unknown)} (known keys: "
            f"{', '.join(sorted(_OBJECT_LOCK_KEYS))})"
        )
    mode = value.get("mode")
    if mode not in ("GOVERNANCE", "COMPLIANCE"):
        raise ConfigError(
            f"{where}.mode: must be GOVERNANCE (an administrator with "
            "s3:BypassGovernanceRetention can still delete) or COMPLIANCE (nobody can, "
            f"not even the account's root user, until the retention ends), not {mode!r}"
        )
    if "days" not in value:
        raise ConfigError(f"{where}.days: missing; 180 matches Deep Archive's minimum storage")
    days = _int(value, "days", 180, 1, MAX_LOCK_DAYS, "backup.object_lock")
    renew_days = _int(
        value, "renew_days", min(30, max(1, days // 3)), 1, days, "backup.object_lock"
    )
    return ObjectLock(mode, days, renew_days)


def _bool(section: dict[str, Any], name: str, key: str, default: bool = False) -> bool:
    value = section.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{CONFIG_NAME}: {name}.{key}: must be true or false, not {_kind(value)}")
    return value


def template() -> dict[str, Any]:
    """config.json as ``init`` writes it: every key, optional ones at their default."""
    return {
        "backup": {
            "folders": ["/path/to/an/image/folder"],
            "roots": [],
            "bucket_prefix": "",
            "workers": DEFAULT_WORKERS,
            "part_size_mb": DEFAULT_PART_SIZE_MB,
            "multipart_threshold_mb": DEFAULT_MULTIPART_THRESHOLD_MB,
            "max_delete_percent": DEFAULT_MAX_DELETE_PERCENT,
            "exclude": [],
            "max_bandwidth": None,
            "object_lock": None,
            "max_change_percent": DEFAULT_MAX_CHANGE_PERCENT,
            "follow_root_symlinks": False,
        },
        "notification": {
            "webhook": None,
            "on_success": False,
            "stuck_after_hours": DEFAULT_STUCK_AFTER_HOURS,
        },
        "aws": {
            "access_key": None,
            "secret_access_key": None,
            "region": None,
            "endpoint_url": None,
            "retry_mode": DEFAULT_RETRY_MODE,
            "max_attempts": DEFAULT_MAX_ATTEMPTS,
            "crt": True,
        },
        "pricing": asdict(Prices()),
        "preservation": {
            "scrub_days": 90,
            "scrub_rate": "50MB/s",
            "scrub_nightly": False,
            "scrub_nightly_minutes": 120,
        },
    }


def _check_url(url: str, where: str, secret: bool) -> None:
    shown = redact_url(url) if secret else url
    try:
        parsed = httpx.URL(url)
    except Exception:
        raise ConfigError(f"{CONFIG_NAME}: {where}: not a valid URL: {shown}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError(
            f"{CONFIG_NAME}: {where}: must be an http:// or https:// URL, not {shown}"
        )


def _kind(value: Any) -> str:
    names = {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "true/false",
        int: "a number",
        float: "a number",
    }
    return "null" if value is None else names.get(type(value), type(value).__name__)


# --- JSON oddities: NaN, Infinity, numbers too long to convert, surrogates, NUL -------------

# Python converts at most 4,300 digits between int and str (a ValueError otherwise,
# even in json.loads and repr): longer numbers are refused, at their key.
MAX_DIGITS = 4300


@dataclass(frozen=True)
class _Unusable:
    """A JSON value Python would take but no setting can use; refused at its key."""

    why: str


class _Object(dict[str, Any]):
    """A JSON object that remembers keys given twice (json.loads keeps the last)."""

    twice: tuple[str, ...] = ()


def _object(pairs: list[tuple[str, Any]]) -> _Object:
    result = _Object(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        twice = []
        for key, _value in pairs:
            if key in seen:
                twice.append(key)
            seen.add(key)
        result.twice = tuple(twice)
    return result


def _number(text: str) -> Any:
    digits = len(text.lstrip("-"))
    if digits > MAX_DIGITS:
        return _Unusable(f"a number of {digits} digits is too long; write a number of normal size")
    return int(text)


def _float(text: str) -> Any:
    value = float(text)
    if math.isfinite(value):
        return value
    shown = text if len(text) <= 24 else f"{text[:12]}… ({len(text)} characters)"
    return _Unusable(f"{shown} is too large; write a number of normal size")


def _constant(name: str) -> _Unusable:  # NaN, Infinity, -Infinity: not JSON, Python takes them
    return _Unusable(f"{name} is not a number JSON allows; write a number")


_JSON_HOOKS: dict[str, Any] = {
    "parse_int": _number,
    "parse_float": _float,
    "parse_constant": _constant,
    "object_pairs_hook": _object,
}


def _check_values(raw: Any) -> None:
    """Refuse, naming the key path, what JSON allows but no setting can hold.

    Iterative, not recursive: any document json.loads returned is walked.
    """
    todo: list[tuple[str, Any]] = [("", raw)]
    while todo:
        where, value = todo.pop()
        here = f"{CONFIG_NAME}: {where}" if where else CONFIG_NAME
        if isinstance(value, dict):
            twice = getattr(value, "twice", ())
            if twice:
                raise ConfigError(f"{here}: key {_shown(twice[0])} is given twice; keep one")
            for key, item in value.items():
                shown = _shown(key) if isinstance(key, str) else repr(key)
                if isinstance(key, str) and _bad_text(key):
                    raise ConfigError(f"{here}: the key {shown} {_bad_text(key)}")
                todo.append((f"{where}.{shown}" if where else shown, item))
        elif isinstance(value, list):
            todo.extend((f"{where}[{index}]", item) for index, item in enumerate(value))
        elif isinstance(value, _Unusable):
            raise ConfigError(f"{here}: {value.why}")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{here}: {_constant(str(value)).why}")
        elif isinstance(value, int) and value.bit_length() > MAX_DIGITS * 3:
            raise ConfigError(
                f"{here}: a number of more than {MAX_DIGITS} digits is too long; write a number of "
                "normal size"
            )
        elif isinstance(value, str) and _bad_text(value):
            raise ConfigError(f"{here}: {_bad_text(value)}")


def _bad_text(text: str) -> str | None:
    """What makes a string unusable (as a path, a key, a header), or None."""
    if "\x00" in text:
        return "contains a NUL character (\\u0000), which no path or name can hold"
    for char in text:
        if "\ud800" <= char <= "\udfff":
            return (
                f"contains a lone surrogate ({char.encode('unicode_escape').decode()}), "
                "which is not text: write the character itself, in UTF-8"
            )
    return None


def _shown(key: str) -> str:
    """A key as it may be printed: itself, or quoted and escaped if it is odd."""
    return key if key.isprintable() and key and len(key) <= 100 else repr(key[:100])
