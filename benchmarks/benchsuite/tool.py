"""matricula-backup under test: its environment, config, state.db priming."""

from __future__ import annotations

import compileall
import functools
import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from .common import KEY, REGION, SECRET, TOOL
from .measure import Runner

# --- matricula-backup ------------------------------------------------------------------------


def tool_env() -> dict[str, str]:
    """The tool gets its S3 settings from config.json only, as in the tests.

    Its modules are byte-compiled first, as ``pip install`` leaves them: in an
    editable install with PYTHONDONTWRITEBYTECODE set (as on these machines),
    every run would compile them again (~4% of a restore run's samples).
    """
    _compile_tool()
    return {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}


@functools.cache
def _compile_tool() -> None:
    import matricula_backup

    compileall.compile_dir(Path(matricula_backup.__file__).parent, quiet=1)


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
