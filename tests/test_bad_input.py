"""Bad input gives one clear message naming the field or file, exit code 2, no traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from matricula_backup.config import _ALLOWED, Settings, load_settings, parse_settings
from matricula_backup.errors import ConfigError
from tests.conftest import CLI, Setup, skip_unless_other_users_can_run_the_command

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and infinities too: json.loads makes them from NaN, 1e999
    | st.text()
    # What no JSON text gives json.loads here, but parse_settings must not choke on.
    | st.sampled_from([10**400, -(10**4200), "/a\ud800", "/a\x00b", "\udcff"]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
# Every key config.json knows, in any section, so the fuzzer also puts keys where
# they do not belong.
known_keys = st.sampled_from(sorted(set().union(*_ALLOWED.values())))
config_like = st.fixed_dictionaries(
    {},
    optional={
        "backup": st.dictionaries(known_keys, json_values, max_size=5) | json_values,
        "notification": st.dictionaries(known_keys, json_values, max_size=2) | json_values,
        "aws": st.dictionaries(known_keys, json_values, max_size=5) | json_values,
        "pricing": st.dictionaries(known_keys, json_values, max_size=3) | json_values,
    },
)


# Valid but for one section, whose own keys get odd values: every validator behind
# the unknown-key and folder checks is reached.
odd_values = (
    json_values
    | st.integers(310, 400).map(lambda n: "9" * n)  # overflows a float
    | st.text(alphabet="0123456789e.-+ KMGiB/s", max_size=30)
)
nearly_valid = st.sampled_from(sorted(set(_ALLOWED) - {""})).flatmap(
    lambda name: st.dictionaries(
        st.sampled_from(sorted(_ALLOWED[name] - {"folders", "roots"})), odd_values, max_size=2
    ).map(
        lambda section: {
            "backup": {"folders": ["/nonexistent-images"]},
            name: {**section, **({"folders": ["/nonexistent-images"]} if name == "backup" else {})},
        }
    )
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=json_values | config_like | nearly_valid)
def test_no_json_document_crashes_the_loader(raw: Any) -> None:
    try:
        result = parse_settings(raw, Path("/nonexistent-cache"))
    except ConfigError as exc:
        assert str(exc).startswith("config.json")
        str(exc).encode("utf-8")  # printable and loggable: no lone surrogate in it
    else:
        assert isinstance(result, Settings)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(content=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_no_file_content_crashes_the_loader(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "config.json").write_bytes(content)
    try:
        load_settings(tmp_path)
    except ConfigError as exc:
        assert "config.json" in str(exc)


# Raw JSON text, not only parsed values: the oddities json.loads lets through (NaN,
# Infinity, numbers past Python's 4,300-digit conversion limit, overflowing floats,
# escaped lone surrogates and NULs), keys given twice, a byte-order mark.
json_atoms = (
    st.sampled_from(
        ["NaN", "Infinity", "-Infinity", "1e999", "-1e400", "true", "null", "4.0", "-0", "1e-999"]
    )
    | st.integers(min_value=4000, max_value=6000).map(lambda n: "9" * n)
    | (st.integers().map(str))
    | st.floats(allow_nan=False, allow_infinity=False).map(json.dumps)
    | st.sampled_from(
        ['"/a\\ud800"', '"/a\\u0000b"', '"\\udc80"', '"x\\ud83d\\ude00"', '"/images"']
    )
    | st.text(max_size=20).map(lambda text: json.dumps(text, ensure_ascii=False))
)
json_keys = (
    known_keys
    | st.sampled_from(
        ["backup", "notification", "aws", "pricing", "put_per_1000", "\\ud800", "\\u0000", ""]
    )
    | st.text(max_size=8)
)


def _key_text(key: str) -> str:
    """A key as JSON text; the escaped ones (a lone surrogate, a NUL) as they are."""
    return f'"{key}"' if key.startswith("\\u") else json.dumps(key)


json_text = st.recursive(
    json_atoms,
    lambda children: (
        st.lists(children, max_size=4).map(lambda items: "[" + ", ".join(items) + "]")
        | st.lists(st.tuples(json_keys, children), max_size=4).map(
            lambda pairs: "{" + ", ".join(f"{_key_text(k)}: {v}" for k, v in pairs) + "}"
        )
    ),
    max_leaves=12,
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=json_text, bom=st.booleans())
def test_no_raw_json_text_crashes_the_loader(tmp_path: Path, text: str, bom: bool) -> None:
    (tmp_path / "config.json").write_text(("\ufeff" if bom else "") + text, encoding="utf-8")
    try:
        result = load_settings(tmp_path)
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith("config.json")
        message.encode("utf-8")  # printable and loggable: no lone surrogate in it
        assert len(message) < 20_000
    else:
        assert isinstance(result, Settings)
        assert all(0 <= price < float("inf") for price in vars(result.prices).values())
        for path in result.folders + result.roots:  # usable as a path and as a bucket key
            assert "\x00" not in str(path)
            str(path).encode("utf-8")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '{"backup": {"folders": ["/a"], "workers": ' + "9" * 5000 + "}}",
            "config.json: backup.workers: a number of 5000 digits is too long",
        ),
        (
            '{"backup": {"folders": ["/a"]}, "pricing": {"put_per_1000": NaN}}',
            "config.json: pricing.put_per_1000: NaN is not a number JSON allows",
        ),
        (
            '{"backup": {"folders": ["/a"]}, "pricing": {"get_per_1000": -Infinity}}',
            "config.json: pricing.get_per_1000: -Infinity is not a number JSON allows",
        ),
        (
            '{"backup": {"folders": ["/a"], "max_delete_percent": 1e999}}',
            "config.json: backup.max_delete_percent: 1e999 is too large",
        ),
        (
            '{"backup": {"folders": ["/images/\\ud800"]}}',
            "config.json: backup.folders[0]: contains a lone surrogate (\\ud800)",
        ),
        (
            '{"backup": {"roots": ["/images/a\\u0000b"]}}',
            "config.json: backup.roots[0]: contains a NUL character",
        ),
        (
            '{"backup": {"folders": ["/a"], "workers": 4.5}}',
            "config.json: backup.workers: must be a whole number from 1 to 64, not 4.5",
        ),
        (
            '{"backup": {"folders": ["/a"]}, "backup": {"folders": ["/b"]}}',
            "config.json: key backup is given twice",
        ),
        (
            '{"backup": {"folders": ["/' + "a" * 5000 + '"]}}',
            "config.json: backup.folders[0]: cannot be used: File name too long",
        ),
    ],
    ids=["5000 digits", "NaN", "-Infinity", "1e999", "surrogate", "NUL", "float", "twice", "long"],
)
def test_json_oddities_are_named_at_their_key_by_the_command(
    setup: Setup, text: str, expected: str
) -> None:
    (setup.cache / "config.json").write_text(text, encoding="utf-8")

    result = setup.run("check-config")

    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "Logging error" not in result.stderr


def test_a_config_saved_with_a_byte_order_mark_is_accepted(setup: Setup) -> None:
    setup.file("Band/a.tif")
    setup.write_config(backup__folders=[str(setup.images / "Band")])
    config = setup.cache / "config.json"
    config.write_bytes(b"\xef\xbb\xbf" + config.read_bytes())  # as Windows Notepad saves it

    result = setup.run()

    assert result.returncode == 0, result.stderr
    assert "uploaded 1/1 files" in result.stdout


def test_deeply_nested_json_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match="config.json"):
        load_settings(tmp_path)


def test_a_missing_cache_directory(tmp_path: Path) -> None:
    result = subprocess.run(
        [CLI, "--cache", str(tmp_path / "nope")], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert f"{tmp_path / 'nope'}: no such directory. Create it" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_cache_directory_this_user_cannot_write(tmp_path: Path) -> None:
    if not shutil.which("setpriv") or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to run the command as another user")
    skip_unless_other_users_can_run_the_command()
    cache = tmp_path / "cache"
    images = tmp_path / "images"
    images.mkdir()
    cache.mkdir()
    (cache / "config.json").write_text(json.dumps({"backup": {"folders": [str(images)]}}))
    for path in (tmp_path, cache, images):
        path.chmod(0o755)
    for parent in tmp_path.parents:  # pytest's temp root is 0700: let "nobody" through
        if parent == Path("/tmp"):
            break
        parent.chmod(parent.stat().st_mode | 0o001)
    (cache / "config.json").chmod(0o644)
    result = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", CLI, "--cache", str(cache)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "cannot create the lock file: Permission denied" in result.stderr
    assert "must be writable by the user who runs the backup" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_readable_by_others_gives_a_warning(setup: Setup) -> None:
    setup.file("a/x.tif")
    setup.write_config(backup__folders=[str(setup.images / "a")])
    (setup.cache / "config.json").chmod(0o644)

    result = setup.run()

    assert result.returncode == 0
    assert "can be read by other users (mode 644) and holds secrets" in result.stderr
    (setup.cache / "config.json").chmod(0o600)
    assert "warning" not in setup.run().stderr


def test_a_damaged_state_db_stops_the_run_and_tells_teams(setup: Setup, httpserver: Any) -> None:
    setup.file("a/x.tif")
    httpserver.expect_request("/hook").respond_with_data("", status=202)
    setup.write_config(
        backup__folders=[str(setup.images / "a")], notification__webhook=httpserver.url_for("/hook")
    )
    (setup.cache / "state.db").write_bytes(b"garbage" * 1000)

    result = setup.run()

    assert result.returncode == 2
    assert "state.db: cannot open the state database: file is not a database" in result.stderr
    assert "Move it aside and run with --reset" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(httpserver.log) == 1
    assert "could not run" in json.dumps(httpserver.log[0][0].get_json())
