"""Soak test: many backup runs against a faulty S3, with random kill -9, then a full check.

Starts moto's S3 server and the fault proxy of testkit/proxy.py, both on
127.0.0.1, builds a tree in a temporary directory, then for each run: changes
the tree at random (adds, modifies, changes back, deletes and touches files), starts the
installed ``matricula-backup --cache DIR`` and, with probability ``--kill-rate``,
kills it with SIGKILL after a random delay. A last run without faults and
without kill must then leave:

- the bucket's latest versions exactly the current files (keys = absolute path
  without the leading '/', same sizes, metadata sha256 of the file),
  no delete marker as the latest version of an existing file;
- every row of the folder's files table backed_up, with the size, mtime,
  SHA-256 and version id of the file and of its latest object; no other row.

Prints a summary (runs, kills, injected faults by kind, PUT requests vs uploads,
PASS/FAIL) and exits 1 on FAIL.

    .venv/bin/python benchmarks/soak.py --runs 40 --fault-rate 0.2 --kill-rate 0.4 --seed 1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import boto3  # noqa: E402
from botocore.config import Config  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

from testkit.proxy import KINDS, S3Proxy  # noqa: E402

CLI = Path(sys.executable).parent / "matricula-backup"
REGION = "eu-central-1"
MiB = 1024 * 1024


@dataclass
class Run:
    number: int
    exit_code: int | None
    killed: bool
    seconds: float
    started: float
    ended: float
    faults: int
    requests: int
    log_start: int  # this run's requests in proxy.log
    log_end: int


@dataclass
class Tree:
    """The backup folder and what happened to its files, for the report."""

    root: Path
    rnd: random.Random
    big_max: int
    next_id: int = 0
    mutations: Counter[str] = field(default_factory=Counter)
    history: dict[str, list[str]] = field(default_factory=dict)  # rel path -> events
    added_last: list[Path] = field(default_factory=list)  # added before the previous run
    added_now: list[Path] = field(default_factory=list)
    modified_last: list[Path] = field(default_factory=list)
    modified_now: list[Path] = field(default_factory=list)
    previous: dict[Path, bytes] = field(default_factory=dict)  # bytes before the last change

    def files(self) -> list[Path]:
        return sorted(p for p in self.root.rglob("*") if p.is_file())

    def _note(self, path: Path, event: str) -> None:
        self.history.setdefault(str(path.relative_to(self.root)), []).append(event)

    def _write(self, path: Path, size: int = 0, data: bytes | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.rnd.randbytes(size) if data is None else data)
        now = time.time_ns()  # a fresh, distinct mtime (the write's may share a clock tick)
        os.utime(path, ns=(now, now))

    def small_size(self) -> int:
        return self.rnd.choice((0, 1, self.rnd.randint(2, 2000), self.rnd.randint(2000, 40000)))

    def add(self, when: str, big: bool = False) -> None:
        self.next_id += 1
        directory = self.root / f"d{self.rnd.randint(0, 9)}"
        if self.rnd.random() < 0.2:
            directory = directory / f"sub {self.rnd.randint(0, 3)}"
        path = directory / f"{self.next_id:05d}{'-big' if big else ''}.tif"
        size = self.rnd.randint(5 * MiB, self.big_max) if big else self.small_size()
        self._write(path, size)
        self._note(path, f"added {when}")
        self.mutations["added"] += 1
        self.added_now.append(path)

    def mutate(self, when: str) -> None:
        self.added_last, self.added_now = self.added_now, []
        self.modified_last, self.modified_now = self.modified_now, []
        files = self.files()
        count = max(1, len(files) // 25)  # about 4% each: add, modify, delete, touch
        for _ in range(count):
            self.add(when)
        for path in self.rnd.sample(files, min(count, len(files))):
            same_size = self.rnd.random() < 0.3
            size = path.stat().st_size if same_size else self.small_size()
            if path.name.endswith("-big.tif"):
                size = path.stat().st_size if same_size else self.rnd.randint(5 * MiB, self.big_max)
            else:
                self.previous[path] = path.read_bytes()
            self._write(path, size)
            self._note(path, f"modified {when}")
            self.mutations["modified"] += 1
            self.modified_now.append(path)
        # Files modified before the previous run get their former bytes back (a
        # scan saved again from the original): the previous run may have been
        # killed after S3 stored the modified bytes but before it recorded that.
        back = [p for p in self.modified_last if p.exists() and p in self.previous]
        for path in self.rnd.sample(back, min(max(1, count // 2), len(back))):
            self._write(path, data=self.previous.pop(path))
            self._note(path, f"changed back {when}")
            self.mutations["changed back"] += 1
        # Half of the deletes hit files added just before the previous run: a run
        # killed after S3 stored them but before it recorded that is then followed
        # by their deletion.
        young = [p for p in self.added_last if p.exists()]
        doomed = set(self.rnd.sample(young, min(count // 2, len(young))))
        files = [p for p in self.files() if p not in doomed]
        doomed |= set(self.rnd.sample(files, min(count - len(doomed), len(files))))
        for path in sorted(doomed):
            path.unlink()
            self.previous.pop(path, None)
            self._note(path, f"deleted {when}")
            self.mutations["deleted"] += 1
        files = self.files()
        for path in self.rnd.sample(files, min(count, len(files))):
            now = time.time_ns()
            os.utime(path, ns=(now, now))
            self._note(path, f"touched {when}")
            self.mutations["touched"] += 1
        if self.rnd.random() < 0.15:
            self.add(when, big=True)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


def start_backup(cache: Path, logs: Path, number: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    with open(logs / f"run-{number:02d}.out", "wb") as out:
        return subprocess.Popen(
            [str(CLI), "--cache", str(cache)], stdout=out, stderr=subprocess.STDOUT, env=env
        )


def integrity_ok(cache: Path) -> bool:
    db = cache / "state.db"
    if not db.exists():
        return True
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return bool(conn.execute("PRAGMA integrity_check").fetchone() == ("ok",))


def latest_versions(s3: Any, bucket: str) -> tuple[dict[str, dict[str, Any]], set[str], int]:
    """Key -> latest version, keys whose latest is a delete marker, number of versions."""
    latest: dict[str, dict[str, Any]] = {}
    markers: set[str] = set()
    versions = 0
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for version in page.get("Versions", []):
            versions += 1
            if version["IsLatest"]:
                latest[version["Key"]] = version
        for marker in page.get("DeleteMarkers", []):
            if marker["IsLatest"]:
                markers.add(marker["Key"])
    return latest, markers, versions


def last_put_by_run(proxy: S3Proxy, runs: list[Run], bucket: str) -> dict[str, str]:
    """Key -> the last run whose PUT (or multipart upload) of it reached S3."""
    last: dict[str, str] = {}
    prefix = f"/{bucket}/"
    for run in runs:
        how = "killed" if run.killed else f"exit {run.exit_code}"
        for line in proxy.log[run.log_start : run.log_end]:
            method, _, target = line.partition(" ")
            path = unquote(target.split("?", 1)[0])
            if method in ("PUT", "POST") and path.startswith(prefix):
                last[path[len(prefix) :]] = f"run {run.number} ({how})"
    return last


def check(
    s3: Any,
    proxy: S3Proxy,
    cache: Path,
    folder: Path,
    tree: Tree,
    runs: list[Run],
    sample: int,
) -> tuple[list[str], dict[str, int]]:
    """Everything that does not agree, and a few counts for the summary."""
    problems: list[str] = []
    db = sqlite3.connect(f"file:{cache / 'state.db'}?mode=ro", uri=True)
    bucket, table = db.execute(
        "SELECT bucket, table_name FROM folders WHERE path = ?", (str(folder),)
    ).fetchone()
    files = {p: p.stat() for p in tree.files()}
    expected = {str(p).lstrip("/"): p for p in files}
    latest, markers, versions = latest_versions(s3, bucket)

    for key in sorted(set(expected) - set(latest)):
        why = "its latest version is a delete marker" if key in markers else "no object"
        problems.append(f"missing in bucket: {key} ({why})")
    last_put = last_put_by_run(proxy, runs, bucket)
    for key in sorted(set(latest) - set(expected)):
        rel = key[len(str(folder).lstrip("/")) + 1 :]
        uploaded = last_put.get(key, "no run")
        history = ", ".join(tree.history.get(rel, ["not made by the soak"]))
        problems.append(
            f"in bucket but not on disk: {key} (last uploaded by {uploaded}; "
            f"file history: {history})"
        )
    for key in sorted(set(latest) & set(expected)):
        if latest[key]["Size"] != files[expected[key]].st_size:
            problems.append(
                f"size differs: {key}: bucket {latest[key]['Size']}, "
                f"disk {files[expected[key]].st_size}"
            )
    common = sorted(set(latest) & set(expected))
    rnd = random.Random(0)
    for key in common if len(common) <= sample else rnd.sample(common, sample):
        path = expected[key]
        meta = s3.head_object(Bucket=bucket, Key=key)["Metadata"]
        # (The mtime metadata is the file's mtime at upload: a file only touched
        # since is not uploaded again, so it is not compared.)
        if meta.get("sha256") != sha256(path):
            rel = str(path.relative_to(folder))
            history = ", ".join(tree.history.get(rel, []))
            problems.append(
                f"sha256 metadata of the latest version differs from the file: {key} "
                f"(last uploaded by {last_put.get(key, 'no run')}; file history: {history})"
            )

    rows = {
        row[0]: row[1:]
        for row in db.execute(
            f"SELECT path, size, mtime_ns, state, version_id, lower(hex(sha256)), error "
            f'FROM "{table}"'
        )
    }
    on_disk = {str(p.relative_to(folder)): p for p in files}
    for rel in sorted(set(on_disk) - set(rows)):
        problems.append(f"file without a row in {table}: {rel}")
    for rel in sorted(set(rows) - set(on_disk)):
        problems.append(f"row of a file not on disk: {rel} {rows[rel][2]}")
    for rel in sorted(set(rows) & set(on_disk)):
        size, mtime_ns, state, version_id, digest, error = rows[rel]
        path = on_disk[rel]
        if state != "backed_up" or error is not None:
            problems.append(f"row not backed up: {rel}: {state} {error}")
        if (size, mtime_ns) != (files[path].st_size, files[path].st_mtime_ns):
            problems.append(f"row size/mtime differ from the file: {rel}")
        key = str(path).lstrip("/")
        if key in latest and version_id != latest[key]["VersionId"]:
            problems.append(f"row version_id is not the latest version: {rel}")
        if digest and digest != sha256(path):
            problems.append(f"row sha256 differs from the file: {rel}")
    runs_table = db.execute(
        "SELECT count(*), coalesce(sum(files_uploaded), 0) FROM runs "
        "WHERE outcome NOT IN ('running', 'killed')"
    ).fetchone()
    db.close()
    counts = {
        "files": len(files),
        "objects": len(latest),
        "versions": versions,
        "finished_runs": runs_table[0],
        "recorded_uploads": runs_table[1],
        "rows": len(rows),
    }
    return problems, counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40, help="runs before the final one")
    parser.add_argument("--fault-rate", type=float, default=0.2, help="share of failed requests")
    parser.add_argument("--kill-rate", type=float, default=0.4, help="share of runs killed")
    parser.add_argument("--files", type=int, default=300, help="files in the first tree")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--kinds",
        default="slowdown,internal,drop,delay",
        help=f"fault kinds, comma-separated, of {', '.join(KINDS)}",
    )
    parser.add_argument("--delay", type=float, default=0.5, help="seconds of a delay fault")
    parser.add_argument("--kill-after", type=float, nargs=2, default=(0.5, 3.5), metavar="S")
    parser.add_argument("--max-attempts", type=int, default=6, help="aws.max_attempts")
    parser.add_argument("--workers", type=int, default=4, help="backup.workers")
    parser.add_argument("--big-max-mib", type=int, default=11, help="largest multipart file")
    parser.add_argument("--sample", type=int, default=500, help="head_object at most this many")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    if not CLI.exists():
        parser.error(f"{CLI} not found: install the package into this Python's environment")

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    rnd = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="matricula-soak-"))
    cache, logs, folder = work / "cache", work / "logs", work / "images" / "Soak"
    for directory in (cache, logs, folder):
        directory.mkdir(parents=True)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    address = server._server.server_address  # type: ignore[union-attr]
    moto_url = f"http://{address[0]!s}:{address[1]}"
    proxy = S3Proxy(moto_url, seed=args.seed, delay=args.delay).start()
    s3 = boto3.client(
        "s3",
        endpoint_url=moto_url,  # straight to moto: the checks see no fault
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name=REGION,
        config=Config(s3={"addressing_style": "path"}),
    )
    config = {
        "backup": {
            "folders": [str(folder)],
            "workers": args.workers,
            "part_size_mb": 5,
            "multipart_threshold_mb": 5,
            # Deletes and changes pile up over killed runs; the mass-delete and
            # mass-change guards are not under test (the latter held the changed
            # files back for ever: every soak since it came in ended FAIL).
            "max_delete_percent": 100,
            "max_change_percent": 100,
        },
        "aws": {
            "access_key": "test",
            "secret_access_key": "test",
            "region": REGION,
            "endpoint_url": proxy.url,
            "max_attempts": args.max_attempts,
        },
    }
    (cache / "config.json").write_text(json.dumps(config, indent=2))
    (cache / "config.json").chmod(0o600)  # it holds (test) secrets

    tree = Tree(folder, rnd, args.big_max_mib * MiB)
    for _ in range(args.files):
        tree.add("before run 1")
    tree.add("before run 1", big=True)
    runs: list[Run] = []
    seen_versions: set[tuple[str, int, int]] = set()
    broken: list[str] = []
    started_all = time.monotonic()
    try:
        for number in range(1, args.runs + 2):
            final = number == args.runs + 1
            if number > 1:
                tree.mutate(f"before run {number}")
            for path in tree.files():
                st = path.stat()
                seen_versions.add((str(path), st.st_size, st.st_mtime_ns))
            if final:
                proxy.off()
            else:
                proxy.configure(rate=args.fault_rate, kinds=kinds, delay=args.delay)
            faults_before, requests_before, log_start = proxy.injected, proxy.seen, len(proxy.log)
            kill_at = (
                rnd.uniform(*args.kill_after)
                if not final and rnd.random() < args.kill_rate
                else None
            )
            started, wall = time.monotonic(), time.time()
            process = start_backup(cache, logs, number)
            killed = False
            try:
                process.wait(timeout=kill_at if kill_at is not None else 600)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
                process.wait()
                killed = kill_at is not None
            run = Run(
                number,
                None if killed else process.returncode,
                killed,
                time.monotonic() - started,
                wall,
                time.time(),
                proxy.injected - faults_before,
                proxy.seen - requests_before,
                log_start,
                len(proxy.log),
            )
            runs.append(run)
            print(
                f"run {number:2d}{' (final)' if final else ''}: "
                + (f"killed after {run.seconds:.1f} s" if killed else f"exit {run.exit_code}")
                + f" in {run.seconds:.1f} s, {run.requests} requests, {run.faults} faults",
                flush=True,
            )
            output = (logs / f"run-{number:02d}.out").read_text(errors="replace")
            # A run after a kill reports the killed run once (one error, exit 1).
            after_kill = len(runs) > 1 and runs[-2].killed
            clean_final = run.exit_code == 0 or (
                after_kill and run.exit_code == 1 and re.search(r"; 1 errors$", output, re.M)
            )
            if not killed and (run.exit_code not in (0, 1) or (final and not clean_final)):
                broken.append(f"run {number} exited {run.exit_code} (see {logs})")
            elif not killed and not re.search(r"^backup (done|interrupted)", output, re.M):
                last = output.strip().splitlines()[-1:] or ["no output"]
                broken.append(f"run {number} printed no summary line: {last[0][:200]}")
            if not integrity_ok(cache):
                broken.append(f"state.db integrity_check failed after run {number}")
        proxy.off()
        problems, counts = check(s3, proxy, cache, folder, tree, runs, args.sample)
        problems = broken + problems
    finally:
        proxy.stop()
        server.stop()

    kills = sum(run.killed for run in runs)
    print()
    print(
        f"soak: seed {args.seed}, {len(runs)} runs ({args.runs} + 1 final) in "
        f"{time.monotonic() - started_all:.0f} s, {kills} killed with SIGKILL, exit codes "
        + ", ".join(str(r.exit_code) if not r.killed else "kill" for r in runs)
    )
    print(
        "tree: "
        + ", ".join(f"{name} {count}" for name, count in sorted(tree.mutations.items()))
        + f"; {counts['files']} files at the end"
    )
    print(
        f"injected faults: {proxy.injected} of {proxy.seen} requests ("
        + ", ".join(f"{kind} {count}" for kind, count in sorted(proxy.faults.items()))
        + ")"
    )
    print(
        "faulted requests: "
        + ", ".join(f"{label} {count}" for label, count in proxy.faulted.most_common())
    )
    print(
        f"PUT object requests that reached S3: "
        f"{proxy.requests['PUT object'] + proxy.requests['PUT part']} (PutObject and "
        f"UploadPart; CompleteMultipartUpload {proxy.requests['POST complete']}); "
        f"object versions in the bucket: {counts['versions']}; uploads recorded by the "
        f"{counts['finished_runs']} finished runs: {counts['recorded_uploads']}; distinct file "
        f"versions the runs saw (at most this many uploads needed): {len(seen_versions)}"
    )
    print(
        f"check: {counts['files']} files on disk, {counts['objects']} latest objects, "
        f"{counts['rows']} rows in state.db; {len(problems)} problems"
    )
    kinds_of_problems = Counter(problem.split(":", 1)[0] for problem in problems)
    for kind, count in kinds_of_problems.most_common():
        print(f"  {count} x {kind}")
    for problem in problems[:30]:
        print(f"  {problem}")
    if len(problems) > 30:
        print(f"  ... {len(problems) - 30} more")
    print("PASS" if not problems else "FAIL")
    if args.keep or problems:
        print(f"kept {work} (cache, logs, images)")
    else:
        shutil.rmtree(work)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
