"""The host allocator setting (``SpeedConfig.allocator``, :mod:`adaptformer.allocator`) side by side.

The setting is process-wide and cannot be undone inside a process, so it cannot be interleaved case by case like the
other options: this script runs ``bench.py`` (every method and the forwards, one precision) in child processes,
alternating ``--allocator default`` and ``--allocator tuned``, ``--pairs`` times. It reports, per case, the median
over pairs of the time ratio tuned/default, the ratios the targets use under each setting, and each child's peak
resident memory (the cost of keeping freed memory: tensor peaks do not change).

    python benchmarks/allocator.py --pairs 3 --rounds 5 --json reports/bench/allocator_cpu.json --markdown
    python benchmarks/allocator.py --quick          # tiny models (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SETTINGS = ("default", "tuned")


def run_child(setting: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """One bench.py run with ``--allocator setting``; its report plus the child's peak RSS in MiB."""
    command = [sys.executable, str(HERE / "bench.py"), "--only", "image", "--precisions", args.precision]
    command += ["--allocator", setting, "--no-memory", "--json", str(out), "--rounds", str(args.rounds)]
    command += ["--quick"] if args.quick else []
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed with exit code {process.returncode}")
    report = json.loads(out.read_text())
    suite = report["suites"][0]
    if suite["speed"].get("allocator") != setting:
        raise RuntimeError(f"child asked for allocator {setting!r} ran with {suite['speed'].get('allocator')!r}")
    return {"suite": suite, "max_rss_mib": usage.ru_maxrss / 1024, "machine": report["machine"]}


def compare(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per-case tuned/default time ratios (median over pairs), target ratios per setting, peak RSS per setting."""
    cases = list(runs["default"][0]["suite"]["results"])
    per_case = {}
    for case in cases:
        ratios = [
            t["suite"]["results"][case]["median_s"] / d["suite"]["results"][case]["median_s"]
            for d, t in zip(runs["default"], runs["tuned"], strict=True)
        ]
        per_case[case] = {
            "default_median_s": statistics.median(r["suite"]["results"][case]["median_s"] for r in runs["default"]),
            "tuned_median_s": statistics.median(r["suite"]["results"][case]["median_s"] for r in runs["tuned"]),
            "tuned/default": statistics.median(ratios),
        }
    keys = list(runs["default"][0]["suite"]["ratios"])
    within = {
        setting: {key: statistics.median(r["suite"]["ratios"][key]["time"] for r in runs[setting]) for key in keys}
        for setting in SETTINGS
    }
    rss = {setting: statistics.median(r["max_rss_mib"] for r in runs[setting]) for setting in SETTINGS}
    return {"cases": per_case, "ratios": within, "max_rss_mib": rss}


def to_markdown(report: dict[str, Any]) -> str:
    result = report["result"]
    lines = [
        f"Command: `{report['command']}` ({report['pairs']} pairs of child runs, {report['rounds']} rounds each)",
        "",
        "| case | default: median (s) | tuned: median (s) | tuned/default (median over pairs) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for case, r in result["cases"].items():
        lines.append(f"| {case} | {r['default_median_s']:.3f} | {r['tuned_median_s']:.3f} | {r['tuned/default']:.3f} |")
    lines += ["", "| ratio (median over runs) | default | tuned |", "| --- | ---: | ---: |"]
    for key in result["ratios"]["default"]:
        lines.append(f"| {key} | {result['ratios']['default'][key]:.3f} | {result['ratios']['tuned'][key]:.3f} |")
    rss = result["max_rss_mib"]
    lines += [
        "",
        f"Peak resident memory of a child run: default {rss['default']:.0f} MiB, tuned {rss['tuned']:.0f} MiB.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=None, help="child runs per setting, alternating (default 3, quick 1)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds per child (default 5, quick 2)")
    p.add_argument("--precision", default="bf16", help="autocast precision: fp32 or bf16")
    p.add_argument("--quick", action="store_true", help="tiny models (CI: checks that the script works)")
    p.add_argument("--json", type=Path, help="write the report as JSON to this file")
    p.add_argument("--markdown", action="store_true", help="print the report as markdown tables")
    args = p.parse_args(argv)
    args.pairs = args.pairs if args.pairs is not None else (1 if args.quick else 3)
    args.rounds = args.rounds if args.rounds is not None else (2 if args.quick else 5)
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SETTINGS}
    with tempfile.TemporaryDirectory(prefix="bench-allocator-") as tmp:
        for pair in range(args.pairs):
            for setting in SETTINGS:
                runs[setting].append(run_child(setting, args, Path(tmp) / f"{setting}-{pair}.json"))
                print(f"pair {pair + 1}/{args.pairs}: {setting} done", flush=True)
    command = "python benchmarks/allocator.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    report = {
        "command": command.strip(),
        "machine": runs["default"][0]["machine"],
        "pairs": args.pairs,
        "rounds": args.rounds,
        "precision": args.precision,
        "backbone": runs["default"][0]["suite"]["backbone"],
        "result": compare(runs),
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        print(to_markdown(report))
    return report


if __name__ == "__main__":
    main()
