"""config.json as one pydantic model: every key, its type, limits, default and meaning.

A key is declared here once. ``config.py`` validates with ``ConfigFile`` and turns
pydantic's errors into messages that name the key and say what to do
(``errors_to_message``); ``init`` writes ``template()``; ``config-schema`` prints
``json_schema()``; the README's key table is ``readme_table()`` (a test compares).

Loaded only when a config is read or written (``config.py`` imports it inside its
functions): pydantic is not imported for ``--version`` or ``--help``.

Adding a section (``preservation``, say) is a few lines here:

    class Preservation(_Section):
        scrub_days: _whole(1, 3650) = Field(90, description="...")
        scrub_rate: Annotated[str | int | None, WrapValidator(_rate)] = Field(
            "50MB/s", description="..."
        )
        scrub_nightly: _Flag = Field(False, description="...")

    class ConfigFile(_Section):
        ...
        preservation: Annotated[Preservation, _OBJECT] = _section(Preservation, "...")

then carry the values into ``Settings`` in ``config.parse_settings`` and paste
``readme_table()`` into the README (tests/test_config_model.py says so if not).
"""

import difflib
import json
import os.path
import re
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Self, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WrapValidator,
    create_model,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticUndefined

from matricula_backup.config import (
    CONFIG_NAME,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_CHANGE_PERCENT,
    DEFAULT_MAX_DELETE_PERCENT,
    DEFAULT_MULTIPART_THRESHOLD_MB,
    DEFAULT_PART_SIZE_MB,
    DEFAULT_RETRY_MODE,
    DEFAULT_STUCK_AFTER_HOURS,
    DEFAULT_WORKERS,
    MAX_LOCK_DAYS,
    MAX_PRICE,
    redact_url,
)
from matricula_backup.errors import ConfigError
from matricula_backup.escape import http_url
from matricula_backup.pricing import Prices
from matricula_backup.throttle import parse_rate

# --- How a wrong value is worded ---------------------------------------------------------


class Wording:
    """What to tell the administrator when pydantic refuses a value of this field.

    ``text`` is followed by ", not <the value>": its ``repr`` (numbers, where the
    value helps) or its JSON kind (``a string``: strings may be secrets).
    """

    def __init__(self, text: str, show: Literal["repr", "kind"] = "kind") -> None:
        self.text = text
        self.show = show

    def say(self, value: Any) -> str:
        shown = repr(value) if self.show == "repr" else kind(value)
        return f"{self.text}, not {shown}"


