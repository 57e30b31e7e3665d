"""Two versions of the library side by side: the same workloads timed on a "before" source tree (e.g. a checkout of
an older commit) and an "after" tree (default: this checkout), interleaved in one run, so a refactor's effect on speed
is measured under the same machine load instead of compared across runs.

    git worktree add --detach /tmp/before v0.1.0   # any older commit
    python benchmarks/versions.py --before /tmp/before --json reports/bench/versions.json --markdown
    python benchmarks/versions.py --quick --before /tmp/before --after .   # tiny model, seconds (CI)

Each version runs in its own child process (this script with ``--serve``, ``PYTHONPATH=<tree>/src``; the child checks
that ``adaptformer.__file__`` lies under that tree and reports it). A child builds every workload's model once per
precision and then serves "time N steps of workload X" requests (one JSON line each way over stdin/stdout), so model
builds are not repeated. The parent orders the requests: every round times each workload once per version, the two
versions of a workload back to back, before-first in even rounds and after-first in odd ones (A B, B A, A B, ...), and
the workloads' order rotates by one per round (``measure.time_interleaved``). The child that is not being timed is idle,
blocked on its pipe. Workloads, on ViT-B/16 (``vit_base_patch16_224``, random weights, 100 classes, batch 8 of random
224 px images) in fp32 and under bf16 autocast, each built only through API that both 0.1 and 0.2 have
(``create_model(name, num_classes, method=...)`` then ``apply_speed(model, SpeedConfig(), "cpu", precision)``, the
"auto" speed choices):

- ``adaptformer-64``: an AdaptFormer-64 training step (zero_grad + forward + cross-entropy + backward + SGD with
  momentum 0.9 step) of ``method="adaptformer"`` with the default adapter;
- ``forward+adapters``: the no-grad eval forward of that adapted model (built separately, like bench.py's case);
- ``full``: a full fine-tuning step (``method="full"``), the reference.

Reported per workload and precision: each version's median step time (over all rounds x steps) and minimum, and the
per-round ratio after/before (each round's median step of the N steps, after over before): its median and range over
rounds. A self-comparison (the same tree as both versions) shows the noise floor of such a ratio on this machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shlex
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
THIS_CHECKOUT = HERE.parent
VERSIONS = ("before", "after")
WORKLOADS: dict[str, tuple[str, str]] = {  # name: (create_model method, "train" step or no-grad "eval" forward)
    "adaptformer-64": ("adaptformer", "train"),
    "forward+adapters": ("adaptformer", "eval"),
    "full": ("full", "train"),
}
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}  # autocast dtype (None: no autocast)
MODEL = "vit_base_patch16_224"
QUICK_MODEL = "vit_tiny_patch16_224"
QUICK_KWARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}


# ---------------------------------------------------------------------------------------------------------------------
# Child side: runs against whichever tree PYTHONPATH names, so it imports nothing from this checkout (not even
# measure.py, which imports adaptformer internals) and uses only the public API every version has.


def _autocast(precision: str) -> contextlib.AbstractContextManager[Any]:
    dtype = PRECISIONS[precision]
    return torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _speed_choices(model: torch.nn.Module) -> dict[str, Any] | None:
    """The resolved speed options, if this version can tell (informational only: not part of the shared API)."""
    try:
        from adaptformer.speed import speed_config

        return speed_config(model).to_dict()
    except Exception:
        return None


def build_workload(workload: str, precision: str, settings: dict[str, Any]) -> tuple[Callable[[], None], dict]:
    """The model of ``workload`` built the way every version supports, and a function doing one step of it."""
    import adaptformer

    method, kind = WORKLOADS[workload]
    torch.manual_seed(0)  # the same weights in both versions (as far as they build the same modules)
    model = adaptformer.create_model(settings["model"], settings["num_classes"], method=method, **settings["kwargs"])
    adaptformer.apply_speed(model, adaptformer.SpeedConfig(), "cpu", precision)
    trainable = [p for p in model.parameters() if p.requires_grad]
    info = {"kind": kind, "trainable_params": sum(p.numel() for p in trainable), "speed": _speed_choices(model)}
    g = torch.Generator().manual_seed(0)
    x = torch.randn(settings["batch"], *settings["sample_shape"], generator=g)
    y = torch.randint(0, settings["num_classes"], (settings["batch"],), generator=g)
    if kind == "eval":
        model.eval()

        def forward() -> None:
            with torch.no_grad(), _autocast(precision):
                model(x)

        return forward, info
    model.train()
    optimizer = torch.optim.SGD(trainable, lr=1e-3, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(precision):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()

    return step, info


def _handle(request: dict[str, Any], cases: dict[str, Callable[[], None]]) -> dict[str, Any]:
    if request["op"] == "build":
        cases.clear()  # free the previous precision's models first
        infos, start = {}, time.perf_counter()
        for workload in request["workloads"]:
            cases[workload], infos[workload] = build_workload(workload, request["precision"], request["settings"])
        for workload in request["workloads"]:
            for _ in range(request["warmup"]):
                cases[workload]()
        return {"cases": infos, "build_and_warmup_s": time.perf_counter() - start}
    if request["op"] == "time":
        run, times = cases[request["case"]], []
        for _ in range(request["steps"]):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return {"times": times}
    raise ValueError(f"unknown request {request!r}")


def serve(tree: Path, threads: int | None) -> int:
    """The child: say which adaptformer it imported, then answer one JSON request per stdin line until "quit"."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)  # the replies; anything else printed goes to stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    if threads is not None:
        torch.set_num_threads(threads)
    import timm

    import adaptformer

    logging.getLogger("adaptformer").setLevel(logging.WARNING)
    src, file = (tree / "src").resolve(), Path(adaptformer.__file__).resolve()
    hello = {
        "tree": str(tree),
        "adaptformer_file": str(file),
        "adaptformer_version": getattr(adaptformer, "__version__", None),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "torch_threads": torch.get_num_threads(),
        "pid": os.getpid(),
    }
    if not file.is_relative_to(src):
        hello["error"] = f"imported adaptformer from {file}, not from {src} (PYTHONPATH={os.environ.get('PYTHONPATH')})"
        protocol.write(json.dumps(hello) + "\n")
        return 2
    protocol.write(json.dumps(hello) + "\n")
    cases: dict[str, Callable[[], None]] = {}
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "quit":
            break
        try:
            reply = _handle(request, cases)
        except Exception:
            reply = {"error": traceback.format_exc()}
        protocol.write(json.dumps(reply) + "\n")
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# Parent side.


