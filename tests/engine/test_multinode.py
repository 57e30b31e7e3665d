"""Two ``torchrun`` agents on this machine joined through a c10d rendezvous as two "nodes" (one process each, gloo)
against one process with the same effective batch; a node lost mid-training, and a rendezvous that cannot form.

Tolerance as in test_distributed.py: the same micro-batches, gradients summed in another order, so every saved tensor
agrees to within 1e-5 absolute. A node is "lost" as a machine is: its agent and its worker are killed together
(SIGKILL), while the other node trains on; the next two-node launch with ``--run.resume true`` continues from the
last training state and must end where an uninterrupted run ends.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tests.conftest import VIT

from adaptformer.cli import main
from adaptformer.engine.checkpointing import STATE_FILE, load_training_state
from adaptformer.factory import build_backbone

TINY_JSON = '{"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}'
SAMPLES, VAL, EPOCHS = 171, 11, 2  # 160 train images: 20 optimizer steps of 8 per epoch
STEPS = EPOCHS * (SAMPLES - VAL) // 8
LAUNCH_TIMEOUT = 240  # seconds for one two-node launch: a hung rendezvous or collective fails the test


def _args(backbone: Path, out: Path | str, *extra: str) -> list[str]:
    return [
        "train", "--model.backbone", VIT, "--model.kwargs", TINY_JSON, "--model.checkpoint", str(backbone),
        "--data.dataset", "synthetic", "--data.options", f"{{num_samples: {SAMPLES}, image_size: 32}}",
        "--data.val_split", str(VAL), "--optim.epochs", str(EPOCHS), "--optim.warmup_epochs", "1",
        "--optim.batch_size", "4", "--optim.effective_batch", "8", "--optim.blr", "8", "--model.method.dropout", "0",
        "--model.head", "linear", "--optim.precision", "fp32", "--data.num_workers", "0", "--run.select", "last",
        "--run.save_every_steps", "2", "--run.output_dir", str(out), *extra,
    ]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launcher(port: int, run_id: str, rdzv_conf: str = "join_timeout=60,read_timeout=60") -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1", "--max_restarts", "0",
        "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", run_id, "--rdzv_conf", rdzv_conf,
        "-m", "adaptformer.cli",
    ]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@contextmanager
def _two_nodes(args: list[str], logs: Path, cwds: tuple[Path, Path] | None = None) -> Iterator[list[subprocess.Popen]]:
    """Two agents of one job, each in its own session (as on its own machine); both are killed on the way out."""
    launcher, agents = _launcher(_free_port(), f"job-{logs.name}"), []
    logs.mkdir(parents=True, exist_ok=True)
    try:
        for node in (0, 1):
            with open(logs / f"node{node}.out", "w") as out, open(logs / f"node{node}.err", "w") as err:
                agents.append(
                    subprocess.Popen(
                        [*launcher, *args],
                        env=_env(),
                        cwd=cwds[node] if cwds else None,
                        stdout=out,
                        stderr=err,
                        start_new_session=True,
                    )
                )
        yield agents
    finally:
        for agent in agents:
            _kill_node(agent)


def _workers(agent: subprocess.Popen) -> list[int]:
    """The agent's worker processes (torchrun starts each in a session of its own, so killing the agent's process
    group would leave them running)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == agent.pid:
            found.append(int(stat.parent.name))
    return found


def _rank(agent: subprocess.Popen) -> int:
    """The global rank of the agent's one worker (torchrun's RANK in the worker's environment)."""
    (worker,) = _workers(agent)
    env = dict(x.split("=", 1) for x in Path(f"/proc/{worker}/environ").read_text().split("\0") if "=" in x)
    return int(env["RANK"])


def _kill_node(agent: subprocess.Popen) -> None:
    """What losing the machine does: the agent and its workers die at once."""
    if agent.poll() is None:
        for pid in [*_workers(agent), agent.pid]:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    agent.wait(timeout=30)


def _finish(agents: list[subprocess.Popen], logs: Path) -> list[int]:
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    codes = []
    for agent in agents:
        try:
            codes.append(agent.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            pytest.fail(f"two-node launch still running after {LAUNCH_TIMEOUT} s:\n{_tails(logs)}")
    return codes


def _tails(logs: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-2500:]}" for p in sorted(logs.glob("node*.err")))