class Refusal(ValueError):
    """Raised by our validators: the message as the administrator reads it.

    ``at`` continues the location pydantic knows (an index in a list, a key a
    model validator checks), e.g. ``(1,)`` for ``backup.folders[1]``.
    """

    def __init__(self, message: str, at: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.at = at


def _whole(low: int, high: int) -> Any:
    """A whole number from low to high (not true/false, not 4.5)."""
    return Annotated[
        int,
        Field(ge=low, le=high, strict=True),
        Wording(f"must be a whole number from {low} to {high}", "repr"),
    ]


_Flag = Annotated[bool, Field(strict=True), Wording("must be true or false")]
_Text = Annotated[str | None, Field(strict=True), Wording("must be a string")]


def _or_default(default: str) -> Any:
    """Strip a string; an empty one or null means the default."""

    def choose(value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()
        return default if value is None or value == "" else value

    return choose


def _stripped(value: str | None) -> str | None:
    return value.strip() if value is not None else None


def _paths(value: Any, handler: Any) -> list[str]:
    """backup.folders / backup.roots: absolute paths of directories, each once."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise Refusal(f"must be a list of paths, not {kind(value)}")
    paths: list[Path] = []
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise Refusal(f"must be a path string, not {kind(item)}", (index,))
        if not Path(item).is_absolute():
            raise Refusal(f"must be an absolute path (starting with /): {item}", (index,))
        # Keep symlinks as written (the key is the path the user knows); drop '.', '//'.
        path = Path(os.path.normpath(item))
        if path == Path("/"):
            raise Refusal("the file system root cannot be a backup folder", (index,))
        try:
            not_a_directory = path.exists() and not path.is_dir()
        except OSError as exc:  # a name too long for the file system, ...
            raise Refusal(f"cannot be used: {exc.strerror}: {item}", (index,)) from None
        if not_a_directory:
            raise Refusal(f"not a directory: {item}", (index,))
        if path in paths:
            raise Refusal(f"listed twice: {item}", (index,))
        paths.append(path)
    result: list[str] = handler([str(path) for path in paths])
    return result


def _patterns(value: Any, handler: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise Refusal(f"must be a list of glob patterns, not {kind(value)}")
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item.strip("/"):
            raise Refusal(f'must be a glob pattern such as "*.tmp", not {item!r}', (index,))
    result: list[str] = handler(value)
    return result


def _rate(value: Any, _handler: Any) -> str | int | None:
    if value is None or value == "":
        return None
    try:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValueError(value)
        parse_rate(str(value))
    except (ValueError, OverflowError):  # "999...9" overflows the float it goes through
        raise Refusal(
            f'{value!r} is not a rate; write e.g. "20MB/s", "512KiB/s" or null for no limit'
        ) from None
    return value


def _scrub_rate(value: Any, handler: Any) -> str | int:
    """A read rate is required here: null would mean reading as fast as the disks go."""
    wording = 'must be a read rate like "50MB/s" or "200MiB/s"'
    if value is None or value == "":
        raise Refusal(f"{wording}, not null")
    try:
        rate = _rate(value, handler)
    except Refusal:
        raise Refusal(f"{wording}, not {value!r}") from None
    assert rate is not None
    return rate


_PREFIX_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,29}$")


def _prefix(value: str | None) -> str:
    prefix = (value or "").strip()
    if prefix and (
        not _PREFIX_RE.match(prefix) or prefix.startswith(("xn--", "sthree-", "amzn-s3-demo-"))
    ):
        raise Refusal(
            f"{prefix!r} is not usable in a bucket name: use 1-30 lowercase letters, digits or "
            "'-', starting with a letter or digit (and not with xn--, sthree- or "
            "amzn-s3-demo-, which AWS reserves)"
        )
    return prefix


def _url(secret: bool) -> Any:
    def check(value: str | None) -> str | None:
        value = _stripped(value)
        if value:
            _check_url(value, secret)
        return value

    return AfterValidator(check)


def _check_url(url: str, secret: bool) -> None:
    shown = redact_url(url) if secret else url
    if http_url(url) is None:
        raise Refusal(f"must be an http:// or https:// URL with a host, not {shown}")


def kind(value: Any) -> str:
    """What a JSON value is, in words (the value itself may be a secret)."""
    kinds = ((bool, "true/false"), (dict, "an object"), (list, "a list"), (str, "a string"))
    if value is None:
        return "null"
    for python_type, name in (*kinds, (int, "a number"), (float, "a number")):
        if isinstance(value, python_type):
            return name
    return type(value).__name__


# --- The model ------------------------------------------------------------------------------


class _Section(BaseModel):
    """A JSON object of config.json: unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The README shows the section as one row (key ``section.*``): (default, meaning).
    readme_row: ClassVar[tuple[str, str] | None] = None


def _section(model: type[_Section], description: str) -> Any:
    return Field(default_factory=model, description=description)


_OBJECT = Wording("must be a JSON object")


class ObjectLockConfig(_Section):
    mode: Annotated[
        Literal["GOVERNANCE", "COMPLIANCE"],
        Wording(
            "must be GOVERNANCE (an administrator with s3:BypassGovernanceRetention can still "
            "delete) or COMPLIANCE (nobody can, not even the account's root user, until the "
            "retention ends)",
            "repr",
        ),
    ] = Field(description="GOVERNANCE or COMPLIANCE")
    days: _whole(1, MAX_LOCK_DAYS) = Field(  # type: ignore[valid-type]
        description="how long every version is locked, in days"
    )
    renew_days: _whole(1, MAX_LOCK_DAYS) | None = Field(  # type: ignore[valid-type]
        None,
        description="lock a current version again when fewer days remain; "
        "default the smaller of 30 and days/3",
    )

    @model_validator(mode="after")
    def _renew_within_days(self) -> Self:
        if self.renew_days is not None and self.renew_days > self.days:
            raise Refusal(
                f"must be a whole number from 1 to {self.days}, not {self.renew_days!r}",
                ("renew_days",),
            )
        return self

    def renew(self) -> int:
        days: int = self.days
        return self.renew_days or min(30, max(1, days // 3))


_MISSING_DAYS = "missing; 180 matches Deep Archive's minimum storage"


class Backup(_Section):
    folders: Annotated[list[str], WrapValidator(_paths)] = Field(
        default_factory=list,
        description="absolute paths; each one is a backup folder with its own bucket",
        json_schema_extra={"examples": [["/path/to/an/image/folder"]]},
    )
    roots: Annotated[list[str], WrapValidator(_paths)] = Field(
        default_factory=list,
        description="absolute paths; each direct subfolder of a root is a backup folder with its "
        "own bucket. Subfolders that appear later are picked up by the next run. Anything else "
        "in a root (a file, a symlinked subfolder) is reported as an error of every run until "
        "`backup.exclude` names it; a root without subfolders is reported as an error (see "
        "[Roots](#roots))",
    )
    bucket_prefix: Annotated[_Text, AfterValidator(_prefix)] = Field(
        "",
        description="put before every bucket name: 1-30 lowercase letters, digits or `-`, "
        "starting with a letter or digit, not `xn--`, `sthree-` or `amzn-s3-demo-`. Bucket "
        "names are global across all AWS accounts, so use a prefix of your own, ending in `-`",
    )
    workers: _whole(1, 64) = Field(  # type: ignore[valid-type]
        DEFAULT_WORKERS,
        description="parallel uploads, 1-64. Many small files over a link with high latency go "
        "faster with more (16-32: in `benchmarks/RESULTS.md`, 4,000 small files at 20 ms per "
        "request took 8.6-9.3 s with 16 and 7.0-7.3 s with 32, at the same CPU and memory); "
        "each worker may hold one file below `multipart_threshold_mb` in memory",
    )
    part_size_mb: _whole(5, 5 * 1024) = Field(  # type: ignore[valid-type]
        DEFAULT_PART_SIZE_MB,
        description="size of a multipart upload part in MiB, 5-5120 (larger for files that "
        "would need more than 10,000 parts)",
    )
    multipart_threshold_mb: _whole(5, 5 * 1024) = Field(  # type: ignore[valid-type]
        DEFAULT_MULTIPART_THRESHOLD_MB,
        description="files of at least this many MiB are sent as multipart uploads, 5-5120",
    )
    max_delete_percent: _whole(0, 100) = Field(  # type: ignore[valid-type]
        DEFAULT_MAX_DELETE_PERCENT,
        description="0-100: when more than this share of a folder's files in the bucket (and "
        "more than 10 files) are gone from disk in one run, nothing of that folder is deleted "
        "from the bucket and the run reports it; `--allow-mass-delete` overrides it for one run",
    )
    exclude: Annotated[list[str], WrapValidator(_patterns)] = Field(
        default_factory=list,
        description="glob patterns of files and folders not to back up, e.g. "
        '`["*.tmp", "Thumbs.db", ".DS_Store"]`. A pattern without `/` matches the name of a '
        "file or folder at any depth, also of an entry lying directly in a root; a pattern "
        "with `/` matches the path relative to the backup folder (`scans/tmp/*`), and for the "
        "entries lying directly in a root their absolute path (`/images/archive/liesmich.txt`, "
        "`/images/archive/*.pdf`); `*` and `?` match any characters, `/` included; case "
        "matters; an excluded folder is not entered. Files backed up before and excluded now "
        "are deleted from the bucket like removed files. The dry run and the summary count the "
        "excluded entries",
    )
    max_bandwidth: Annotated[str | int | None, WrapValidator(_rate)] = Field(
        None,
        description='upload limit for all threads together, e.g. `"20MB/s"`, `"512KiB/s"` '
        "(MB = 10^6 bytes, MiB = 2^20), or `null` for none: keeps the nightly run from "
        "saturating the image server's uplink",
    )
    object_lock: Annotated[
        ObjectLockConfig | None,
        Wording('must be an object such as {"mode": "GOVERNANCE", "days": 180} or null'),
    ] = Field(
        None,
        description='`{"mode": "GOVERNANCE" or "COMPLIANCE", "days": N}` (1-36500; optional '
        '`"renew_days"`, default the smaller of 30 and days/3): new buckets are created with S3 '
        "Object Lock and that default retention, every upload is locked for `days` days, and a "
        "version that stays current is locked again for `days` when fewer than `renew_days` "
        "remain (so runs must come more often than that). GOVERNANCE 180 is recommended; see "
        "[Object Lock](#object-lock). `null`: off",
    )
    max_change_percent: _whole(0, 100) = Field(  # type: ignore[valid-type]
        DEFAULT_MAX_CHANGE_PERCENT,
        description="0-100: when more than this share of a folder's backed-up files (and more "
        "than 10 files) changed size or mtime since the last run, none of that folder's changed "
        "files is uploaded (new files are), the run exits 1 and Teams is told: it may be "
        "ransomware. `--allow-mass-change` overrides it for one run. The same share of files "
        "changed over 7 days is told once (see [Mass change guard](#mass-change-guard))",
    )
    follow_root_symlinks: _Flag = Field(
        False,
        description="`true`: a symlinked subfolder of a root is a backup folder too: its target "
        "is backed up under the link's own path (keys, bucket name and `folders.path` come from "
        "the link). See [Roots](#roots)",
    )


class Notification(_Section):
    webhook: Annotated[_Text, _url(secret=True)] = Field(
        None,
        repr=False,
        description="Microsoft Teams webhook URL (an Incoming Webhook connector or a Workflows "
        "webhook), `http://` or `https://`. Without it, errors are only logged",
    )
    on_success: _Flag = Field(
        False, description="also post a short notice after a run without errors"
    )
    stuck_after_hours: _whole(1, 24 * 365) = Field(  # type: ignore[valid-type]
        DEFAULT_STUCK_AFTER_HOURS,
        description="a run that cannot start because another run has held the lock for longer "
        "than this posts a notice (a run may be stuck); shorter holds just exit 2 quietly",
    )


class Aws(_Section):
    access_key: Annotated[_Text, AfterValidator(_stripped)] = Field(
        None, repr=False, description="AWS access key id"
    )
    secret_access_key: Annotated[_Text, AfterValidator(_stripped)] = Field(
        None, repr=False, description="AWS secret access key"
    )
    region: Annotated[_Text, AfterValidator(_stripped)] = Field(
        None, description="region where new buckets are created"
    )
    endpoint_url: Annotated[_Text, _url(secret=False)] = Field(
        None,
        description="an S3-compatible server instead of AWS, `http://` or `https://`; "
        "path-style addressing is used when an endpoint is set",
    )
    retry_mode: Annotated[
        Literal["standard", "adaptive", "legacy"],
        BeforeValidator(_or_default(DEFAULT_RETRY_MODE)),
        Wording("must be standard, adaptive or legacy", "repr"),
    ] = Field(
        DEFAULT_RETRY_MODE,  # type: ignore[arg-type]
        description="botocore's retry mode: `standard` (retries throttling 503 SlowDown, "
        "500/502/503/504, timeouts and dropped connections with backoff), `adaptive` (standard "
        "plus client-side rate limiting) or `legacy`",
    )
    max_attempts: _whole(1, 20) = Field(  # type: ignore[valid-type]
        DEFAULT_MAX_ATTEMPTS,
        description="attempts per S3 request, 1-20; what still fails is recorded and retried "
        "on the next run",
    )
    crt: _Flag = Field(
        True,
        description="send the uploads of files up to 8 MiB through the AWS Common Runtime S3 "
        "client (`awscrt`, C) instead of botocore: about a third of the CPU per file, so a "
        "first backup of many small scans is not held back by Python (see "
        "`benchmarks/RESULTS.md`). Buckets, multipart uploads, listings, deletes and restores "
        "always use botocore. Not used with `backup.max_bandwidth` or `aws.max_attempts` 1. "
        "`false`: botocore for everything",
    )

    @model_validator(mode="after")
    def _both_keys_or_neither(self) -> Self:
        if bool(self.access_key) != bool(self.secret_access_key):
            given, missing = (
                ("access_key", "secret_access_key")
                if self.access_key
                else ("secret_access_key", "access_key")
            )
            raise Refusal(
                f"missing while aws.{given} is set; give both, or neither to use the AWS "
                "credential chain (environment, ~/.aws, instance role)",
                (missing,),
            )
        return self


_Price = Annotated[
    float,
    Field(ge=0, le=MAX_PRICE, strict=True),
    Wording(f"must be a price in USD (a number from 0 to {MAX_PRICE:,})", "repr"),
]


class _PricingBase(_Section):
    readme_row = (
        "us-east-1 list prices",
        "the prices used for the cost lines of runs, dry runs and restores: {keys} (USD, 0 to "
        "1,000,000; `init` writes them all)",
    )


# One field per price of pricing.Prices, with its default: the prices are declared there.
_PRICE_FIELDS: dict[str, Any] = {
    item.name: (_Price, Field(item.default, description=f"USD, default {item.default}"))
    for item in fields(Prices)
}
if TYPE_CHECKING:
    Pricing = _PricingBase
else:
    Pricing = create_model("Pricing", __base__=_PricingBase, __module__=__name__, **_PRICE_FIELDS)


class Preservation(_Section):
    scrub_days: _whole(1, 3650) = Field(  # type: ignore[valid-type]
        90,
        description="1-3650: `scrub` reads every backed-up file at least once in this many "
        "days (see [Proving the archive](#proving-the-archive))",
    )
    scrub_rate: Annotated[str | int, WrapValidator(_scrub_rate)] = Field(
        "50MB/s",
        description='how fast `scrub` reads from the image server, e.g. `"50MB/s"`, `"200MiB/s"`',
    )
    scrub_nightly: _Flag = Field(
        False, description="`true`: the nightly run ends with a scrub of the due share"
    )
    scrub_nightly_minutes: _whole(1, 1440) = Field(  # type: ignore[valid-type]
        120,
        description="1-1440: the time budget of that nightly scrub; the rest is due at the "
        "next one",
    )


class ConfigFile(_Section):
    """config.json."""

    model_config = ConfigDict(title="matricula-backup config.json")

    schema_: str | None = Field(
        None,
        alias="$schema",
        description="the JSON Schema editors check this file against (`matricula-backup "
        "config-schema`); ignored by the tool",
    )
    backup: Annotated[Backup, _OBJECT] = _section(Backup, "what to back up, and how")
    notification: Annotated[Notification, _OBJECT] = _section(Notification, "the Teams webhook")
    aws: Annotated[Aws, _OBJECT] = _section(Aws, "how to reach S3")
    pricing: Annotated[Pricing, _OBJECT] = _section(Pricing, "prices for the cost lines")
    preservation: Annotated[Preservation, _OBJECT] = _section(
        Preservation, "how often and how fast scrub re-reads the image server"
    )

    @model_validator(mode="after")
    def _something_to_back_up(self) -> Self:
        if not self.backup.folders and not self.backup.roots:
            raise Refusal("give at least one folder in backup.folders or backup.roots", ("backup",))
        return self


# --- Errors in our words ------------------------------------------------------------------


def validate(raw: Any) -> ConfigFile:
    """The checked document, or a ``ConfigError`` with ``errors_to_message``'s text."""
    try:
        return ConfigFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(errors_to_message(exc.errors(include_url=False))) from None


MAX_LINES = 10  # of one message: the administrator fixes these, check-config shows the rest


def errors_to_message(errors: list[ErrorDetails]) -> str:
    """One line per problem, each ``config.json: <dotted key>: <what to do>``.

    Unknown keys of one object are one line, with the keys that object knows.
    Pydantic's own wording never reaches the administrator: it names Python
    types and may quote a secret.
    """
    lines: list[str] = []
    unknown: dict[tuple[str | int, ...], list[str]] = {}
    for error in errors:
        loc = tuple(error["loc"])
        if error["type"] == "extra_forbidden":
            unknown.setdefault(loc[:-1], []).append(str(loc[-1]))
    for where, keys in unknown.items():  # first: a typo often explains the rest
        model = _model_at(where)
        known = ", ".join(sorted(_keys(model))) if model else ""
        dotted = ", ".join(sorted(_dotted((*where, key)) for key in keys))
        if where and where[-1] == "object_lock":  # its own wording since it was added
            dotted = ", ".join(sorted(keys))
            lines.append(f"{_prefix_of(where)}: unknown key {dotted} (known keys: {known})")
        else:
            guess = _did_you_mean(keys, _keys(model) if model else [])
            lines.append(
                f"{_prefix_of(where)}: unknown key {dotted} (a typo?{guess} known keys: {known})"
            )
    for error in errors:
        if error["type"] != "extra_forbidden":
            lines.append(_line(error, tuple(error["loc"])))
    lines = list(dict.fromkeys(lines))
    if len(lines) > MAX_LINES:
        lines[MAX_LINES:] = [f"{CONFIG_NAME}: ... and {len(lines) - MAX_LINES} more problems"]
    return "\n".join(lines)


def _did_you_mean(keys: list[str], known: list[str]) -> str:
    guesses = [
        f"{key} -> {close[0]}"
        for key in sorted(keys)
        if (close := difflib.get_close_matches(key, known, n=1, cutoff=0.75))
    ]
    return f" did you mean: {', '.join(guesses)}?" if guesses else ""


def _line(error: ErrorDetails, loc: tuple[str | int, ...]) -> str:
    context = error.get("ctx") or {}
    cause = context.get("error")
    if isinstance(cause, Refusal):
        return f"{_prefix_of((*loc, *cause.at))}: {cause.message}"
    field = _field_at(loc)
    value = error.get("input")
    if error["type"] == "missing":
        if loc[-1:] == ("days",):
            return f"{_prefix_of(loc)}: {_MISSING_DAYS}"
        value = None
    wording = _wording(field) if field else None
    if wording is None and loc == ():
        wording = _OBJECT
    if wording is None:  # a field without wording: say what is wrong in our terms
        wording = Wording("is not a value this key takes")
    return f"{_prefix_of(loc)}: {wording.say(value)}"


def _prefix_of(loc: tuple[str | int, ...]) -> str:
    return f"{CONFIG_NAME}: {_dotted(loc)}" if loc else CONFIG_NAME


def _dotted(loc: tuple[str | int, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


def _keys(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items() if name != "schema_"]


def _model_of(info: FieldInfo) -> type[BaseModel] | None:
    annotation = info.annotation
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _model_at(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = ConfigFile
    for part in loc:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return None
        model = _model_of(model.model_fields[part])
    return model


def _field_at(loc: tuple[str | int, ...]) -> FieldInfo | None:
    if not loc or not isinstance(loc[-1], str):
        return None
    model = _model_at(loc[:-1])
    if model is None:
        return None
    return model.model_fields.get(loc[-1])


def _wording(info: FieldInfo) -> Wording | None:
    found = [item for item in info.metadata if isinstance(item, Wording)]
    if found:
        return found[0]
    for argument in get_args(info.annotation):  # _Text | None keeps its wording inside
        if get_origin(argument) is Annotated:
            inner = [item for item in argument.__metadata__ if isinstance(item, Wording)]
            if inner:
                return inner[0]
    return None


# --- What comes out of the model: template, JSON Schema, README table ---------------------


def _default(info: FieldInfo) -> Any:
    if info.default_factory is not None:
        made = info.default_factory()  # type: ignore[call-arg]
        return made if not isinstance(made, BaseModel) else None
    return None if info.default is PydanticUndefined else info.default


def template() -> dict[str, Any]:
    """config.json as ``init`` writes it: every key, optional ones at their default."""
    result: dict[str, Any] = {}
    for name, info in ConfigFile.model_fields.items():
        section = _model_of(info)
        if section is None:
            continue  # "$schema": the administrator adds it if an editor wants it
        values: dict[str, Any] = {}
        for key, field_info in section.model_fields.items():
            extra = field_info.json_schema_extra
            examples = extra.get("examples") if isinstance(extra, dict) else None
            values[key] = examples[0] if isinstance(examples, list) else _default(field_info)
        result[name] = values
    return result


def json_schema() -> dict[str, Any]:
    """The JSON Schema of config.json (``matricula-backup config-schema``)."""
    schema = ConfigFile.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def _shown_default(info: FieldInfo) -> str:
    value = _default(info)
    if value is None:
        return "none"
    if isinstance(value, str) and value:
        return f"`{value}`"
    return f"`{json.dumps(value)}`"


def readme_table() -> str:
    """The README's table of config.json keys, as Markdown."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for name, info in ConfigFile.model_fields.items():
        section = _model_of(info)
        if section is None:
            continue
        row = getattr(section, "readme_row", None)
        if row:
            keys = ", ".join(f"`{key}`" for key in section.model_fields)
            rows.append(f"| `{name}.*` | {row[0]} | {row[1].format(keys=keys)} |")
            continue
        for key, field_info in section.model_fields.items():
            rows.append(
                f"| `{name}.{key}` | {_shown_default(field_info)} | {field_info.description} |"
            )
    return "\n".join(rows)


def allowed_keys() -> dict[str, set[str]]:
    """The keys of config.json and of each section ("" for the top level)."""
    allowed = {"": set(_keys(ConfigFile))}
    for name, info in ConfigFile.model_fields.items():
        section = _model_of(info)
        if section is not None:
            allowed[name] = set(_keys(section))
    return allowed