class Child:
    """One version's child process and its request/reply pipe."""

    def __init__(self, label: str, tree: Path, threads: int | None) -> None:
        self.label, self.tree = label, tree
        command = [sys.executable, str(Path(__file__).resolve()), "--serve", str(tree)]
        command += ["--threads", str(threads)] if threads is not None else []
        env = {**os.environ, "PYTHONPATH": str(tree / "src")}
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.hello: dict[str, Any] = {}

    def send(self, request: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()

    def receive(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.label} child ({self.tree}) exited with code {self.process.wait()}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"{self.label} child ({self.tree}) failed: {reply['error']}")
        return reply

    def request(self, request: dict[str, Any]) -> dict[str, Any]:
        self.send(request)
        return self.receive()

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(OSError):
                self.send({"op": "quit"})
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_children(trees: dict[str, Path], threads: int | None) -> dict[str, Child]:
    """Both children, started together; each has checked and reported which adaptformer it imported."""
    children = {label: Child(label, tree, threads) for label, tree in trees.items()}
    try:
        for child in children.values():
            child.hello = child.receive()
    except BaseException:
        for child in children.values():
            child.close()
        raise
    return children


def git_info(tree: Path) -> dict[str, Any]:
    """The tree's commit and whether its library source differs from it (None where git cannot tell)."""

    def git(*args: str) -> str | None:
        done = subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    changes = git("status", "--porcelain", "--untracked-files=no", "--", "src")
    return {
        "commit": commit,
        "subject": git("log", "-1", "--format=%s") if commit else None,
        "src_modified": None if changes is None else bool(changes),
    }


@dataclass
class Pair:
    """One workload in both versions: each run() is one round, the versions back to back, order alternating."""

    workload: str
    children: dict[str, Child]
    steps: int
    rounds: list[dict[str, list[float]]] = field(default_factory=list)
    first: list[str] = field(default_factory=list)

    def run(self) -> None:
        order = VERSIONS if len(self.rounds) % 2 == 0 else VERSIONS[::-1]
        times = {}
        for label in order:
            request = {"op": "time", "case": self.workload, "steps": self.steps}
            times[label] = self.children[label].request(request)["times"]
        self.rounds.append(times)
        self.first.append(order[0])