def _summaries(logs: Path) -> list[dict]:
    return [json.loads(x) for p in sorted(logs.glob("node*.out")) for x in p.read_text().splitlines() if x[:1] == "{"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny backbone file and the uninterrupted one-process run that every two-node run must equal."""
    work = tmp_path_factory.mktemp("multinode")
    backbone = work / "backbone.safetensors"
    torch.manual_seed(0)
    save_file(build_backbone(VIT, 10, **json.loads(TINY_JSON)).state_dict(), str(backbone))
    assert main(_args(backbone, work / "one")) == 0  # 2 micro-batches of 4 accumulated per step
    return backbone, work / "one"


def _assert_same_run(run: Path, one: Path) -> None:
    a = load_file(str(one / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-5, msg=key)
    assert any(not torch.equal(a[k], torch.zeros_like(a[k])) for k in a)  # it did train
    tests = {d: json.loads((d / "test.json").read_text()) for d in (one, run)}
    assert tests[one]["n"] == tests[run]["n"] == SAMPLES  # every test image counted once
    assert tests[run]["acc1"] == pytest.approx(tests[one]["acc1"], abs=100 / SAMPLES)
    assert tests[run]["loss"] == pytest.approx(tests[one]["loss"], abs=1e-4)
    metrics = {d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (one, run)}
    assert [m["epoch"] for m in metrics[run]] == list(range(1, EPOCHS + 1))
    for key in ("train_loss", "val_acc1"):
        assert [m[key] for m in metrics[run]] == pytest.approx([m[key] for m in metrics[one]], abs=1e-4), key
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in one.iterdir())  # no stray files


def test_two_nodes_train_and_evaluate_as_one_process(reference: tuple[Path, Path], tmp_path: Path) -> None:
    backbone, one = reference
    with _two_nodes(_args(backbone, tmp_path / "two"), tmp_path / "logs") as agents:
        codes = _finish(agents, tmp_path / "logs")
    assert codes == [0, 0], _tails(tmp_path / "logs")
    summaries = _summaries(tmp_path / "logs")
    assert len(summaries) == 1  # only global rank 0 reports (and writes)
    assert summaries[0]["test"]["n"] == SAMPLES
    _assert_same_run(tmp_path / "two", one)


@pytest.mark.slow  # 37-78 s on 2 shared cores: two two-node launches (~15 s each, mostly start-up), a 1-process resume
def test_a_node_lost_mid_training_resumes_from_its_last_checkpoint(
    reference: tuple[Path, Path], tmp_path: Path
) -> None:
    """The node of global rank 0 (the one that writes, and the c10d store's host) is lost after the first saved
    training state; the surviving node fails and says how to resume. The run then continues from the last state both
    on two nodes again and on the one remaining machine as one process (the same effective batch: same result)."""
    backbone, one = reference
    out, state, lost_logs = tmp_path / "two", tmp_path / "two" / STATE_FILE, tmp_path / "lost"
    with _two_nodes(_args(backbone, out), lost_logs) as agents:
        deadline = time.monotonic() + LAUNCH_TIMEOUT
        while not state.is_file():
            assert time.monotonic() < deadline and all(a.poll() is None for a in agents), _tails(lost_logs)
            time.sleep(0.02)
        lost = next(a for a in agents if _rank(a) == 0)  # the node that writes the run folder
        _kill_node(lost)
        survivor = [a for a in agents if a is not lost]
        assert _finish(survivor, lost_logs) != [0]  # its collectives lost their peer
    saved = load_training_state(state)["global_step"]
    assert 0 < saved < STEPS, f"the node was lost after step {saved} of {STEPS}: not mid-training"
    assert not (out / "test.json").exists()
    survivor_log = (lost_logs / f"node{agents.index(survivor[0])}.err").read_text()
    assert "process 1 of 2 stopped" in survivor_log and f"--run.resume true added: it continues from {state}" in (
        survivor_log
    )

    remaining = tmp_path / "remaining"
    shutil.copytree(out, remaining)
    with _two_nodes(_args(backbone, out, "--run.resume", "true"), tmp_path / "resumed") as agents:
        codes = _finish(agents, tmp_path / "resumed")
    assert codes == [0, 0], _tails(tmp_path / "resumed")
    assert "resumed from" in "".join(p.read_text() for p in (tmp_path / "resumed").glob("node*.err"))
    _assert_same_run(out, one)

    assert main(_args(backbone, remaining, "--run.resume", "true")) == 0  # 2 micro-batches per step instead of 2 nodes
    _assert_same_run(remaining, one)


def test_nodes_that_do_not_share_the_run_folder_are_refused_before_training(
    reference: tuple[Path, Path], tmp_path: Path
) -> None:
    """A relative --run.output_dir started from two working directories is two folders, as local disks are: every
    process stops with one message naming both folders, before the first step."""
    backbone, _ = reference
    cwds = (tmp_path / "machine0", tmp_path / "machine1")
    for cwd in cwds:
        cwd.mkdir()
    with _two_nodes(_args(backbone, "run"), tmp_path / "logs", cwds) as agents:
        codes = _finish(agents, tmp_path / "logs")
    assert codes[0] != 0 and codes[1] != 0
    for node in (0, 1):
        log = (tmp_path / "logs" / f"node{node}.err").read_text()
        assert "--run.output_dir run is not one folder shared by every process of this run" in log, log[-3000:]
        assert str(cwds[0] / "run") in log and str(cwds[1] / "run") in log
    written = [cwd for cwd in cwds if (cwd / "run").exists()]
    assert len(written) == 1 and sorted(p.name for p in (written[0] / "run").iterdir()) == ["config.yaml"]


@pytest.mark.parametrize("case", ["endpoint unreachable", "second node never joins"])
def test_a_rendezvous_that_cannot_form_fails_within_its_timeouts(case: str, tmp_path: Path) -> None:
    """torchrun's own bounds (``--rdzv_conf read_timeout=`` for reaching the store, ``join_timeout=`` for the other
    nodes to arrive) end a launch that can never start, instead of leaving it waiting."""
    port = _free_port()
    launcher = _launcher(port, "lonely", "read_timeout=2,join_timeout=2")
    if case == "endpoint unreachable":  # a node that does not host the store, and nothing listens at the endpoint
        launcher[launcher.index("--rdzv_conf") + 1] += ",is_host=false"
    started = time.monotonic()
    done = subprocess.run([*launcher, "--help"], env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and time.monotonic() - started < 60
    if case == "endpoint unreachable":
        assert f"timed out after 2000ms while trying to connect to (127.0.0.1, {port})" in done.stderr, done.stderr
    else:
        assert "RendezvousTimeoutError" in done.stderr, done.stderr
