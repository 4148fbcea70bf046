"""The markdown report of one benchmark result."""

from __future__ import annotations

from typing import Any

from .common import MiB
from .measure import Measure

# --- the report ------------------------------------------------------------------------------


def _fmt_requests(requests: dict[str, int]) -> str:
    if not requests:
        return "0"
    return ", ".join(f"{op} {n}" for op, n in sorted(requests.items(), key=lambda x: -x[1]))


def _mib(size: int | None) -> str:
    return "" if size is None else f"{size / MiB:.1f} MiB"


def _verdict(check: dict[str, Any]) -> str:
    if check["ok"] is None or check["check"].split(":")[0] in ("rclone", "aws", "s5cmd"):
        return "reported"  # a peer's behaviour, not a target of ours
    return "ok" if check["ok"] else "**NOT MET**"


def render(result: dict[str, Any]) -> str:
    m = [
        Measure(**{k: v for k, v in x.items() if k != "total_requests"}) for x in result["measures"]
    ]
    tree = result["tree"]
    args = result["args"]
    lines = [f"## {result['label']}", ""]
    lines.append(
        "Command: `"
        + " ".join(
            [
                ".venv/bin/python benchmarks/bench.py",
                f"--files {args['files']}",
                f"--large {args['large']}",
                f"--server {args['server']}",
                f"--delay-ms {args['delay_ms']:g}",
            ]
            + ([f"--large-mib {args['large_mib']}"] if args.get("large_mib", 30) != 30 else [])
            + ([f"--bandwidth-mib {args['bandwidth_mib']:g}"] if args.get("bandwidth_mib") else [])
            + ([f"--workers {args['workers']}"] if args.get("workers", 16) != 16 else [])
            + (
                [f"--peers {','.join(args['peers'])}"]
                if args.get("peers") and args["peers"] != ["rclone", "aws", "s5cmd"]
                else []
            )
            + ([f"--tree-dir {args['tree_dir']}"] if args.get("tree_dir") else [])
            + (["--peers ''"] if not args.get("peers") else [])
            + ([f"--repeat {args['repeat']}"] if args.get("repeat", 3) != 3 else [])
            + (["--first-upload-only"] if args.get("first_upload_only") else [])
            + (["--scan-only"] if args.get("scan_only") else [])
            + (
                [f"--unreadable-files {args['unreadable_files']}"]
                if args.get("unreadable_files")
                else []
            )
            + (["--profile"] if args.get("profile") else [])
            + (["--delete-tree"] if args.get("delete_tree") else [])
        )
        + "`"
    )
    lines += ["", "| machine | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in result.get("machine", {}).items()]
    origin = "reused" if tree["reused"] else f"generated in {tree['generated_in_s']:.0f} s"
    total_bytes = (
        tree["small_files"] * tree["small_kib"] * 1024
        + tree["large_files"] * tree["large_mib"] * MiB
    )
    lines += [
        "",
        f"Tree: {tree['files']:,} files ({tree['small_files']:,} x {tree['small_kib']} KiB"
        f" + {tree['large_files']} x {tree['large_mib']} MiB = {total_bytes / MiB:,.0f} MiB) "
        f"in folders of {tree['per_dir']} files, at `{tree['path']}` "
        f"({origin}"
        "; warm page cache). "
        f"Server: {result.get('machine', {}).get('S3 server', args['server'])}, peak RSS "
        f"{result.get('server_peak_rss_mib', 0):,.0f} MiB; proxy delay "
        f"{args['delay_ms']:g} ms per request"
        + (
            f", {args['bandwidth_mib']:g} MiB/s per connection and direction"
            if args.get("bandwidth_mib")
            else ""
        )
        + f"; concurrency {args['workers']} for every tool "
        f"(matricula-backup `backup.workers`, rclone `--transfers/--checkers`, aws "
        f"`max_concurrent_requests`, s5cmd `--numworkers`). Wall, CPU (user+sys) and peak RSS "
        f"are those of the measured process alone (os.wait4; started from a "
        f"{result.get('rss_floor_mib', 0):.0f} MiB launcher, the floor of the RSS column); "
        f"S3 requests are counted by the proxy.",
        "",
    ]
    lines += [
        "| run | tool | wall s | CPU s | peak RSS MiB | server CPU s | proxy CPU s | "
        "S3 requests | by operation | state.db | bytes/file | notes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for x in m:
        per_file = f"{x.state_db / x.files:.0f}" if x.state_db and x.files else ""
        note = x.note
        if len(x.repeats) > 1:
            note = (
                f"median of {len(x.repeats)}: "
                + "/".join(f"{w:.2f}" for w in x.repeats)
                + (f"; {note}" if note else "")
            )
        if not x.ok:
            note = f"**FAILED** {note}"
        requests = x.total_requests if x.tool not in ("python", "find") else ""
        by_op = _fmt_requests(x.requests) if x.tool not in ("python", "find") else ""
        lines.append(
            f"| {x.name} | {x.tool} | {x.wall:.2f} | {x.cpu:.2f} | {x.rss_mib:.0f} | "
            f"{x.server_cpu:.1f} | {x.proxy_cpu:.1f} | "
            f"{requests} | {by_op} | {_mib(x.state_db)} | {per_file} | {note} |"
        )

    def find(name: str, tool: str) -> Measure | None:
        return next((x for x in m if x.name == name and x.tool == tool), None)

    walk = find("bare walk (scandir+stat)", "python")
    findm = find("find -printf '%s %T@'", "find")
    dry = find("dry run, empty cache (first scan)", "matricula-backup")
    nochange = find("no change", "matricula-backup")
    first = find("first upload", "matricula-backup")
    lines += ["", "| ratio | value |", "|---|---:|"]
    if walk and nochange:
        lines.append(f"| our no-change / bare walk (wall) | {nochange.wall / walk.wall:.2f}x |")
    if walk and dry:
        lines.append(
            f"| our first scan (dry run) / bare walk (wall) | {dry.wall / walk.wall:.2f}x |"
        )
    if findm and nochange:
        lines.append(f"| our no-change / find (wall) | {nochange.wall / findm.wall:.2f}x |")
    if first:
        fastest = [
            x for x in (find("first upload", "rclone"), find("first upload", "s5cmd")) if x and x.ok
        ]
        if fastest:
            best = min(fastest, key=lambda x: x.wall)
            lines.append(
                f"| our first upload / fastest of rclone and s5cmd ({best.tool}, "
                f"{best.wall:.1f} s) | {first.wall / best.wall:.2f}x |"
            )
        aws = find("first upload", "aws")
        if aws and aws.ok:
            lines.append(f"| our first upload / aws s3 sync | {first.wall / aws.wall:.2f}x |")
    if nochange and nochange.state_db and nochange.files:
        db_per_file = nochange.state_db / nochange.files
        lines.append(f"| state.db bytes per file | {db_per_file:.0f} |")
        lines.append(f"| state.db projected for 10M files | {db_per_file * 10e6 / 1e9:.2f} GB |")

    tools = []
    for x in m:
        if x.tool not in ("python", "find") and x.tool not in tools:
            tools.append(x.tool)
    runs = []
    for x in m:
        if x.tool not in ("python", "find") and x.name not in runs:
            runs.append(x.name)
    if len(tools) > 1:
        lines += [
            "",
            "S3 requests per run and tool (total; PUT object + multipart uploads "
            "started in brackets):",
            "",
            "| run | " + " | ".join(tools) + " |",
            "|---|" + "---:|" * len(tools),
        ]
        for name in runs:
            cells = []
            for tool in tools:
                cell = find(name, tool)
                if cell is None:
                    cells.append("")
                else:
                    ups = cell.requests.get("PUT object", 0) + cell.requests.get("POST uploads", 0)
                    cells.append(f"{cell.total_requests} ({ups})" + ("" if cell.ok else " FAILED"))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if result["checks"]:
        lines += ["", "| check | result | detail |", "|---|---|---|"]
        for check in result["checks"]:
            lines.append(f"| {check['check']} | {_verdict(check)} | {check['detail']} |")
    for label, prof in result.get("profiles", {}).items():
        if not prof:
            continue
        lines += [
            "",
            f"py-spy profile of matricula-backup, {label} ({prof['samples']} samples at "
            f"250 Hz = {prof['seconds_sampled']:.1f} s"
            + (" holding the GIL" if prof.get("gil") else " of active threads")
            + "), by phase:",
            "",
            "| phase | % of samples |",
            "|---|---:|",
        ]
        lines += [f"| {name} | {share:.1f} |" for name, share in prof["phases"]]
        if prof.get("gil") and prof.get("parts"):
            lines += ["", "by part of an upload:", "", "| part | % of samples |", "|---|---:|"]
            lines += [f"| {name} | {share:.1f} |" for name, share in prof["parts"]]
        lines += ["", "by function:", "", "| function | own % | total % |", "|---|---:|---:|"]
        lines += [f"| `{frame}` | {own:.1f} | {total:.1f} |" for frame, own, total in prof["top"]]
    if result["notes"]:
        lines += [""] + [f"- {note}" for note in result["notes"]]
    lines.append("")
    return "\n".join(lines)