def summarize(pair: Pair, builds: dict[str, dict[str, Any]], batch: int) -> dict[str, Any]:
    row: dict[str, Any] = {"kind": builds[VERSIONS[0]]["cases"][pair.workload]["kind"]}
    row["trainable_params"] = {v: builds[v]["cases"][pair.workload]["trainable_params"] for v in VERSIONS}
    row["speed"] = {v: builds[v]["cases"][pair.workload]["speed"] for v in VERSIONS}
    per_round = {}
    for version in VERSIONS:
        times = [t for r in pair.rounds for t in r[version]]
        per_round[version] = [statistics.median(r[version]) for r in pair.rounds]
        row[version] = {
            "median_s": statistics.median(times),
            "min_s": min(times),
            "samples_per_s": batch / statistics.median(times),
            "round_medians_s": per_round[version],
            "times_s": [r[version] for r in pair.rounds],
        }
    ratios = [a / b for a, b in zip(per_round["after"], per_round["before"], strict=True)]
    row["after/before"] = {
        "median": statistics.median(ratios),
        "min": min(ratios),
        "max": max(ratios),
        "per_round": ratios,
        "first_per_round": pair.first,
    }
    return row


def measure_precision(children: dict[str, Child], precision: str, args: argparse.Namespace) -> dict[str, Any]:
    """Build every workload in both children (together, untimed), then time them in interleaved rounds."""
    from measure import Case, load_average, time_interleaved

    logging.getLogger("versions").info("building %s (%s) in both versions", args.model, precision)
    request = {
        "op": "build",
        "precision": precision,
        "workloads": list(WORKLOADS),
        "warmup": args.warmup,
        "settings": args.settings,
    }
    for child in children.values():
        child.send(request)
    builds = {label: child.receive() for label, child in children.items()}
    pairs = [Pair(workload, children, args.steps) for workload in WORKLOADS]
    load_before = load_average()
    time_interleaved([Case(p.workload, p.run, torch.device("cpu")) for p in pairs], args.rounds, warmup=0)
    return {
        "precision": precision,
        "load_average": {"before": load_before, "after": load_average()},
        "build_and_warmup_s": {label: b["build_and_warmup_s"] for label, b in builds.items()},
        "workloads": {p.workload: summarize(p, builds, args.batch) for p in pairs},
    }


def differences(report: dict[str, Any]) -> list[str]:
    """Notes on what differs between the versions' workloads, so a ratio is not read as like for like blindly."""
    notes = []
    for suite in report["suites"]:
        for name, row in suite["workloads"].items():
            params, speed = row["trainable_params"], row["speed"]
            if params["before"] != params["after"]:
                notes.append(f"{name} ({suite['precision']}): trainable parameters differ: {params}")
            if speed["before"] != speed["after"]:
                before, after = speed["before"] or {}, speed["after"] or {}
                changed = [
                    f"{key} {before.get(key, '(absent)')} -> {after.get(key, '(absent)')}"
                    for key in sorted(set(before) | set(after))
                    if before.get(key, "(absent)") != after.get(key, "(absent)")
                ]
                notes.append(f"{name} ({suite['precision']}): auto speed choices before -> after: {', '.join(changed)}")
    return notes


