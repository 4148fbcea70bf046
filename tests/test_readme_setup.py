"""The README's "Setting up a server" steps, run as written.

The commands are read from the README's fenced block after the
``<!-- setup-steps`` marker, not copied here, so the test runs what an
administrator reads. Where the README says "edit config.json", the test writes
one for the local servers: moto's S3 server (behind the counting proxy) and a
pytest-httpserver webhook, both on 127.0.0.1.

The steps need root (a system user, /opt/matricula-backup, /var/lib/
matricula-backup), as they do on a server; the test removes all three
afterwards and refuses to run where any of them exists already.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer

from testkit.proxy import S3Proxy
from tests.conftest import REGION

REPO = Path(__file__).resolve().parent.parent
MARKER = "<!-- setup-steps"
USER = "matricula-backup"
VENV = Path("/opt/matricula-backup")
CACHE = Path("/var/lib/matricula-backup")


def setup_steps() -> list[str]:
    """The command lines of the README's setup block (comments kept: they mark steps)."""
    text = (REPO / "README.md").read_text()
    start = text.index(MARKER)
    block = re.search(r"```sh\n(.*?)```", text[start:], re.S)
    assert block, "no ```sh block after the setup-steps marker in README.md"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_the_setup_steps_run_as_the_service_user_with_a_python_it_can_execute() -> None:
    """What the steps must keep saying, whoever edits them."""
    steps = setup_steps()
    commands = [line for line in steps if not line.startswith("#")]
    assert any(line.startswith("useradd --system") for line in commands)
    assert any(line.startswith("/usr/bin/python3 -m venv ") for line in commands)
    assert any("python3-venv" in line for line in commands)
    assert any("check-config --online" in line for line in commands)
    runs = [line for line in commands if "bin/matricula-backup" in line]
    assert runs and all(line.startswith(f"runuser -u {USER} -- ") for line in runs)
    assert any(line.startswith("# edit ") and "config.json" in line for line in steps)


@pytest.fixture()
def clean_machine() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip(
            "needs root: the README's setup steps create a system user and directories "
            "under /opt and /var/lib (CI runs as root)"
        )
    try:
        pwd.getpwnam(USER)
        pytest.skip(f"the user {USER} exists already: not touching an installation")
    except KeyError:
        pass
    for path in (VENV, CACHE):
        if path.exists():
            pytest.skip(f"{path} exists already: not touching an installation")
    try:
        yield
    finally:
        subprocess.run(["userdel", USER], capture_output=True)
        shutil.rmtree(VENV, ignore_errors=True)
        shutil.rmtree(CACHE, ignore_errors=True)


def test_the_readme_setup_steps_work_as_written(
    clean_machine: None, s3_proxy: S3Proxy, s3: Any, httpserver: HTTPServer
) -> None:
    # Image folders the service user can read (tmp_path is root's only).
    images = Path(tempfile.mkdtemp(prefix="mb-readme-images-", dir="/tmp"))
    try:
        images.chmod(0o755)
        folder = images / "Taufbuch 1890"
        folder.mkdir(mode=0o755)
        for number in range(3):
            (folder / f"{number:04d}.tif").write_bytes(os.urandom(1000))
            (folder / f"{number:04d}.tif").chmod(0o644)
        webhook = httpserver.url_for("/workflows/1/invoke") + "?api-version=1&sig=SECRET"
        httpserver.expect_request("/", method="HEAD").respond_with_data("")
        httpserver.expect_request("/workflows/1/invoke", method="POST").respond_with_data(
            "", status=202
        )
        outputs = _run_steps(lambda: _write_config(folder, s3_proxy.url, webhook))
    finally:
        shutil.rmtree(images, ignore_errors=True)

    by_step = {_step_name(line): output for line, output in outputs}
    assert "S3: ok:" in by_step["check-config"] and "webhook: ok:" in by_step["check-config"]
    assert "test message accepted" in by_step["notify-test"]
    assert "would upload 3 files" in by_step["dry-run"]
    assert "uploaded 3/3 files" in by_step["run"]
    assert "SECRET" not in "".join(by_step.values())
    buckets = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert len(buckets) == 1
    objects = s3.list_objects_v2(Bucket=buckets[0]).get("Contents", [])
    assert sorted(o["Key"].rsplit("/", 1)[1] for o in objects) == [
        "0000.tif",
        "0001.tif",
        "0002.tif",
    ]
    # The cache directory and what the tool wrote belong to the service user.
    uid = pwd.getpwnam(USER).pw_uid
    for name in ("config.json", "state.db", "matricula-backup.log"):
        assert (CACHE / name).stat().st_uid == uid, name


def _run_steps(edit_config: Any) -> list[tuple[str, str]]:
    """Each line in a shell, in the checkout (for ``pip install .``); stop at the first
    failure with its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    env["DEBIAN_FRONTEND"] = "noninteractive"
    outputs = []
    for line in setup_steps():
        if line.startswith("# edit "):
            edit_config()
            continue
        if line.startswith("#"):
            continue
        result = subprocess.run(
            ["bash", "-ec", line],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"{line}\n-> exit {result.returncode}\n{output}"
        outputs.append((line, output))
    return outputs


def _write_config(folder: Path, endpoint: str, webhook: str) -> None:
    """What the administrator puts into the template ``init`` wrote."""
    path = CACHE / "config.json"
    config = json.loads(path.read_text())
    config["backup"]["folders"] = [str(folder)]
    config["notification"]["webhook"] = webhook
    config["aws"].update(
        access_key="test",
        secret_access_key="test-secret",
        region=REGION,
        endpoint_url=endpoint,
    )
    path.write_text(json.dumps(config, indent=2))  # keeps its owner and mode 600


def _step_name(line: str) -> str:
    for name in ("init", "check-config", "notify-test", "dry-run"):
        if f" {name}" in line or f"--{name}" in line:
            return name
    return "run" if "bin/matricula-backup --cache" in line else line.split()[0]
