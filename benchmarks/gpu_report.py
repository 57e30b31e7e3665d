"""The report of ``benchmarks/gpu_check.sh``: its steps' own JSON files and exit statuses folded into one
``gpu_check.json`` and one markdown table (``gpu_check.md``), in the folder the steps wrote to.

    python benchmarks/gpu_report.py reports/gpu_check

A step that failed or was stopped by its time limit is reported with its exit status and the end of its log; the
numbers of the others still appear.
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

STEPS = ("cuda_tests", "train_step", "segmentation_step", "multitask", "serve_load")
TIMED_OUT = (124, 137)  # timeout(1)'s status, and a KILL after it


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _status(out: Path, step: str) -> dict[str, Any]:
    status = _read_json(out / f"{step}.status.json") or {"exit": None, "seconds": None}
    log = out / f"{step}.log"
    ok = status["exit"] == 0 or (step == "cuda_tests" and status["exit"] == 5)  # 5: pytest collected no test
    status["state"] = "ok" if ok else "timed out" if status["exit"] in TIMED_OUT else "not run" if status[
        "exit"] is None else "failed"  # fmt: skip
    if status["state"] != "ok" and log.is_file():
        status["log_tail"] = log.read_text(errors="replace")[-2000:]
    return status


def _cuda_tests(out: Path) -> dict[str, Any] | None:
    path = out / "cuda_tests.xml"
    if not path.is_file():
        return None
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    assert suite is not None
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    counts["failed"] = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
                        if c.find("failure") is not None or c.find("error") is not None]  # fmt: skip
    return counts


def _train_step(report: dict[str, Any] | None) -> dict[str, Any] | None:
    if not report or not report.get("suites"):
        return None
    suite = report["suites"][0]
    results = suite["results"]
    main = suite["adaptformer"]
    row = {"backbone": suite["backbone"], "batch": suite["batch"], "precision": suite["precision"], "adaptformer": main,
           "device": report["machine"].get("device"), "methods": {}}  # fmt: skip
    for name, r in results.items():
        row["methods"][name] = {k: r.get(k) for k in ("median_s", "samples_per_s", "peak_memory_mib", "kind")}
    ratio = suite.get("ratios", {}).get(f"{main}/full")
    if ratio is not None:
        row["adaptformer_vs_full"] = {"time": ratio.get("time"), "memory": ratio.get("memory")}
    return row


def _segmentation_step(report: dict[str, Any] | None) -> dict[str, Any] | None:
    if not report or not report.get("results"):
        return None
    keep = ("median_s", "samples_per_s", "peak_memory_mib", "trainable_params")
    return {
        "shape": report["shape"],
        "device": report["machine"].get("device"),
        "methods": {name: {k: r.get(k) for k in keep} for name, r in report["results"].items()},
        "adaptformer_vs_full": report["ratios"].get("adaptformer-64/full"),
        "gemm_floor": report["gemm_floor"].get("floor"),
        "sliding_eval_images_per_s": report["sliding_eval"].get("images_per_s"),
    }


def collect(out: Path, expect_cuda: bool = False) -> dict[str, Any]:
    """The report of the steps in ``out``; ``expect_cuda``: the CUDA tests must have run (on a GPU machine a skipped
    or missing one means the check did not happen, which is not "ok")."""
    train = _read_json(out / "train_step.json")
    segmentation = _read_json(out / "segmentation_step.json")
    multitask = _read_json(out / "multitask.json")
    serve = _read_json(out / "serve_load.json")
    steps = {step: _status(out, step) for step in STEPS}
    tests = _cuda_tests(out)
    if expect_cuda and steps["cuda_tests"]["state"] == "ok" and (not tests or tests["skipped"] or not tests["passed"]):
        steps["cuda_tests"]["state"] = "no CUDA test ran"
    return {
        "machine": (train or {}).get("machine") or (multitask or {}).get("machine"),
        "steps": steps,
        "cuda_tests": tests,
        "train_step": _train_step(train),
        "segmentation_step": _segmentation_step(segmentation),
        "multitask": multitask and {k: multitask[k] for k in ("backbone", "batch", "precision", "results")},
        "serve_load": serve and {k: serve[k] for k in ("backbone", "max_batch", "precision", "results")},
    }


def _number(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown(report: dict[str, Any]) -> str:
    machine = report.get("machine") or {}
    lines = [f"GPU check: {machine.get('gpu', machine.get('device', '?'))}, torch {machine.get('torch', '?')}", "",
             "| step | state | seconds |", "| --- | --- | ---: |"]  # fmt: skip
    lines += [f"| {s} | {v['state']} | {_number(v['seconds'])} |" for s, v in report["steps"].items()]
    tests = report.get("cuda_tests")
    if tests:
        lines += [
            "",
            f"CUDA tests: {tests['passed']} passed, {tests['failures'] + tests['errors']} failed, "
            f"{tests['skipped']} skipped" + (f" ({', '.join(tests['failed'])})" if tests["failed"] else ""),
        ]
    train = report.get("train_step")
    if train:
        lines += ["", f"Training step, {train['backbone']}, batch {train['batch']}, {train['precision']}:", "",
                  "| case | median (s) | samples/s | peak memory (MiB) |", "| --- | ---: | ---: | ---: |"]  # fmt: skip
        for name, r in train["methods"].items():
            lines.append(f"| {name} | {_number(r['median_s'], 4)} | {_number(r['samples_per_s'], 1)} | "
                         f"{_number(r['peak_memory_mib'], 0)} |")  # fmt: skip
        vs = train.get("adaptformer_vs_full")
        if vs:
            lines.append(f"\n{train['adaptformer']} / full: time {_number(vs['time'])}, memory {_number(vs['memory'])}")
    seg = report.get("segmentation_step")
    if seg:
        shape = seg["shape"]
        lines += ["", f"Segmentation training step, {shape['backbone']} + UperNet {shape['channels']}, batch "
                  f"{shape['batch']} x {shape['crop']}^2, {shape['precision']}:", "",
                  "| case | median (s) | samples/s | peak memory (MiB) |", "| --- | ---: | ---: | ---: |"]  # fmt: skip
        for name, r in seg["methods"].items():
            lines.append(f"| {name} | {_number(r['median_s'], 4)} | {_number(r['samples_per_s'], 1)} | "
                         f"{_number(r['peak_memory_mib'], 0)} |")  # fmt: skip
        vs = seg.get("adaptformer_vs_full") or {}
        lines.append(f"\nadaptformer-64 / full: time {_number(vs.get('time'))}, memory {_number(vs.get('memory'))}; "
                     f"GEMM floor {_number(seg['gemm_floor'])}; sliding-window evaluation "
                     f"{_number(seg['sliding_eval_images_per_s'], 2)} images/s")  # fmt: skip
    multitask = report.get("multitask")
    if multitask:
        lines += [
            "",
            f"Multi-task forward, {multitask['backbone']}, batch {multitask['batch']}:",
            "",
            "| tasks | mixed / single | separate / single | memory / one model |",
            "| ---: | ---: | ---: | ---: |",
        ]
        for r in multitask["results"]:
            lines.append(f"| {r['tasks']} | {_number(r['mixed/single'])} | {_number(r['separate/single'])} | "
                         f"{_number(r['multitask/one_single_memory'])} |")  # fmt: skip
    serve = report.get("serve_load")
    if serve:
        lines += [
            "",
            f"Serving load, {serve['backbone']}:",
            "",
            "| tasks | clients | requests/s | p50 (ms) | p99 (ms) | batches |",
            "| ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in serve["results"]:
            lines.append(f"| {r['tasks']} | {r['clients']} | {_number(r['requests_per_s'], 1)} | "
                         f"{_number(r['p50_ms'], 1)} | {_number(r['p99_ms'], 1)} | {r['batches']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the folder gpu_check.sh wrote its steps to")
    parser.add_argument("--expect-cuda", action="store_true", help="fail unless the CUDA tests ran (a GPU machine)")
    args = parser.parse_args(argv)
    report = collect(args.out, args.expect_cuda)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (args.out / "gpu_check.md").write_text(text)
    print(text, end="")
    return 0 if all(s["state"] == "ok" for s in report["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
