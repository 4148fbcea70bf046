"""Back up a sample folder to a local S3 server, as a new user would, and show the bucket.

Run from the repository root after installing: .venv/bin/python scripts/demo.py

It starts moto's S3 server on 127.0.0.1 (a free port), writes a sample image
folder and a cache directory under a temporary directory, runs the installed
``matricula-backup`` command twice (the first run uploads, the second has
nothing to do and makes no S3 request), then prints what the bucket holds.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
from botocore.config import Config

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str) -> None:
    import httpx

    for _ in range(100):
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"the S3 server at {url} did not start")


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="matricula-demo-"))
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(endpoint)
        folder = work / "images" / "Taufbuch 1890"
        for number in range(1, 6):
            page = folder / f"Band {number // 3 + 1}" / f"{number:04d}.tif"
            page.parent.mkdir(parents=True, exist_ok=True)
            page.write_bytes(os.urandom(50_000))
        cache = work / "cache"
        cache.mkdir()
        config = {
            "backup": {"folders": [str(folder)]},
            "aws": {
                "access_key": "demo",
                "secret_access_key": "demo",
                "region": "eu-central-1",
                "endpoint_url": endpoint,
            },
        }
        (cache / "config.json").write_text(json.dumps(config, indent=2))
        os.chmod(cache / "config.json", 0o600)
        command = [str(BIN / "matricula-backup"), "--cache", str(cache)]
        for label in ("first run", "second run (nothing changed)"):
            print(f"\n$ matricula-backup --cache {cache}    # {label}")
            result = subprocess.run(command, text=True)
            if result.returncode != 0:
                return result.returncode

        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="demo",
            aws_secret_access_key="demo",
            region_name="eu-central-1",
            config=Config(s3={"addressing_style": "path"}),
        )
        for bucket in (b["Name"] for b in s3.list_buckets()["Buckets"]):
            print(f"\nbucket {bucket}:")
            print("  versioning:", s3.get_bucket_versioning(Bucket=bucket).get("Status"))
            for rule in s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]:
                detail = {k: v for k, v in rule.items() if k not in ("ID", "Status", "Filter")}
                print(f"  lifecycle {rule['ID']}: {detail}")
            for version in s3.list_object_versions(Bucket=bucket).get("Versions", []):
                head = s3.head_object(Bucket=bucket, Key=version["Key"])
                print(
                    f"  {version['Key']}  {version['Size']} bytes  {version['StorageClass']}  "
                    f"version {version['VersionId'][:8]}  mtime {head['Metadata']['mtime']}"
                )
        print(f"\nstate database: sqlite3 {cache / 'state.db'}")
        print(f"log:            {cache / 'matricula-backup.log'}")
        return 0
    finally:
        server.terminate()
        server.wait(timeout=10)
        if os.environ.get("KEEP_DEMO") != "1":
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
