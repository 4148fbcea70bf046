"""Real servers on 127.0.0.1 for the tests: moto's S3 server (behind a counting
proxy) and pytest-httpserver as the Teams webhook. The tool runs as users run
it: the installed ``matricula-backup`` command in a subprocess."""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer

from testkit.proxy import S3Proxy

REGION = "eu-central-1"
CLI = shutil.which("matricula-backup", path=os.path.dirname(sys.executable)) or "matricula-backup"


@functools.cache
def _python_problem_for_other_users() -> str | None:
    """Why another user cannot run this venv's Python (and so the command), or None."""
    probe = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", ""],
        capture_output=True,
        text=True,
    )
    if probe.returncode == 0:
        return None
    return (
        f"the user nobody cannot run {sys.executable} ({probe.stderr.strip()[:200]}): this "
        "venv was made with a Python only root can reach (e.g. under /root/.pyenv)"
    )


def skip_unless_other_users_can_run_the_command() -> None:
    """For tests that run the command as another user (setpriv): they need root, setpriv,
    and a venv whose Python that user can execute."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv(1) to run the command as another user")
    problem = _python_problem_for_other_users()
    if problem:
        pytest.skip(problem)


def latest_versions(s3: Any, bucket: str) -> dict[str, dict[str, Any]]:
    """Key -> latest version; keys whose latest version is a delete marker are left out."""
    latest: dict[str, dict[str, Any]] = {}
    markers: set[str] = set()
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for version in page.get("Versions", []):
            if version["IsLatest"]:
                latest[version["Key"]] = version
        for marker in page.get("DeleteMarkers", []):
            if marker["IsLatest"]:
                markers.add(marker["Key"])
    assert not markers & set(latest)
    return latest


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server._server.server_address  # type: ignore[union-attr]
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture()
def s3_proxy(moto_url: str) -> Iterator[S3Proxy]:
    httpx.post(f"{moto_url}/moto-api/reset")  # every test starts with no buckets
    proxy = S3Proxy(moto_url).start()
    yield proxy
    proxy.stop()


@pytest.fixture()
def s3(moto_url: str) -> Any:
    """A boto3 client straight to moto (not counted), for checking the buckets."""
    return boto3.client(
        "s3",
        endpoint_url=moto_url,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name=REGION,
        config=Config(s3={"addressing_style": "path"}),
    )


@dataclass
class Setup:
    """A cache directory with config.json, plus the image folders it names."""

    tmp: Path
    cache: Path
    images: Path
    config: dict[str, Any] = field(default_factory=dict)

    def write_config(self, **changes: Any) -> None:
        for dotted, value in changes.items():
            section, key = dotted.split("__")
            self.config.setdefault(section, {})[key] = value
        (self.cache / "config.json").write_text(json.dumps(self.config, indent=2))
        (self.cache / "config.json").chmod(0o600)  # it holds (test) secrets

    def run(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        full_env.update(env or {})
        command, *rest = args if args and not args[0].startswith("-") else ("", *args)
        return subprocess.run(
            [CLI, *([command] if command else []), "--cache", str(self.cache), *rest],
            capture_output=True,
            text=True,
            env=full_env,
            timeout=300,
        )

    def file(self, rel: str, content: bytes | str = b"image", mtime: float | None = None) -> Path:
        path = self.images / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        if mtime is not None:
            os.utime(path, (mtime, mtime))
        return path

    def db(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        import sqlite3
        from contextlib import closing

        with closing(sqlite3.connect(self.cache / "state.db")) as conn, conn:
            return list(conn.execute(sql, params))

    def table(self, folder: Path) -> str:
        return str(self.db("SELECT table_name FROM folders WHERE path = ?", str(folder))[0][0])

    def bucket(self, folder: Path) -> str:
        return str(self.db("SELECT bucket FROM folders WHERE path = ?", str(folder))[0][0])


@pytest.fixture()
def setup(tmp_path: Path, s3_proxy: S3Proxy) -> Setup:
    cache = tmp_path / "cache"
    images = tmp_path / "images"
    cache.mkdir()
    images.mkdir()
    result = Setup(tmp_path, cache, images)
    result.write_config(
        aws__access_key="test",
        aws__secret_access_key="test-secret-never-logged",
        aws__region=REGION,
        aws__endpoint_url=s3_proxy.url,
    )
    return result
