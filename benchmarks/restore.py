"""Restore benchmark of issue #9: matricula-backup restore against aws s3 cp and s5cmd cp.

One run: a tree of small files (bench.py's generator) is backed up by the tool
into moto (the only local server with Deep Archive semantics: GetObject of an
archived object is refused until RestoreObject) behind ``proxy.py`` with a
fixed delay per request. The tool's first ``restore`` asks S3 to restore every
object (moto completes restores at once); then, each into an empty directory,
with the same concurrency:

- ``matricula-backup restore --to DIR`` (the run that downloads: list the
  versions, GET each object, check size and SHA-256, write it through
  localfs.py, set mode and mtime);
- ``aws s3 cp --recursive --force-glacier-transfer s3://bucket/prefix DIR``;
- ``s5cmd cp --force-glacier-transfer 's3://bucket/prefix/*' DIR/``.

Each copy is checked (every file, its size). The report gives wall time, CPU
(the client's, the S3 server's and the proxy's meanwhile: on two cores they
share the CPU), peak RSS and requests by operation, and the tool / faster peer
ratio (target: <= 1.0).

moto keeps every object in memory (a 20,000-file run grew it past 22 GiB):
it is refused above 5,000 files. ``--server seaweedfs`` holds the big tree on
disk; SeaweedFS answers RestoreObject with 405 and serves a Deep Archive
object without one, so there the requesting run is skipped: the rows a
requesting run leaves in state.db (``restores.requested_at``) are written by
this script from the version listing, and the tool's download run does what it
does after a real requesting run (one GET per object, no HEAD).

    .venv/bin/python benchmarks/restore.py --files 5000 --delay-ms 20
    .venv/bin/python benchmarks/restore.py --server seaweedfs --files 20000 --delay-ms 20 --repeat 3
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench import (  # noqa: E402
    KEY,
    REGION,
    SECRET,
    TOOL,
    Measure,
    Runner,
    Server,
    Spawner,
    TreeSpec,
    _fmt_requests,
    ensure_tree,
    install_peers,
    peers_env,
    tool_env,
    write_config,
)
from benchsuite.profiling import profile  # noqa: E402

from testkit.proxy import S3Proxy  # noqa: E402


def tree_of(root: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): p.stat().st_size
        for p in root.rglob("*")
        if p.is_file() and ".matricula-restore" not in p.name
    }


def peer_commands(
    venv: Path, work: Path, endpoint: str, source: str, workers: int
) -> dict[str, tuple[list[str], dict[str, str]]]:
    """aws-cli and s5cmd commands that copy ``source`` (bucket/prefix) into a directory
    (the placeholder DEST)."""
    base = peers_env()
    config = work / "aws-config"
    config.write_text(
        f"[default]\nregion = {REGION}\n"
        "request_checksum_calculation = when_required\n"
        "response_checksum_validation = when_required\n"
        f"s3 =\n  max_concurrent_requests = {workers}\n  addressing_style = path\n"
    )
    aws_env = {
        **base,
        "AWS_CONFIG_FILE": str(config),
        "AWS_SHARED_CREDENTIALS_FILE": str(work / "aws-credentials-none"),
        "AWS_ACCESS_KEY_ID": KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET,
    }
    aws = [
        str(venv / "bin" / "aws"),
        "--endpoint-url",
        endpoint,
        "s3",
        "cp",
        "--recursive",
        "--force-glacier-transfer",
        "--only-show-errors",
        f"s3://{source}",
        "DEST",
    ]
    found = sorted(venv.glob("lib/python*/site-packages/s5cmd/bin/s5cmd"))
    s5_env = {
        **base,
        "AWS_ACCESS_KEY_ID": KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_REGION": REGION,
    }
    s5cmd = [
        str(found[0]) if found else "s5cmd",
        "--endpoint-url",
        endpoint,
        "--numworkers",
        str(workers),
        "--log",
        "error",
        "cp",
        "--force-glacier-transfer",
        f"s3://{source}/*",
        "DEST/",
    ]
    return {"aws": (aws, aws_env), "s5cmd": (s5cmd, s5_env)}


MOTO_MAX_FILES = 5_000


def _record_requests(cache: Path, endpoint: str, bucket: str, prefix: str) -> Measure:
    """SeaweedFS has no RestoreObject: record every latest version as requested, as the
    tool's requesting run does (straight to the server, not through the proxy)."""
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
        region_name=REGION,
        config=Config(s3={"addressing_style": "path"}),
    )
    start = time.monotonic()
    rows = [
        (bucket, version["Key"], version["VersionId"], version["Size"], "Bulk", int(time.time()))
        for page in client.get_paginator("list_object_versions").paginate(
            Bucket=bucket, Prefix=prefix + "/"
        )
        for version in page.get("Versions", [])
        if version["IsLatest"]
    ]
    with contextlib.closing(sqlite3.connect(cache / "state.db")) as db, db:
        db.executemany(
            "INSERT INTO restores (bucket, key, version_id, size, tier, requested_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )
    return Measure(
        "restore: requests recorded (SeaweedFS has no RestoreObject)",
        "benchmark",
        time.monotonic() - start,
        note=f"{len(rows):,} rows",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--small-kib", type=int, default=16)
    parser.add_argument("--per-dir", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--delay-ms", type=float, default=20.0)
    parser.add_argument("--tree-dir", type=Path, default=None)
    parser.add_argument("--peers-venv", type=Path, default=Path("/tmp/matricula-bench-peers"))
    parser.add_argument("--no-install", action="store_true")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--out", type=Path, default=Path("/tmp/restore-results.md"))
    parser.add_argument("--server", choices=("moto", "seaweedfs"), default="moto")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds of downloads (each tool once per round, the order rotated); "
        "the ratio compares medians",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after the timed runs, a py-spy profile (GIL holder) of a second download "
        "run of the tool (py-spy from --peers-venv)",
    )
    args = parser.parse_args()
    if args.server == "moto" and args.files > MOTO_MAX_FILES:
        parser.error(
            f"moto keeps every object in memory: at most {MOTO_MAX_FILES:,} files "
            "(use --server seaweedfs for more)"
        )

    spec = TreeSpec(args.files, 0, 0, args.small_kib, args.per_dir, 4)
    tree_dir = args.tree_dir or Path(
        f"/tmp/matricula-bench/tree-{args.files}x{args.small_kib}k-0x0m-{args.per_dir}"
    )
    folder, _, _ = ensure_tree(tree_dir, spec)
    notes = install_peers(args.peers_venv, not args.no_install)
    work = Path(tempfile.mkdtemp(prefix="restore-bench-"))
    server = Server(args.server, work)
    spawner = Spawner()
    proxy: S3Proxy | None = None
    try:
        server.start()
        proxy = S3Proxy(server.url, args.delay_ms).start()
        runner = Runner(proxy, server.pid, work, args.timeout, spawner)
        cache = work / "cache"
        write_config(cache, folder, proxy.url, args.workers, "rb-")
        tool = [str(TOOL), "--cache", str(cache)]
        upload = runner.run("backup (setup)", "matricula-backup", tool, tool_env())
        with contextlib.closing(sqlite3.connect(cache / "state.db")) as db:
            bucket = str(db.execute("SELECT bucket FROM folders").fetchone()[0])
        prefix = str(folder).lstrip("/")
        if args.server == "moto":
            request = runner.run(
                "restore: RestoreObject requests",
                "matricula-backup",
                [str(TOOL), "restore", "--cache", str(cache), "--to", str(work / "requests")],
                tool_env(),
            )
        else:
            request = _record_requests(cache, server.url, bucket, prefix)
        measures: list[Measure] = [upload, request]
        # The same selection without downloading: the version listing alone, which
        # moto serves far slower than ListObjectsV2 (see RESULTS.md).
        argv = [str(TOOL), "restore", "--cache", str(cache), "--dry-run"]
        listing = runner.run("restore --dry-run (listing)", "matricula-backup", argv, tool_env())
        measures.append(listing)
        expected = tree_of(folder)
        commands = peer_commands(
            args.peers_venv, work, proxy.url, f"{bucket}/{prefix}", args.workers
        )
        names = ["matricula-backup", *commands]
        downloads: list[Measure] = []
        checks: dict[int, bool] = {}
        for round_ in range(args.repeat):
            # Each round in another order: whoever goes first meets the server
            # still settling after the upload.
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                dest = work / f"by-{name}-{round_}"
                label = f"download, round {round_ + 1}"
                if name == "matricula-backup":
                    argv = [str(TOOL), "restore", "--cache", str(cache), "--to", str(dest)]
                    measure = runner.run(label, name, argv, tool_env())
                    copy = dest / prefix
                else:
                    dest.mkdir()
                    peer_argv, env = commands[name]
                    peer_argv = [
                        str(dest) if a == "DEST" else a.replace("DEST/", f"{dest}/")
                        for a in peer_argv
                    ]
                    measure = runner.run(label, name, peer_argv, env)
                    copy = dest
                checks[id(measure)] = tree_of(copy) == expected
                # The copies stay until the end: on ext4 without a journal (this
                # machine's /) every inode allocation skips inodes deleted in the
                # last 5 minutes, one lookup each, so deleting a copy made the
                # next run pay for it (its system time grew run after run).
                downloads.append(measure)
        measures += downloads
        pyspy = args.peers_venv / "bin" / "py-spy"
        if args.profile and pyspy.exists():
            argv = [str(TOOL), "restore", "--cache", str(cache), "--to", str(work / "profiled")]
            raw = args.out.with_suffix(".profile.txt")
            profiled = profile(argv, tool_env(), pyspy, raw, args.timeout, gil=True)
            notes.append(f"py-spy (GIL holder) of a second download run: {raw}")
            notes += [
                f"  own {own:4.1f}%  total {total:4.1f}%  {frame}"
                for frame, own, total in profiled.get("top", [])
            ]
    finally:
        if proxy is not None:
            proxy.stop()
        server.stop()
        spawner.stop()
    by_tool: dict[str, list[float]] = {}
    for m in downloads:
        if m.ok and checks.get(id(m)):
            by_tool.setdefault(m.tool, []).append(m.wall)
    medians = {tool: statistics.median(walls) for tool, walls in by_tool.items()}
    peers = {tool: wall for tool, wall in medians.items() if tool != "matricula-backup"}
    faster = min(peers, key=peers.__getitem__) if peers else None
    lines = [
        f"Restore of {args.files:,} x {args.small_kib} KiB ({args.per_dir} per folder), "
        f"{server.version or args.server} "
        f"behind proxy.py with {args.delay_ms:g} ms per request, {args.workers} workers / "
        f"concurrent requests for every tool; {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, "
        f"{platform.node()}, load average {os.getloadavg()[0]:.1f} at the end.",
        "",
        "    " + " ".join(sys.argv),
        "",
        "| run | tool | wall s | CPU s | server CPU s | proxy CPU s | peak RSS MiB "
        "| S3 requests | first request s | last answer to exit s | mean in flight "
        "| copy complete |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in measures:
        check = checks.get(id(m))
        lines.append(
            f"| {m.name} | {m.tool} | {m.wall:.1f} | {m.cpu:.1f} | {m.server_cpu:.1f} | "
            f"{m.proxy_cpu:.1f} | {m.rss_mib:.0f} | "
            f"{m.total_requests:,}: {_fmt_requests(m.requests)} | "
            f"{_fmt_seconds(m.first_request)} | {_fmt_seconds(m.after_last)} | "
            f"{'' if m.in_flight is None else f'{m.in_flight:.1f}'} | "
            f"{'' if check is None else ('yes' if check else 'NO')}"
            f"{' (' + m.note + ')' if m.note else ''} |"
        )
    if faster is not None and "matricula-backup" in medians:
        ours = medians["matricula-backup"]
        ratio = ours / peers[faster]
        rounds = f"median of {args.repeat} rounds" if args.repeat > 1 else "one round"
        lines += [
            "",
            f"matricula-backup restore / faster peer ({faster}), {rounds}: "
            f"{ours:.1f} s / {peers[faster]:.1f} s = **{ratio:.2f}** "
            f"(target <= 1.0: {'met' if ratio <= 1.0 else 'NOT met'}); the version "
            f"listing alone (the dry run) takes {listing.wall:.1f} s: the download run "
            "lists while it downloads",
        ]
    lines += [f"note: {note}" for note in notes]
    report = "\n".join(lines) + "\n"
    args.out.write_text(report)
    print(report)
    shutil.rmtree(work, ignore_errors=True)


def _fmt_seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    main()
