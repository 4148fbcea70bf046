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
import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import HERE, TOOL
from .report import render
from .run import run_benchmark


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