def to_markdown(report: dict[str, Any]) -> str:
    m, s = report["machine"], report["settings"]
    lines = [
        f"Machine: {m['cpu']} ({m['cores']} cores, {m['torch_threads']} torch thread(s) per child, "
        f"flags {' '.join(m['cpu_flags'])}); torch {m['torch']}, timm {m['timm']}, Python {m['python']}.",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Model {s['model']} {json.dumps(s['kwargs'])}, batch {s['batch']}, {s['num_classes']} classes; "
        f"{s['rounds']} interleaved rounds, each timing {s['steps']} step(s) per workload and version; "
        f"{s['warmup']} warm-up step(s) per workload first.",
        "",
        "| version | tree | commit | library source modified | adaptformer | imported from |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for label, v in report["versions"].items():
        commit = f"{v['commit'][:10]} {v['subject']}" if v["commit"] else "-"
        lines.append(
            f"| {label} | {v['tree']} | {commit} | {v['src_modified']} | {v['adaptformer_version']} | "
            f"{v['adaptformer_file']} |"
        )
    lines += [f"\nNote: {note}" for note in report["notes"]]
    for suite in report["suites"]:
        load = suite["load_average"]
        lines += [
            "",
            f"### {s['model']}, {suite['precision']}",
            "",
            f"Load average before/after: {load['before']} / {load['after']}.",
            "",
            "| workload | before: median (s) | after: median (s) | before: min (s) | after: min (s) "
            "| after/before (median of rounds) | range over rounds |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, r in suite["workloads"].items():
            ratio = r["after/before"]
            lines.append(
                f"| {name} | {r['before']['median_s']:.3f} | {r['after']['median_s']:.3f} | "
                f"{r['before']['min_s']:.3f} | {r['after']['min_s']:.3f} | {ratio['median']:.3f} | "
                f"{ratio['min']:.3f}-{ratio['max']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", type=Path, help="source tree of the older version (a checkout: <DIR>/src/adaptformer)")
    p.add_argument("--after", type=Path, default=THIS_CHECKOUT, help="source tree of the newer version (default: .)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 7, quick 2)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per round, workload and version (default 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per workload after building (default 2)")
    p.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32 and/or bf16 (autocast)")
    p.add_argument("--threads", type=int, default=None, help="torch threads in each child (default: torch's; quick 1)")
    p.add_argument("--model", default=None, help=f"timm model (default {MODEL}; quick {QUICK_MODEL}, tiny)")
    p.add_argument("--batch", type=int, default=8, help="batch size")
    p.add_argument("--num-classes", type=int, default=100, help="classes of the head")
    p.add_argument("--quick", action="store_true", help="a tiny ViT, 2 rounds of 1 step (CI: checks that it works)")
    p.add_argument("--json", type=Path, help="write the report as JSON to this file")
    p.add_argument("--markdown", action="store_true", help="print the report as markdown tables")
    p.add_argument("--serve", type=Path, metavar="TREE", help=argparse.SUPPRESS)  # internal: run as a child
    args = p.parse_args(argv)
    if args.serve is not None:
        return args
    if args.before is None:
        p.error("--before DIR is required")
    for tree in (args.before, args.after):
        if not (tree / "src" / "adaptformer" / "__init__.py").is_file():
            p.error(f"{tree} is not a source tree of the library (no src/adaptformer/__init__.py)")
    args.before, args.after = args.before.resolve(), args.after.resolve()
    args.rounds = args.rounds if args.rounds is not None else (2 if args.quick else 7)
    args.steps = args.steps if args.steps is not None else (1 if args.quick else 3)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    # Tiny models gain nothing from a second thread, and on a busy machine OpenMP barriers make them crawl.
    args.threads = args.threads if args.threads is not None else (1 if args.quick else None)
    args.model = args.model or (QUICK_MODEL if args.quick else MODEL)
    args.precisions = args.precisions.split(",")
    unknown = set(args.precisions) - set(PRECISIONS)
    if unknown:
        p.error(f"unknown precisions {sorted(unknown)}: choose from {sorted(PRECISIONS)}")
    if min(args.rounds, args.steps) < 1 or args.warmup < 0:
        p.error("--rounds and --steps must be >= 1, --warmup >= 0")
    kwargs = QUICK_KWARGS if args.quick else {}
    size = kwargs.get("img_size", 224)
    args.settings = {
        "model": args.model,
        "kwargs": kwargs,
        "num_classes": args.num_classes,
        "batch": args.batch,
        "sample_shape": [3, size, size],
    }
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.serve is not None:
        sys.exit(serve(args.serve, args.threads))
    sys.path.insert(0, str(HERE))
    from measure import machine_info  # imports this checkout's adaptformer: parent side only

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    command = "python benchmarks/versions.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    machine = machine_info(torch.device("cpu"))
    machine.pop("adaptformer")  # the parent's own; each version's is under "versions"
    report: dict[str, Any] = {"command": command.strip(), "machine": machine, "settings": {}}
    report["settings"] = {
        **{k: v for k, v in args.settings.items() if k != "sample_shape"},
        "input_shape": [args.batch, *args.settings["sample_shape"]],
        "rounds": args.rounds,
        "steps": args.steps,
        "warmup": args.warmup,
        "precisions": args.precisions,
        "workloads": {name: {"method": m, "kind": k} for name, (m, k) in WORKLOADS.items()},
    }
    trees = {"before": args.before, "after": args.after}
    children = start_children(trees, args.threads)
    try:
        report["versions"] = {label: {**c.hello, **git_info(c.tree)} for label, c in children.items()}
        machine["torch_threads"] = children["after"].hello["torch_threads"]
        report["suites"] = [measure_precision(children, precision, args) for precision in args.precisions]
    finally:
        for child in children.values():
            child.close()
    report["notes"] = differences(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        print(to_markdown(report))
    return report


if __name__ == "__main__":
    main()
