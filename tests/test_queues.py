"""The queue SQL (queues.py) on an in-memory database: no S3, no subprocess.

The scan's tables are filled directly, as ``scan_folder`` fills them; each case
checks ``upload_queue`` and ``delete_queue``. A model in plain Python (what a
file's row and the scan say, what lies below something unreadable) checks the
SQL on random trees too.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from sqlalchemy import Connection, create_engine, event

from matricula_backup import queues
from matricula_backup.db.schema import BACKED_UP, FAILED, PENDING, files_table_ddl, metadata
from matricula_backup.scan import create_scan_tables

TABLE = "files_test"
SHA = b"\x01" * 32
FOLDER = "/images/test"
Row = tuple[str, int, int, str, bytes | None, int | None]  # path size mtime state sha uploaded


@pytest.fixture
def conn() -> Iterator[Connection]:
    engine = create_engine("sqlite://")
    try:
        with engine.connect() as connection:
            metadata.create_all(connection)  # folders, fixity_holds: the queue SQL reads them
            connection.exec_driver_sql(
                "INSERT INTO folders (path, bucket, table_name, created_at) "
                f"VALUES ('{FOLDER}', 'bucket', '{TABLE}', 0)"
            )
            for statement in files_table_ddl(TABLE):
                connection.exec_driver_sql(statement)
            create_scan_tables(connection)
            yield connection
    finally:
        engine.dispose()


def fill(
    conn: Connection,
    rows: list[Row],
    scanned: list[tuple[str, int, int]],
    unscanned: list[str] = (),  # type: ignore[assignment]
) -> None:
    if rows:
        conn.exec_driver_sql(
            f'INSERT INTO "{TABLE}" (path, size, mtime_ns, state, sha256, uploaded_at) '
            "VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )
    if scanned:
        conn.exec_driver_sql(
            "INSERT INTO temp.scan (path, size, mtime_ns) VALUES (?, ?, ?)", scanned
        )
    if unscanned:
        conn.exec_driver_sql(
            "INSERT INTO temp.unscanned (path) VALUES (?)", [(p,) for p in unscanned]
        )


def uploads(conn: Connection) -> dict[str, str]:
    return dict(
        conn.exec_driver_sql("SELECT path, reason FROM temp.upload_queue ORDER BY rowid").all()
    )


def deletes(conn: Connection) -> dict[str, int]:
    return dict(
        conn.exec_driver_sql("SELECT path, in_bucket FROM temp.delete_queue ORDER BY rowid").all()
    )


def backed_up(path: str, size: int = 10, mtime: int = 100) -> Row:
    return (path, size, mtime, BACKED_UP, SHA, 1_000)


def test_nothing_changed_gives_empty_queues(conn: Connection) -> None:
    fill(conn, [backed_up("a"), backed_up("d/b")], [("a", 10, 100), ("d/b", 10, 100)])
    sizes = queues.build_queues(conn, TABLE, bucket_exists=True)
    assert (sizes.uploads, sizes.deletes, sizes.forget, sizes.new) == (0, 0, 0, 0)
    assert uploads(conn) == {} and deletes(conn) == {}


def test_new_changed_touched_and_unconfirmed_files_are_uploaded(conn: Connection) -> None:
    fill(
        conn,
        [
            backed_up("bigger"),
            backed_up("touched"),
            backed_up("same"),
            ("pending", 10, 100, PENDING, None, None),
            ("failed", 10, 100, FAILED, None, None),
        ],
        [
            ("new", 5, 1),
            ("bigger", 11, 100),
            ("touched", 10, 200),
            ("same", 10, 100),
            ("pending", 10, 100),
            ("failed", 10, 100),
        ],
    )
    sizes = queues.build_queues(conn, TABLE, bucket_exists=True)
    assert uploads(conn) == {
        "bigger": "changed size",
        "failed": "retry after failed",
        "new": "new",
        "pending": "retry after pending",
        "touched": "changed mtime",
    }
    assert list(uploads(conn)) == sorted(uploads(conn))  # path order
    assert (sizes.uploads, sizes.new, sizes.changed) == (5, 1, 2)
    assert (sizes.checks, sizes.check_bytes) == (1, 10)  # touched: bytes compared first
    assert sizes.upload_bytes == 5 + 11 + 10 + 10 + 10
    assert deletes(conn) == {}


def test_vanished_files_are_deleted_or_forgotten(conn: Connection) -> None:
    fill(
        conn,
        [
            backed_up("kept"),
            backed_up("gone"),
            ("never-sent", 7, 1, PENDING, None, None),
        ],
        [("kept", 10, 100)],
    )
    sizes = queues.build_queues(conn, TABLE, bucket_exists=False)
    assert deletes(conn) == {"gone": 1, "never-sent": 0}
    assert (sizes.deletes, sizes.delete_bytes, sizes.forget) == (1, 10, 1)
    # Once the bucket exists an unconfirmed upload may have landed: deleted too.
    queues.build_queues(conn, TABLE, bucket_exists=True)
    assert deletes(conn) == {"gone": 1, "never-sent": 1}


def test_unreadable_file_is_not_deleted_but_its_neighbours_are(conn: Connection) -> None:
    fill(
        conn,
        [backed_up("d/locked"), backed_up("d/locked.bak"), backed_up("d/locked/x")],
        [],
        unscanned=["d/locked"],
    )
    queues.build_queues(conn, TABLE, bucket_exists=True)
    # An exact path: not a prefix of anything.
    assert deletes(conn) == {"d/locked.bak": 1, "d/locked/x": 1}


def test_unreadable_directories_protect_exactly_what_lies_below(conn: Connection) -> None:
    rows = [
        backed_up(path)
        for path in [
            "a/x",
            "a/b/y",
            "a.txt",
            "a0/z",
            "ab/w",
            "c/d/e/f",
            "c/d/g",
            "c/h",
            "c/d0",
            "z",
        ]
    ]
    fill(conn, rows, [("z", 10, 100)], unscanned=["a/", "c/d/e/", "c/d/", "c/d/e/f/"])
    queues.build_queues(conn, TABLE, bucket_exists=True)
    assert deletes(conn) == {"a.txt": 1, "a0/z": 1, "ab/w": 1, "c/d0": 1, "c/h": 1}


def test_an_unreadable_folder_deletes_nothing(conn: Connection) -> None:
    fill(conn, [backed_up("a"), backed_up("b/c")], [], unscanned=["", "b/"])
    sizes = queues.build_queues(conn, TABLE, bucket_exists=True)
    assert deletes(conn) == {} and sizes.deletes == 0


def test_comparing_batch_by_batch_gives_the_same_queues(conn: Connection) -> None:
    rows = [backed_up(f"f{i:03d}", mtime=i % 7) for i in range(200)]
    scanned = [(f"f{i:03d}", 10, i % 5) for i in range(0, 200, 2)] + [("new", 1, 1)]
    random.Random(1).shuffle(scanned)  # walk order is not path order
    fill(conn, rows, [])
    compare = queues.Compare(conn, TABLE)
    for start in range(0, len(scanned), 30):
        fill(conn, [], scanned[start : start + 30])
        compare(min(start + 30, len(scanned)))
    fill(conn, [], [("late", 2, 2)])  # after the last call: build_queues compares it
    batched = queues.build_queues(conn, TABLE, True, compare)
    got = uploads(conn), deletes(conn)
    at_once = queues.build_queues(conn, TABLE, True)
    assert (uploads(conn), deletes(conn)) == got
    assert batched == at_once
    assert "new" in got[0] and "late" in got[0] and len(got[1]) == 100


def test_a_dry_run_queue_is_in_walk_order_with_the_same_rows(conn: Connection) -> None:
    scanned = [("b/2", 1, 1), ("a", 1, 1), ("b/1", 1, 1), ("c", 1, 1)]  # walk order
    fill(conn, [backed_up("c", size=5)], scanned)
    counted = queues.build_queues(conn, TABLE, True, ordered=False)
    walk_order = list(uploads(conn))
    ordered = queues.build_queues(conn, TABLE, True)
    assert walk_order == ["b/2", "a", "b/1", "c"]
    assert list(uploads(conn)) == ["a", "b/1", "b/2", "c"]
    assert counted == ordered
    assert queues.changed_sample(conn, 5) == ["c"]


def _oracle(
    rows: list[Row], scanned: list[tuple[str, int, int]], unscanned: list[str]
) -> tuple[set[str], set[str]]:
    """What must be uploaded and deleted, by the rules in plain Python."""
    known = {row[0]: row for row in rows}
    up = {
        path
        for path, size, mtime in scanned
        if path not in known
        or known[path][3] != BACKED_UP
        or (known[path][1], known[path][2]) != (size, mtime)
    }
    seen = {path for path, _, _ in scanned}
    down = {path for path in known if path not in seen and not _below(path, unscanned)}
    return up, down


def _below(path: str, unscanned: list[str]) -> bool:
    """``path`` is an unreadable file or lies below an unreadable directory."""
    return any(
        path == u or ((u == "" or u.endswith("/")) and path.startswith(u)) for u in unscanned
    )


@pytest.mark.parametrize("seed", range(20))
def test_random_trees_match_the_rules(conn: Connection, seed: int) -> None:
    rng = random.Random(seed)
    names = ["a", "b", "a.b", "a0", "ab", "é", "a b"]

    def path() -> str:
        return "/".join(rng.choice(names) for _ in range(rng.randint(1, 4)))

    paths = {path() for _ in range(120)}
    # A directory and a file of the same name cannot both exist; keep it simple:
    # leaves only (no path is a prefix + '/' of another).
    # Sorted: the same trees in every process (a set's order follows the string hash).
    paths = sorted(p for p in paths if not any(q.startswith(p + "/") for q in paths))
    states = [BACKED_UP, BACKED_UP, BACKED_UP, PENDING, FAILED]
    rows: list[Row] = [
        (p, rng.randint(1, 3), rng.randint(1, 3), rng.choice(states), SHA, 1)
        for p in paths
        if rng.random() < 0.7
    ]
    dirs = {p.rsplit("/", 1)[0] + "/" for p in paths if "/" in p}
    unscanned = rng.sample(sorted(dirs), min(3, len(dirs))) + rng.sample(paths, 3)
    if seed == 0:
        unscanned.append("")
    # As the walk reports them: an entry is a row or unreadable, never both, and
    # nothing below a directory it could not list is a row.
    scanned = [
        (p, rng.randint(1, 3), rng.randint(1, 3))
        for p in paths
        if rng.random() < 0.7 and not _below(p, unscanned)
    ]
    fill(conn, rows, scanned, unscanned)
    queues.build_queues(conn, TABLE, bucket_exists=True)
    assert (set(uploads(conn)), set(deletes(conn))) == _oracle(rows, scanned, unscanned)


def test_the_unscanned_check_seeks_instead_of_scanning(conn: Connection) -> None:
    """Linear in rows + unreadable entries: an index lookup per row, no scan of them."""
    fill(conn, [backed_up("gone")], [], unscanned=["x", "d/"])
    queues.build_queues(conn, TABLE, bucket_exists=True)  # makes the tables and indexes
    plan = " | ".join(
        str(row[-1])
        for row in conn.exec_driver_sql(
            f"""EXPLAIN QUERY PLAN SELECT f.path FROM "{TABLE}" AS f
            WHERE NOT EXISTS (SELECT 1 FROM temp.scan AS s WHERE s.path = f.path)
              AND NOT EXISTS (SELECT 1 FROM temp.unscanned AS u WHERE u.path = f.path)
              AND NOT {queues._IN_UNREADABLE_DIR}"""
        ).all()
    )
    assert "SCAN u" not in plan and "SCAN s" not in plan and "SCAN d" not in plan, plan
    assert "SEARCH u" in plan and "SEARCH s" in plan and "SEARCH d" in plan, plan
    assert deletes(conn) == {"gone": 1}


def _scan_indexed(conn: Connection) -> bool:
    return bool(
        conn.exec_driver_sql(
            "SELECT count(*) FROM sqlite_temp_master WHERE name = 'ix_scan_path'"
        ).scalar_one()
    )


def test_only_unreadable_entries_unseen_needs_no_lookup_per_row(conn: Connection) -> None:
    """The share with many permission problems: what the scan did not see is exactly
    what it could not read, so the queue is empty without indexing the scan."""
    seen = [backed_up(f"ok/{i:03d}") for i in range(50)]
    locked = [backed_up(f"locked/{i:03d}") for i in range(20)]
    files = [backed_up(f"mixed/{i:03d}") for i in range(10)]
    fill(
        conn,
        seen + locked + files,
        [(row[0], 10, 100) for row in seen] + [("ok/new", 1, 1)],
        unscanned=["locked/", "locked/sub/"] + [row[0] for row in files] + ["mixed/never-row"],
    )
    sizes = queues.build_queues(conn, TABLE, bucket_exists=True)
    assert deletes(conn) == {} and sizes.deletes == 0 and sizes.forget == 0
    assert not _scan_indexed(conn)
    assert uploads(conn) == {"ok/new": "new"}


def test_counting_what_lies_below_unreadable_entries_seeks_the_key(conn: Connection) -> None:
    """One seek per unreadable entry (a range per directory), never a read of the rows."""
    fill(conn, [backed_up("a/x"), backed_up("b")], [], unscanned=["a/", "b", ""])
    queues._unscanned_dirs(conn)
    statements: list[str] = []

    def record(*args: object) -> None:
        statements.append(str(args[2]))

    event.listen(conn, "before_cursor_execute", record)
    try:
        queues._protected_rows(conn, TABLE)
    finally:
        event.remove(conn, "before_cursor_execute", record)
    assert len(statements) == 3
    for statement in statements:
        plan = " | ".join(
            str(row[-1]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}")
        )
        assert "SCAN f" not in plan and "SEARCH f USING PRIMARY KEY" in plan, plan
    ranged = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statements[0]}").all()
    assert any("path>? AND path<?" in str(row[-1]) for row in ranged), ranged


def test_a_vanished_file_next_to_unreadable_ones_is_still_deleted(conn: Connection) -> None:
    seen = [backed_up(f"ok/{i:03d}") for i in range(50)]
    locked = [backed_up(f"locked/{i:03d}") for i in range(20)]
    fill(
        conn,
        seen + locked + [backed_up("ok/gone"), backed_up("mixed/x")],
        [(row[0], 10, 100) for row in seen],
        unscanned=["locked/", "mixed/x"],
    )
    queues.build_queues(conn, TABLE, bucket_exists=True)
    assert deletes(conn) == {"ok/gone": 1}
    assert _scan_indexed(conn)


def test_adopting_a_listing_matches_objects_to_scanned_files(conn: Connection) -> None:
    fill(conn, [], [("same", 10, 5 * 10**9), ("other", 3, 5 * 10**9)])
    adopted = queues.adopt_listing(
        conn,
        TABLE,
        [
            [
                queues.ListedObject("same", 10, 6, "v1"),
                queues.ListedObject("other", 4, 6, "v2"),
                queues.ListedObject("gone", 1, 6, "v3"),
            ]
        ],
    )
    # A listing proves nothing about the bytes: no file on disk is recorded as backed up
    # from it; the one of the same size is checked against S3's own SHA-256 first.
    assert adopted == 0
    queues.build_queues(conn, TABLE, bucket_exists=True)
    assert uploads(conn) == {"other": "changed size", "same": "retry after pending"}
    checks = dict(conn.exec_driver_sql("SELECT path, check_bucket FROM temp.upload_queue").all())
    assert checks == {"other": 0, "same": 1}
    assert deletes(conn) == {"gone": 1}


def test_a_file_held_after_a_fixity_failure_is_not_uploaded(conn: Connection) -> None:
    """scrub found its bytes changed behind an unchanged size and mtime: held, so no run
    uploads it over the good copy, even once its mtime changes too."""
    fill(conn, [backed_up("held"), backed_up("other")], [("held", 10, 200), ("other", 10, 200)])
    conn.exec_driver_sql(
        "INSERT INTO fixity_holds (folder, path, good_sha256, size, mtime_ns, found_at, "
        f"found_sha256) VALUES ('{FOLDER}', 'held', ?, 10, 100, 1, ?)",
        (SHA, b"x" * 32),
    )
    queues.build_queues(conn, TABLE, bucket_exists=True)
    assert uploads(conn) == {"other": "changed mtime"}
