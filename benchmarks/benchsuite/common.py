"""Paths, names and constants shared by the benchmark modules."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent  # benchmarks/
REPO = HERE.parent
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
