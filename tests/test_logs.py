"""The log file shared by commands that run at once (a backup and a restore).

Two real processes log through ``matricula_backup.logs`` into one cache
directory while the log rotates under them (a small rotation size, set the
documented way: MATRICULA_BACKUP_LOG_MAX_BYTES); every line must arrive once,
whole, in order.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from matricula_backup.logs import LOG_BACKUPS, LOG_MAX_BYTES_ENV, LOG_NAME
from tests.conftest import Setup

LINES_EACH = 1500
ROTATE_AT = 60_000  # 2 x 1,500 lines of ~110 bytes: about 5 rotations, all kept
WRITER = """
import logging, pathlib, sys, time
from matricula_backup.logs import setup_logging
cache, name = pathlib.Path(sys.argv[1]), sys.argv[2]
setup_logging(cache)
(cache / f"ready-{name}").touch()
while len(list(cache.glob("ready-*"))) < 2:  # start together
    time.sleep(0.001)
log = logging.getLogger("writer")
for number in range(int(sys.argv[3])):
    log.info("writer %s line %05d %s", name, number, "x" * 40)
"""
LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \d+ INFO writer: writer ([AB]) line (\d{5}) x{40}$"
)


def _log_files(cache: Path) -> list[Path]:
    """Oldest first: .5 ... .1, then the current log."""
    rotated = sorted(cache.glob(f"{LOG_NAME}.*"), key=lambda p: -int(p.suffix[1:]))
    return [*rotated, cache / LOG_NAME]


def test_two_processes_share_the_log_across_rotations(tmp_path: Path) -> None:
    env = {**os.environ, LOG_MAX_BYTES_ENV: str(ROTATE_AT)}
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), name, str(LINES_EACH)], env=env
        )
        for name in ("A", "B")
    ]
    assert [writer.wait(timeout=120) for writer in writers] == [0, 0]

    files = _log_files(tmp_path)
    assert len(files) >= 4, "the log should have rotated several times"
    assert len(files) <= LOG_BACKUPS + 1
    seen: dict[str, list[int]] = {"A": [], "B": []}
    order: list[str] = []
    for path in files:
        assert path.stat().st_size <= ROTATE_AT
        assert path.stat().st_mode & 0o077 == 0
        for line in path.read_text().splitlines():
            match = LINE.match(line)
            assert match, f"cut or interleaved line in {path.name}: {line!r}"
            seen[match[1]].append(int(match[2]))
            order.append(match[1])
    switches = sum(1 for before, after in zip(order, order[1:], strict=False) if before != after)
    assert switches > 10, "the two writers did not run at the same time"
    # Every line once, and in the order it was written, across the rotated files.
    assert seen == {"A": list(range(LINES_EACH)), "B": list(range(LINES_EACH))}


def test_the_rotation_size_is_read_from_the_environment(setup: Setup) -> None:
    setup.file("Band/a.tif", b"a")
    setup.write_config(backup__folders=[str(setup.images / "Band")])

    for _ in range(3):
        assert setup.run("--dry-run", env={LOG_MAX_BYTES_ENV: "300"}).returncode == 0

    assert (setup.cache / f"{LOG_NAME}.1").exists()
    assert (setup.cache / LOG_NAME).stat().st_size <= 300 or (
        len((setup.cache / LOG_NAME).read_text().splitlines()) == 1  # one long line alone
    )
    bad = setup.run("--dry-run", env={LOG_MAX_BYTES_ENV: "ten"})
    assert bad.returncode == 0
    assert (
        f"{LOG_MAX_BYTES_ENV}='ten' is not a size in bytes" in (setup.cache / LOG_NAME).read_text()
    )
