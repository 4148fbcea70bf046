"""config.json validation: each mistake names the field, exit code 2, no traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from matricula_backup.config import load_settings, parse_settings, redact_url
from matricula_backup.errors import ConfigError
from tests.conftest import Setup


def _error(raw: Any, tmp_path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_settings(raw, tmp_path)
    return str(caught.value)


def test_a_full_config_is_read(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    settings = parse_settings(
        {
            "backup": {
                "folders": [str(tmp_path / "img") + "/"],
                "roots": [],
                "bucket_prefix": "matricula-",
                "workers": 4,
                "part_size_mb": 256,
            },
            "notification": {"webhook": "https://x.webhook.office.com/webhookb2/a?sig=SECRET"},
            "aws": {
                "access_key": "AKIA",
                "secret_access_key": "SECRET",
                "region": "eu-central-1",
                "endpoint_url": "http://127.0.0.1:9000",
            },
        },
        tmp_path,
    )
    assert settings.folders == (tmp_path / "img",)
    assert settings.bucket_prefix == "matricula-"
    assert settings.workers == 4
    assert settings.part_size == 256 * 1024 * 1024
    assert settings.aws.region == "eu-central-1"
    assert "SECRET" not in repr(settings)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ([], "config.json: must be a JSON object, not a list"),
        ({}, "give at least one folder in backup.folders or backup.roots"),
        ({"backup": {"folders": "/images"}}, "backup.folders: must be a list of paths"),
        ({"backup": {"folders": [3]}}, "backup.folders[0]: must be a path string, not a number"),
        ({"backup": {"roots": ["images"]}}, "backup.roots[0]: must be an absolute path"),
        ({"backup": {"folders": ["/"]}}, "backup.folders[0]: the file system root cannot"),
        ({"backup": {"folders": ["/a", "/a/"]}}, "backup.folders[1]: listed twice"),
        ({"backup": {"folder": ["/a"]}}, "unknown key backup.folder (a typo?"),
        ({"backup": {"folders": ["/a"]}, "awss": {}}, "unknown key awss"),
        ({"backup": {"folders": ["/a"], "workers": 0}}, "backup.workers: must be a whole number"),
        ({"backup": {"folders": ["/a"], "workers": True}}, "backup.workers: must be a whole"),
        ({"backup": {"folders": ["/a"], "bucket_prefix": "Big_"}}, "backup.bucket_prefix:"),
        ({"backup": {"folders": ["/a"], "bucket_prefix": "sthree-x"}}, "which AWS reserves"),
        ({"backup": {"folders": ["/a"]}, "aws": {"region": 5}}, "aws.region: must be a string"),
        (
            {"backup": {"folders": ["/a"]}, "aws": {"access_key": "AKIA"}},
            "aws.secret_access_key: missing while aws.access_key is set",
        ),
        (
            {"backup": {"folders": ["/a"]}, "aws": {"endpoint_url": "localhost:9000"}},
            "aws.endpoint_url: must be an http:// or https:// URL",
        ),
        (
            {"backup": {"folders": ["/a"]}, "notification": {"webhook": "ftp://h/x?sig=S"}},
            "notification.webhook: must be an http:// or https:// URL",
        ),
        (
            {"backup": {"folders": ["/a"]}, "pricing": {"put_per_1000": 10**400}},
            "pricing.put_per_1000: must be a price in USD (a number from 0 to 1,000,000)",
        ),
        (
            {"backup": {"folders": ["/a"]}, "pricing": {"get_per_1000": float("nan")}},
            "config.json: pricing.get_per_1000: nan is not a number JSON allows",
        ),
        ({"backup": {"folders": ["/a\udcff"]}}, "backup.folders[0]: contains a lone surrogate"),
        (
            {"backup": {"folders": ["/a"], "max_bandwidth": "9" * 400 + "MB/s"}},
            "backup.max_bandwidth: '999",  # a float overflow inside, not a traceback
        ),
        (
            {"backup": {"folders": ["/a"], "exclude": ["a\x00"]}},
            "backup.exclude[0]: contains a NUL",
        ),
    ],
)
def test_mistakes_name_the_field(raw: Any, expected: str, tmp_path: Path) -> None:
    assert expected in _error(raw, tmp_path)


def test_a_file_given_as_folder_is_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "archives").write_text("")
    message = _error({"backup": {"roots": [str(tmp_path / "archives")]}}, tmp_path)
    assert message == f"config.json: backup.roots[0]: not a directory: {tmp_path / 'archives'}"


def test_the_webhook_secret_never_appears_in_messages(tmp_path: Path) -> None:
    raw = {"backup": {"folders": ["/a"]}, "notification": {"webhook": "mailto:x?sig=SECRET"}}
    assert "SECRET" not in _error(raw, tmp_path)
    assert redact_url("https://h.example/workflows/abc?sig=SECRET") == "https://h.example/…"


def test_invalid_json_gives_line_and_column(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"backup": {"folders": ["/a",]}}')
    with pytest.raises(ConfigError, match=r"config.json: not valid JSON: .* line 1, column"):
        load_settings(tmp_path)


def test_missing_config_says_what_to_create(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(tmp_path)


def test_the_command_exits_2_without_traceback(setup: Setup) -> None:
    (setup.cache / "config.json").write_text(json.dumps({"backup": {"roots": ["relative"]}}))

    result = setup.run()

    assert result.returncode == 2
    assert "config.json: backup.roots[0]: must be an absolute path" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_overlapping_folders_are_refused(setup: Setup) -> None:
    setup.file("outer/inner/a.tif")
    setup.write_config(
        backup__folders=[str(setup.images / "outer"), str(setup.images / "outer/inner")]
    )

    result = setup.run()

    assert result.returncode == 2
    assert "backup.folders[1]" in result.stderr and "lies inside backup folder" in result.stderr
