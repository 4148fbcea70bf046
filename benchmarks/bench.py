"""Benchmark of issue #4: matricula-backup against a bare walk and against rclone,
aws, s5cmd. The code lives in the package benchmarks/benchsuite/ (one module per
stage; usage and options: benchmarks/benchsuite/cli.py or ``--help``); this
script is its entry point, and multipart.py and restore.py import its parts
from here:

    .venv/bin/python benchmarks/bench.py --files 20000 --large 10 --server seaweedfs --delay-ms 20
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from benchsuite.cli import main, run_and_report  # noqa: E402
from benchsuite.common import KEY, REGION, SECRET, TOOL  # noqa: E402
from benchsuite.measure import Measure, Runner, Spawner  # noqa: E402
from benchsuite.peers import install_peers, peers_env  # noqa: E402
from benchsuite.report import _fmt_requests  # noqa: E402
from benchsuite.run import machine_info  # noqa: E402
from benchsuite.server import Server  # noqa: E402
from benchsuite.tool import tool_env, write_config  # noqa: E402
from benchsuite.tree import TreeSpec, ensure_tree  # noqa: E402

__all__ = [
    "KEY",
    "REGION",
    "SECRET",
    "TOOL",
    "Measure",
    "Runner",
    "Server",
    "Spawner",
    "TreeSpec",
    "_fmt_requests",
    "ensure_tree",
    "install_peers",
    "machine_info",
    "main",
    "peers_env",
    "run_and_report",
    "tool_env",
    "write_config",
]

if __name__ == "__main__":
    main()
