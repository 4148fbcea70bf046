"""The S3 server under the benchmark (moto or SeaweedFS, on 127.0.0.1)."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path
from typing import Any

from testkit.servers import WEED, SeaweedFS, free_port, stop_group, wait_http

from .common import KEY, REGION, SECRET, VENV_BIN

# --- servers ---------------------------------------------------------------------------------


class Server:
    def __init__(self, kind: str, work: Path) -> None:
        self.kind = kind
        self.work = work
        self.process: subprocess.Popen[bytes] | None = None
        self.ports: list[int] = []
        self.url = ""
        self.version = ""
        self.weed: SeaweedFS | None = None

    def start(self) -> None:
        logs = self.work / "server-logs"
        logs.mkdir(parents=True, exist_ok=True)
        if self.kind == "seaweedfs":
            self.weed = SeaweedFS(self.work, logs, KEY, SECRET).start()
            self.process, self.ports, self.url = self.weed.process, self.weed.ports, self.weed.url
            self.version = "SeaweedFS " + _first_line([str(WEED), "version"])
            return
        port = free_port()
        self.ports = [port]
        command = [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
        import moto

        self.version = f"moto {moto.__version__}"
        self.url = f"http://127.0.0.1:{port}"
        with open(logs / "stdout", "wb") as out, open(logs / "stderr", "wb") as err:
            self.process = subprocess.Popen(command, stdout=out, stderr=err, start_new_session=True)
        wait_http(self.url + "/", self.process)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def rss_mib(self) -> float:
        if not self.process:
            return 0.0
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        if self.weed is not None:
            self.weed.stop()
            self.weed = None
            self.process = None
        if self.process is None:
            return
        stop_group(self.process)
        self.process = None

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=KEY,
            aws_secret_access_key=SECRET,
            config=Config(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )


def _first_line(argv: list[str]) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    text = (result.stdout or result.stderr).strip()
    return text.splitlines()[0] if text else f"unavailable (exit {result.returncode})"
