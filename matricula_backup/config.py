"""Load and validate ``config.json`` from the cache directory.

The file is read once per run into a frozen ``Settings``. Every problem is a
``ConfigError`` whose message names the file, the field and what is wrong, e.g.
``config.json: backup.roots[0]: not a directory: /images/archives``.

The keys, their types, limits, defaults and meanings are declared once, in
``config_model.py`` (pydantic, loaded only here when a config is read): the
JSON oddities pydantic would not name are refused first (``_check_values``).

Missing folders are not a config error: an unmounted share must not stop the
other folders, so ``folders.py`` reports them per folder at run time.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from matricula_backup.access import owner_hint
from matricula_backup.errors import ConfigError
from matricula_backup.escape import redact_url as redact_url
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

MAX_LOCK_DAYS = 36500  # S3's limit on a default retention: 100 years


@dataclass(frozen=True)
class ObjectLock:
    """backup.object_lock: every version is protected for ``days`` days (s3/upload.py).

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
    # Single PUTs of files up to 8 MiB through the AWS Common Runtime (s3/crt.py);
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
    """Validate the parsed JSON document; raise ConfigError naming the bad field.

    The keys, their limits and defaults are the model's (``config_model.py``);
    here they become the ``Settings`` a run uses (sizes in bytes, paths as Paths).
    """
    from matricula_backup import config_model  # pydantic: not for --version

    _check_values(raw)
    document = config_model.validate(raw)
    backup, notification, aws = document.backup, document.notification, document.aws
    lock = backup.object_lock
    scrub = document.preservation
    return Settings(
        cache_dir=cache_dir,
        folders=tuple(Path(path) for path in backup.folders),
        roots=tuple(Path(path) for path in backup.roots),
        bucket_prefix=backup.bucket_prefix or "",
        workers=backup.workers,
        exclude=tuple(backup.exclude),
        max_bandwidth=(
            parse_rate(str(backup.max_bandwidth)) if backup.max_bandwidth is not None else None
        ),
        max_change_percent=backup.max_change_percent,
        follow_root_symlinks=backup.follow_root_symlinks,
        max_delete_percent=backup.max_delete_percent,
        part_size=backup.part_size_mb * MIB,
        multipart_threshold=backup.multipart_threshold_mb * MIB,
        webhook=notification.webhook or None,
        notify_on_success=notification.on_success,
        stuck_after_hours=notification.stuck_after_hours,
        prices=Prices(**document.pricing.model_dump()),
        aws=AwsSettings(
            access_key=aws.access_key or None,
            secret_access_key=aws.secret_access_key or None,
            region=aws.region,
            endpoint_url=aws.endpoint_url or None,
            retry_mode=aws.retry_mode,
            max_attempts=aws.max_attempts,
            crt=aws.crt,
        ),
        object_lock=ObjectLock(lock.mode, lock.days, lock.renew()) if lock else None,
        preservation=Preservation(
            scrub_days=scrub.scrub_days,
            scrub_rate=parse_rate(str(scrub.scrub_rate)),
            scrub_nightly=scrub.scrub_nightly,
            scrub_nightly_minutes=scrub.scrub_nightly_minutes,
        ),
    )


def template() -> dict[str, Any]:
    """config.json as ``init`` writes it: every key, optional ones at their default."""
    from matricula_backup import config_model

    return config_model.template()


def __getattr__(name: str) -> Any:
    """``_ALLOWED``: the keys of each section, read from the model when first asked for."""
    if name == "_ALLOWED":
        from matricula_backup import config_model

        return config_model.allowed_keys()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
