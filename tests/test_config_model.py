"""config.json's one model (config_model.py): the README table, the template, the
JSON Schema and the messages all come from it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from matricula_backup.config import _ALLOWED, parse_settings, template
from matricula_backup.config_model import ConfigFile, allowed_keys, json_schema, readme_table
from matricula_backup.errors import ConfigError
from tests.conftest import CLI

REPO = Path(__file__).resolve().parent.parent


def _readme_table() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("| key | default | meaning |")
    return text[start : text.index("\n\n", start)]


def test_the_readme_key_table_is_the_models() -> None:
    """Edit the model's descriptions, not the README: paste readme_table() into it."""
    assert _readme_table() == readme_table(), (
        "README.md's config key table differs from the model: replace it with the output of "
        "python -c 'from matricula_backup.config_model import readme_table; print(readme_table())'"
    )


def test_every_key_of_the_model_has_a_readme_row_with_its_default() -> None:
    rows = {line.split(" | ")[0].strip("| `"): line for line in _readme_table().splitlines()[2:]}
    for section, keys in allowed_keys().items():
        if section == "":
            continue
        if f"{section}.*" in rows:  # one row for the section: every key named in it
            assert all(f"`{key}`" in rows[f"{section}.*"] for key in keys)
            continue
        assert {f"{section}.{key}" for key in keys} == {
            key for key in rows if key.startswith(f"{section}.")
        }
    assert rows["backup.workers"].split(" | ")[1] == "`8`"
    assert rows["aws.retry_mode"].split(" | ")[1] == "`standard`"
    assert rows["notification.webhook"].split(" | ")[1] == "none"


def test_the_template_has_every_key_of_the_model_at_its_default() -> None:
    written = template()
    assert set(written) == _ALLOWED[""]
    for section, values in written.items():
        assert set(values) == _ALLOWED[section]
    assert written["backup"]["folders"] == ["/path/to/an/image/folder"]  # the model's example
    assert (
        written["backup"]["workers"] == ConfigFile.model_fields["backup"].default_factory().workers
    )  # type: ignore[call-arg,misc]


