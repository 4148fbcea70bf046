"""The generated test tree: its spec, contents, reuse, mutations and touches."""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .common import TREE_FORMAT, MiB

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
