"""Measuring one command: wall, CPU and peak RSS of the process alone (os.wait4), S3 requests."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testkit.proxy import S3Proxy

# --- measurements ----------------------------------------------------------------------------


@dataclass
class Measure:
    name: str  # e.g. "first upload"
    tool: str  # bare walk | find | matricula-backup | rclone | aws | s5cmd
    wall: float = 0.0
    cpu: float = 0.0  # user+sys of the child
    rss_mib: float = 0.0  # ru_maxrss of the child
    rc: int | None = None
    requests: dict[str, int] = field(default_factory=dict)
    server_cpu: float = 0.0  # CPU of the S3 server process meanwhile
    proxy_cpu: float = 0.0  # CPU of this process (the proxy) meanwhile
    state_db: int | None = None  # bytes of state.db (+ WAL) after the run
    files: int = 0
    repeats: list[float] = field(default_factory=list)  # wall times of all repeats
    # From the proxy's spans: seconds from the start to the first request, from the
    # last answer to the exit, and the mean of requests in flight between the two.
    first_request: float | None = None
    after_last: float | None = None
    in_flight: float | None = None
    note: str = ""
    stdout: str = ""
    stderr: str = ""
    ok: bool = True

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())


def _timeline(
    measure: Measure, spans: list[tuple[float, float]], started: float, ended: float
) -> None:
    """Where a run's wall time went, from the proxy's (began, answered) spans of its
    requests (time.monotonic(), the same clock in the helper and in the proxy)."""
    if not spans:
        return
    first = min(began for began, _ in spans)
    last = max(answered for _, answered in spans)
    measure.first_request = first - started
    measure.after_last = ended - last
    if last > first:
        measure.in_flight = sum(answered - began for began, answered in spans) / (last - first)


def _cpu_of_pid(pid: int | None) -> float:
    if not pid:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    # fields[0] is the state (3rd field): utime, stime, cutime, cstime are 14-17.
    return sum(int(x) for x in fields[11:15]) / ticks


# Children are started by this small helper process, not by the benchmark itself:
# Linux counts the memory of the process a child was forked from in the child's
# ru_maxrss (the high-water mark of the forked copy survives exec). The helper is
# a bare ``python -S`` of a few MiB, so a child's peak RSS is its own (or that
# floor, reported in the results).
SPAWNER_CODE = r"""
import json, os, signal, sys, threading, time
print(json.dumps({"ready": os.getpid()}), flush=True)
for line in sys.stdin:
    job = json.loads(line)
    actions = [(os.POSIX_SPAWN_OPEN, 1, job["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
               (os.POSIX_SPAWN_OPEN, 2, job["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
               (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0)]
    start, started = time.perf_counter(), time.monotonic()
    try:
        pid = os.posix_spawnp(job["argv"][0], job["argv"], job["env"], file_actions=actions,
                              setsid=True)
    except OSError as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        continue
    print(json.dumps({"pid": pid}), flush=True)
    killed = []
    def kill(pid=pid):
        killed.append(1)
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    timer = threading.Timer(job["timeout"], kill)
    timer.start()
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    ended = time.monotonic()
    timer.cancel()
    print(json.dumps({"wall": wall, "started": started, "ended": ended,
                      "cpu": usage.ru_utime + usage.ru_stime, "maxrss_kib": usage.ru_maxrss,
                      "rc": os.waitstatus_to_exitcode(status), "killed": bool(killed)}), flush=True)
"""


class Spawner:
    """The helper process that starts and measures every command (see SPAWNER_CODE)."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-S", "-c", SPAWNER_CODE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None and self.process.stdin is not None
        self.pid = json.loads(self.process.stdout.readline())["ready"]
        self.current: int | None = None  # the command running now

    def floor_mib(self) -> float:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def run(
        self, argv: list[str], env: dict[str, str], out: str, err: str, timeout: float
    ) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        job = {"argv": argv, "env": env, "out": out, "err": err, "timeout": timeout}
        self.process.stdin.write(json.dumps(job) + "\n")
        self.process.stdin.flush()
        answer: dict[str, Any] = json.loads(self.process.stdout.readline())
        if "pid" not in answer:
            return answer  # could not start
        self.current = int(answer["pid"])
        answer = json.loads(self.process.stdout.readline())
        self.current = None
        return answer

    def stop(self) -> None:
        """End the helper; a command still running (the benchmark was stopped) is killed."""
        if self.current is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.current, signal.SIGKILL)
        assert self.process.stdin is not None
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)


class Runner:
    """Runs one command at a time and measures it (wall, rusage, proxy counts)."""

    def __init__(
        self,
        proxy: S3Proxy | None,
        server_pid: int | None,
        log_dir: Path,
        timeout: float,
        spawner: Spawner,
    ) -> None:
        self.proxy = proxy
        self.server_pid = server_pid
        self.log_dir = log_dir
        self.timeout = timeout
        self.spawner = spawner
        self.count = 0

    def run(
        self,
        name: str,
        tool: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        ok_codes: tuple[int, ...] = (0,),
    ) -> Measure:
        self.count += 1
        stem = self.log_dir / f"{self.count:03d}-{tool}-{name.replace(' ', '_').replace('/', '_')}"
        if self.proxy is not None:
            time.sleep(0.05)  # let a previous client's last response leave the proxy
            self.proxy.reset_counts()
        server0 = _cpu_of_pid(self.server_pid)
        self0 = resource.getrusage(resource.RUSAGE_SELF)
        answer = self.spawner.run(
            argv,
            dict(os.environ if env is None else env),
            f"{stem}.out",
            f"{stem}.err",
            self.timeout,
        )
        if "error" in answer:
            print(f"  {tool:16s} {name:32s} cannot start: {answer['error']}", flush=True)
            return Measure(name, tool, rc=None, ok=False, note=f"cannot start: {answer['error']}")
        self1 = resource.getrusage(resource.RUSAGE_SELF)
        measure = Measure(
            name,
            tool,
            wall=answer["wall"],
            cpu=answer["cpu"],
            rss_mib=answer["maxrss_kib"] / 1024,
            rc=answer["rc"],
            server_cpu=_cpu_of_pid(self.server_pid) - server0,
            proxy_cpu=(self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime),
        )
        if self.proxy is not None:
            time.sleep(0.05)
            measure.requests = self.proxy.snapshot()
            _timeline(measure, self.proxy.spans_snapshot(), answer["started"], answer["ended"])
        measure.stdout = Path(f"{stem}.out").read_text(errors="replace")[-4000:]
        measure.stderr = Path(f"{stem}.err").read_text(errors="replace")[-4000:]
        if answer["killed"]:
            measure.ok = False
            measure.note = f"killed after the {self.timeout:.0f} s timeout"
        elif measure.rc not in ok_codes:
            measure.ok = False
            measure.note = f"exit code {measure.rc}"
        print(
            f"  {tool:16s} {name:32s} {measure.wall:8.2f} s  cpu {measure.cpu:7.2f} s  "
            f"rss {measure.rss_mib:7.1f} MiB  rc {measure.rc}  "
            f"requests {measure.total_requests}",
            flush=True,
        )
        if measure.in_flight is not None:
            print(
                f"    first request after {measure.first_request:.2f} s, last answer "
                f"{measure.after_last:.2f} s before the exit, {measure.in_flight:.1f} "
                "requests in flight on average between",
                flush=True,
            )
        if not measure.ok:
            print(f"    ! {measure.note}: {measure.stderr.strip()[-800:]}", flush=True)
        return measure

    def repeat(
        self,
        times: int,
        name: str,
        tool: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        ok_codes: tuple[int, ...] = (0,),
    ) -> Measure:
        """The median run (by wall time) of ``times`` runs; all wall times kept."""
        runs = [self.run(name, tool, argv, env, ok_codes) for _ in range(max(1, times))]
        ordered = sorted(runs, key=lambda m: m.wall)
        median = ordered[(len(ordered) - 1) // 2]
        median.repeats = [m.wall for m in runs]
        if not all(m.ok for m in runs):
            median.ok = False
            median.note = "; ".join(m.note for m in runs if m.note)
        # Requests must be the same in every repeat; keep the largest count seen.
        most = max(runs, key=lambda m: m.total_requests)
        if most.total_requests != median.total_requests:
            median.note += f"; a repeat made {most.total_requests} requests"
            median.requests = most.requests
        return median