def _schema_from_the_command() -> dict[str, Any]:
    result = subprocess.run([CLI, "config-schema"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    schema: dict[str, Any] = json.loads(result.stdout)
    assert schema == json.loads(json.dumps(json_schema()))
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def test_config_schema_accepts_the_template_and_the_readme_example() -> None:
    validator = jsonschema.Draft202012Validator(_schema_from_the_command())
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    examples = [
        json.loads(block)
        for block in re.findall(r"```json\n(.*?)```", readme, re.S)
        if '"backup"' in block
    ]
    assert len(examples) >= 2  # the full example and the editor one with "$schema"
    for document in (template(), *examples):
        assert list(validator.iter_errors(document)) == []


@pytest.mark.parametrize(
    "document",
    [
        {"backup": {"folders": ["/a"], "folder": ["/b"]}},  # an unknown key
        {"backup": {"folders": ["/a"], "workers": 0}},
        {"backup": {"folders": ["/a"], "workers": True}},
        {"backup": {"folders": ["/a"]}, "aws": {"retry_mode": "fast"}},
        {"backup": {"folders": ["/a"], "object_lock": {"mode": "GOVERNANCE"}}},
        {"backup": {"folders": ["/a"]}, "pricing": {"put_per_1000": -1}},
    ],
)
def test_the_schema_and_the_tool_refuse_the_same_mistakes(
    document: dict[str, Any], tmp_path: Path
) -> None:
    validator = jsonschema.Draft202012Validator(json_schema())
    assert list(validator.iter_errors(document)) != []
    with pytest.raises(ConfigError):
        parse_settings(document, tmp_path)


def test_a_config_naming_its_schema_is_valid(tmp_path: Path) -> None:
    """The README's way to point an editor at the schema: "$schema" in config.json."""
    images = tmp_path / "images"
    images.mkdir()
    schema = subprocess.run([CLI, "config-schema"], capture_output=True, text=True, check=True)
    (tmp_path / "config.schema.json").write_text(schema.stdout)
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps({"$schema": "./config.schema.json", "backup": {"folders": [str(images)]}})
    )
    config.chmod(0o600)

    result = subprocess.run(
        [CLI, "check-config", "--cache", str(tmp_path)], capture_output=True, text=True
    )

    assert result.returncode == 0, result.stderr
    assert "config.json is valid: 1 backup folders" in result.stdout


PYDANTIC_WORDS = ("Input should", "pydantic", "type=", "Value error", "Field required", "[type")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {"backup": {"folders": ["/a"], "workers": "8"}},
            "config.json: backup.workers: must be a whole number from 1 to 64, not '8'",
        ),
        (
            {"backup": {"folders": ["/a"], "follow_root_symlinks": "yes"}},
            "config.json: backup.follow_root_symlinks: must be true or false, not a string",
        ),
        (
            {"backup": None},
            "config.json: backup: must be a JSON object, not null",
        ),
        (
            {"backup": {"folders": ["/a"], "object_lock": {"mode": "GOVERNANCE"}}},
            "config.json: backup.object_lock.days: missing; 180 matches Deep Archive's minimum",
        ),
        (
            {
                "backup": {
                    "folders": ["/a"],
                    "object_lock": {"mode": "COMPLIANCE", "days": 10, "renew_days": 11},
                }
            },
            "config.json: backup.object_lock.renew_days: must be a whole number from 1 to 10, "
            "not 11",
        ),
        (
            {"backup": {"folders": ["/a"], "wrokers": 3}},
            "config.json: backup: unknown key backup.wrokers (a typo? did you mean: wrokers -> "
            "workers? known keys:",
        ),
    ],
)
def test_pydantic_errors_are_told_in_our_words(raw: Any, expected: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(raw, tmp_path)
    message = str(caught.value)
    assert expected in message
    assert not any(word in message for word in PYDANTIC_WORDS), message


def test_every_problem_is_named_at_once_each_on_its_line(tmp_path: Path) -> None:
    raw = {
        "backup": {"folders": ["/a"], "workers": 0, "exclude": [""]},
        "aws": {"max_attempts": 99, "crt": "no"},
    }
    with pytest.raises(ConfigError) as caught:
        parse_settings(raw, tmp_path)
    assert str(caught.value).splitlines() == [
        "config.json: backup.workers: must be a whole number from 1 to 64, not 0",
        "config.json: backup.exclude[0]: must be a glob pattern such as \"*.tmp\", not ''",
        "config.json: aws.max_attempts: must be a whole number from 1 to 20, not 99",
        "config.json: aws.crt: must be true or false, not a string",
    ]


@pytest.mark.parametrize(
    "aws",
    [
        {"access_key": ["AKIASECRETKEYID"], "secret_access_key": "SECRETSECRET"},
        {"access_key": "AKIASECRETKEYID", "secret_access_key": {"x": "SECRETSECRET"}},
        {"secret_access_key": "SECRETSECRET"},
        {"access_key": "AKIASECRETKEYID", "secret_access_key": "SECRETSECRET", "region": 5},
    ],
)
def test_aws_keys_never_appear_in_messages(aws: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings({"backup": {"folders": ["/a"]}, "aws": aws}, tmp_path)
    assert "SECRET" not in str(caught.value) and "aws." in str(caught.value)


def test_version_does_not_import_pydantic() -> None:
    """--version and --help stay fast: the model is loaded only to read or write a config."""
    probe = (
        "import sys\n"
        # app(), not main(): main() ends the process (cli._exit) before the print.
        "from matricula_backup.cli import app\n"
        "sys.argv = ['matricula-backup', '--version']\n"
        "try:\n    app()\nexcept SystemExit:\n    pass\n"
        "print('pydantic' in sys.modules, 'matricula_backup.config_model' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "False False"
