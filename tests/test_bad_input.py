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
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
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
    },
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=json_values | config_like)
def test_no_json_document_crashes_the_loader(raw: Any) -> None:
    try:
        result = parse_settings(raw, Path("/nonexistent-cache"))
    except ConfigError as exc:
        assert str(exc).startswith("config.json")
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
