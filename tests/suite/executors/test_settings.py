"""The executor sections: ``--executor-config`` YAML under the ``--slurm.*`` / ``--ray.*`` flags, and bad values named
by their key."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.suite.executors.runs import sweep, write_sweep

from adaptformer.cli.args import executor_settings
from adaptformer.cli.main import build_parser
from adaptformer.suite.executors import ExecutorSettings, RaySettings, SlurmSettings, load_executor_settings


def _settings(*argv: str) -> ExecutorSettings:
    return executor_settings(build_parser().parse_args(["sweep", "x", "--out", "o", *argv]))


def test_flags_override_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "executor.yaml"
    config.write_text("slurm: {partition: gpu, time_min: 120, gpus_per_node: 1}\nray: {num_gpus: 0.5}\n")
    settings = _settings("--executor", "slurm", "--executor-config", str(config), "--slurm.time_min", "30",
                         "--slurm.mem_gb", "16")  # fmt: skip
    assert settings == ExecutorSettings(
        "slurm", SlurmSettings(partition="gpu", time_min=30, gpus_per_node=1, mem_gb=16.0), RaySettings(num_gpus=0.5)
    )
    assert _settings() == ExecutorSettings()  # local, every default
    assert _settings("--executor", "ray", "--ray.address", "ray://head:10001").ray.address == "ray://head:10001"


@pytest.mark.parametrize(
    ("text", "match"),
    [("slurm: {partiton: gpu}", r"slurm: unknown key\(s\) \['partiton'\]; allowed: partition, time_min"),
     ("kubernetes: {}", "expected a mapping with sections slurm, ray"), ("slurm: [", "is not YAML"),
     ("slurm: {time_min: 0}", r"slurm.time_min: expected a number >= 1, got 0"),
     ("slurm: {cluster: pbs}", "slurm.cluster: expected slurm or local, got 'pbs'"),
     ("ray: {num_gpus: -1}", r"ray.num_gpus: expected a number >= 0, got -1")],
)  # fmt: skip
def test_a_bad_config_names_the_file_and_key(tmp_path: Path, text: str, match: str) -> None:
    config = tmp_path / "executor.yaml"
    config.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_executor_settings("slurm", config)
    code, _, err = sweep(write_sweep(tmp_path), tmp_path / "out", "--executor-config", str(config))
    assert code == 2 and "error:" in err and not (tmp_path / "out").exists()


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=f"--executor-config {tmp_path / 'no.yaml'}: no such file"):
        load_executor_settings("ray", tmp_path / "no.yaml")
