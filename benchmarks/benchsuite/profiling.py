"""py-spy profiles of the tool, grouped by phase."""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

# --- profiling -------------------------------------------------------------------------------


# Where a sample's time goes, by the first of these found in its stack.
PHASES = [
    ("scan: walk + INSERT into temp.scan", ("scan_folder (scan.py",)),
    ("queues: set differences (build_queues)", ("build_queues (queues.py",)),
    ("apply_scan (mark pending)", ("apply_scan (queues.py",)),
    ("S3 client creation (boto3 session, models)", ("connect (client.py",)),
    ("bucket listing + adopt_listing", ("adopt_listing (", "list_latest (")),
    ("uploads / deletes (worker)", ("upload_all (", "delete_all (", "upload (upload.py")),
    ("open state.db, migrations", ("open_state_db", "upgrade (engine.py")),
    ("imports (interpreter start)", ("_find_and_load (",)),
]


# Where the CPU of an upload goes (GIL samples), by the first of these in the stack,
# innermost frames first.
UPLOAD_PARTS = [
    ("read + SHA-256 of the file (upload in s3/upload.py, C code)", ("upload (upload.py)",), True),
    (
        "SigV4 signing",
        ("SigV4Auth", "add_auth (auth.py)", "RequestSigner.sign (signers.py)"),
        False,
    ),
    ("endpoint resolution (rules engine)", ("endpoint_provider", "EndpointRulesetResolver"), False),
    ("request serialization", ("serialize_to_request", "_convert_to_request_dict"), False),
    ("response parsing (XML, headers)", ("parsers.py)",), False),
    ("HTTP send/receive (urllib3, http.client)", ("urlopen (connectionpool.py)",), False),
    ("other botocore event handlers", ("_emit (hooks.py)",), False),
    ("other botocore client call", ("_make_api_call (client.py)",), False),
    ("main thread: pool, futures, recording", ("upload_all (worker.py)",), False),
]


def profile(
    argv: list[str], env: dict[str, str], pyspy: Path, out: Path, timeout: float, gil: bool
) -> dict[str, Any]:
    """py-spy record (raw, collapsed stacks) of one command: time by phase and by function.

    With ``gil``, only the thread holding the GIL is sampled: where the Python CPU
    time of a multi-threaded run goes (threads waiting for S3 are left out).
    """
    command = [str(pyspy), "record", "--rate", "250", "--format", "raw", "-o", str(out)]
    command += ["--gil", "--"] if gil else ["--"]
    try:
        subprocess.run([*command, *argv], env=env, capture_output=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return {}
    if not out.exists():
        return {}
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    phases: Counter[str] = Counter()
    parts: Counter[str] = Counter()
    samples = 0
    for line in out.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        try:
            count = int(count_text)
        except ValueError:
            continue
        frames = [_short(frame) for frame in stack.split(";") if frame]
        if not frames:
            continue
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
        joined = ";".join(frames)
        phase = next((name for name, marks in PHASES if any(m in joined for m in marks)), "other")
        phases[phase] += count
        part = "other"
        for name, marks, own_only in UPLOAD_PARTS:
            hay = frames[-1] if own_only else joined
            if any(m in hay for m in marks):
                part = name
                break
        parts[part] += count
    if not samples:
        return {}
    return {
        "raw": str(out),
        "gil": gil,
        "samples": samples,
        "seconds_sampled": samples / 250,
        "phases": [(name, 100 * n / samples) for name, n in phases.most_common()],
        "parts": [(name, 100 * n / samples) for name, n in parts.most_common()],
        "top": [
            (frame, 100 * own[frame] / samples, 100 * total[frame] / samples)
            for frame, _ in own.most_common(12)
        ],
    }


def _short(frame: str) -> str:
    # "function (path/to/module.py:123)" -> "function (module.py)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({where.rsplit('/', 1)[-1]})" if where else name
