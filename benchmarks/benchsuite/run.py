"""The benchmark runs: the tool, the walks and the peers, the change and unreadable cases."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import math
import os
import platform
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from testkit.proxy import S3Proxy

from .common import REPO, TOOL, WALK_CODE
from .measure import Measure, Runner, Spawner
from .peers import Peer, install_peers, make_peers
from .profiling import profile
from .server import Server, _first_line
from .tool import bucket_of_dry_run, db_size, prime_state_db, tool_env, write_config
from .tree import TreeSpec, ensure_tree, mutate, restore_mutations, touch

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
