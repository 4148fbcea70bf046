"""What reaches the log, stderr and Teams is escaped and holds no secret.

A file name is chosen by whoever can write to the image folders, a webhook's
answer by whoever runs the server: neither may forge a log line, clear the
terminal, or make the webhook's ``sig=`` credential appear in a log.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from matricula_backup import notify
from matricula_backup.escape import printable, redact
from matricula_backup.report import Problem, RunReport
from tests.conftest import CLI, Setup, skip_unless_other_users_can_run_the_command

NOBODY = 65534
FORGED = "a\n2026-11-27 01:00:00 INFO backup finished: 0 errors"
CLEAR_SCREEN = "b\x1b[2J.tif"
SIG = "Zm9yZ2VkLXNpZ25hdHVyZQ-SECRET"


@given(st.text())
def test_printable_leaves_one_line_of_printable_characters(text: str) -> None:
    shown = printable(text)
    assert shown.isprintable() and "\n" not in shown
    assert printable(shown) == shown  # escaping twice changes nothing
    if text.isprintable():
        assert shown == text


def test_redact_removes_sig_however_it_is_written() -> None:
    url = f"https://x.logic.azure.com/workflows/1/invoke?api-version=1&sp=%2Frun&sig={SIG}"
    for text in (url, url.replace("sig=", "sig%3D"), f'{{"url": "{url}"}}', f"SIG={SIG}&x=1"):
        assert SIG not in redact(text)
    assert redact("design=blue") == "design=blue"


def test_a_file_name_cannot_put_a_link_or_a_new_line_in_the_card() -> None:
    report = RunReport(hostname="imageserver")
    name = "/images/[Log in again](https://evil.example)\n- all good.tif"
    report.add_problem(Problem("/images", "upload", "cannot read", name))

    card = notify.failure_card(report, Path("/var/lib/mb/matricula-backup.log"))

    texts = _strings(card)
    assert not [text for text in texts if "](" in text or "\n- all good" in text]
    assert any("[Log in again]\u200b(https://evil.example)\\n- all good.tif" in t for t in texts)


def test_a_webhook_that_echoes_its_url_never_puts_sig_in_the_log(
    setup: Setup, httpserver: Any
) -> None:
    url = httpserver.url_for("/workflows/abc/invoke") + f"?api-version=2016-06-01&sig={SIG}"
    echo = f"Bad request to {url} (also as {url.replace('=', '%3D')}); sig was {SIG}"
    httpserver.expect_request("/workflows/abc/invoke").respond_with_data(echo, status=400)
    setup.write_config(
        backup__folders=[str(setup.images / "not-mounted")], notification__webhook=url
    )

    run = setup.run()
    test = setup.run("notify-test")

    assert run.returncode == 1 and test.returncode == 1
    posted = [r for r, _ in httpserver.log if r.path == "/workflows/abc/invoke"]
    assert len(posted) == 2  # the server did get both, and answered with the URL
    log = (setup.cache / "matricula-backup.log").read_text()
    assert "was refused: HTTP 400 Bad request to" in log
    for text in (log, run.stdout, run.stderr, test.stdout, test.stderr):
        assert SIG not in text
    assert "refused: HTTP 400" in run.stderr  # still said, without the secret


def _as_nobody(setup: Setup, *args: str) -> subprocess.CompletedProcess[str]:
    """The command as the unprivileged user nobody, which cannot read a file of mode 000."""
    skip_unless_other_users_can_run_the_command()
    setpriv = shutil.which("setpriv")
    assert setpriv is not None
    path = setup.tmp
    while path != path.parent and str(path) != "/tmp":  # pytest's tmp dirs are 0700
        path.chmod(stat.S_IMODE(path.stat().st_mode) | 0o001)
        path = path.parent
    for dirpath, _dirs, files in os.walk(setup.cache):
        os.chown(dirpath, NOBODY, NOBODY)
        for name in files:
            os.chown(os.path.join(dirpath, name), NOBODY, NOBODY)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["HOME"] = str(setup.cache)
    return subprocess.run(
        [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", CLI]
        + ["--cache", str(setup.cache), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=setup.cache,
        timeout=300,
    )


def test_file_names_cannot_forge_a_log_line_or_reach_the_terminal(
    setup: Setup, httpserver: Any
) -> None:
    folder = setup.images / "Band"
    setup.file("Band/fine.tif", b"fine")
    setup.file(f"Band/{FORGED}", b"moto refuses a newline in a key")
    setup.file(f"Band/{CLEAR_SCREEN}", b"nobody may read this").chmod(0)
    for path in (setup.images, folder, folder / "fine.tif", folder / FORGED):
        path.chmod(path.stat().st_mode | 0o005)
    httpserver.expect_request("/hook").respond_with_data("", status=202)
    setup.write_config(
        backup__folders=[str(folder)], notification__webhook=httpserver.url_for("/hook")
    )

    result = _as_nobody(setup)

    assert result.returncode == 1, result.stderr
    assert "uploaded 1/3 files" in result.stdout
    forged_shown = FORGED.replace("\n", "\\n")
    clear_shown = CLEAR_SCREEN.replace("\x1b", "\\x1b")
    log_lines = (setup.cache / "matricula-backup.log").read_text().splitlines()
    # The log: one line for each file, escaped, and no line that starts as the forged one.
    assert len([line for line in log_lines if forged_shown in line]) == 1
    assert not [line for line in log_lines if line.startswith("2026-11-27 01:00:00 INFO")]
    assert len([line for line in log_lines if "backup finished" in line]) == 1
    assert len([line for line in log_lines if clear_shown in line]) == 1
    assert "cannot read: Permission denied" in next(
        line for line in log_lines if clear_shown in line
    )
    # stderr and stdout: escaped too, no escape sequence reaches the terminal.
    assert f"{folder}/{forged_shown}: " in result.stderr
    assert f"{folder}/{clear_shown}: cannot read" in result.stderr
    for text in (result.stdout, result.stderr):
        assert "\x1b" not in text and "\n2026-11-27 01:00:00" not in text
    # The card: the same escaped names.
    (posted,) = [r.get_json() for r, _ in httpserver.log if r.path == "/hook"]
    card = json.dumps(posted)
    assert json.dumps(forged_shown)[1:-1] in card and json.dumps(clear_shown)[1:-1] in card
    texts = _strings(posted)
    assert not [t for t in texts if "\x1b" in t or "\n2026-11-27" in t]


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in _strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []


def test_a_root_subfolder_with_a_newline_is_one_line_of_output(setup: Setup) -> None:
    root = setup.images / "root"
    setup.file("root/Band\n2026-11-27 01:00:00 INFO x/a.tif", b"a")
    setup.write_config(backup__roots=[str(root)])

    result = setup.run("--dry-run")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert not [line for line in lines if line.startswith("2026-11-27")]
    assert (
        len([line for line in lines if "Band\\n2026-11-27 01:00:00 INFO x -> s3://" in line]) == 1
    )
    checked = setup.run("check-config").stdout.splitlines()
    assert not [line for line in checked if line.startswith("2026-11-27")]
    assert len([line for line in checked if "Band\\n2026-11-27 01:00:00 INFO x (" in line]) == 1
