"""What stops ``--executor slurm`` / ``ray`` before any unit starts: the library missing (the extra named), no Slurm
client on the machine, a Ray address nothing listens on or that is not an address. Each leaves the output folder
untouched."""

from __future__ import annotations

import shutil
import socket
import sys
from pathlib import Path

import pytest
from tests.suite.executors.runs import sweep, write_sweep

from adaptformer.errors import MissingDependencyError
from adaptformer.suite.executors import ExecutorSettings, SlurmSettings, open_executor


@pytest.mark.parametrize(("executor", "module"), [("slurm", "submitit"), ("ray", "ray")])
def test_a_missing_library_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, executor: str, module: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed: importing it raises ImportError
    message = rf"--executor {executor} needs {module}, which is not installed: pip install 'adaptformer\[{executor}\]'"
    with pytest.raises(MissingDependencyError, match=message), open_executor(ExecutorSettings(executor), tmp_path):
        pass
    code, _, err = sweep(write_sweep(tmp_path), tmp_path / "out", "--executor", executor)
    assert code == 2 and f"pip install 'adaptformer[{executor}]'" in err and not (tmp_path / "out").exists()


@pytest.mark.skipif(shutil.which("sbatch") is not None, reason="this machine has a Slurm client")
def test_slurm_without_a_slurm_client_is_refused(tmp_path: Path) -> None:
    code, _, err = sweep(write_sweep(tmp_path), tmp_path / "out", "--executor", "slurm", "--slurm.partition", "gpu")
    assert code == 2 and "--executor slurm: sbatch is not on PATH" in err and "--slurm.cluster local" in err
    assert not (tmp_path / "out").exists()
    settings = ExecutorSettings("slurm", slurm=SlurmSettings(partition="gpu"))
    with pytest.raises(ValueError, match="sbatch is not on PATH"), open_executor(settings, tmp_path):
        pass


def _closed_port() -> int:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("address", "match"),
    [("ray://127.0.0.1:{port}", "the Ray cluster cannot be reached"),
     ("127.0.0.1:{port}", "the Ray cluster cannot be reached"),
     ("my-head-node", "expected ray://HOST:PORT, HOST:PORT or auto")],
)  # fmt: skip
def test_an_unreachable_ray_address_is_named(tmp_path: Path, address: str, match: str) -> None:
    address = address.format(port=_closed_port())
    code, _, err = sweep(write_sweep(tmp_path), tmp_path / "out", "--executor", "ray", "--ray.address", address)
    assert code == 2 and f"--ray.address {address}: {match}" in err and not (tmp_path / "out").exists()
