"""What an executor is asked for: the section of each scheduler (``slurm:``, ``ray:``) as a dataclass, the same for
the Python API, the ``--executor-config`` YAML file and the ``--slurm.*`` / ``--ray.*`` flags (each field's help is
the flag's). Values are checked on construction, naming the key."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from ..stages import SuiteError

__all__ = ["EXECUTORS", "ExecutorSettings", "RaySettings", "SlurmSettings", "load_executor_settings"]

EXECUTORS = ("local", "slurm", "ray")


@dataclass(frozen=True)
class SlurmSettings:
    """``--executor slurm``: each unit a submitit job (submitted together: one Slurm job array)."""

    partition: str | None = field(default=None, metadata={"help": "Slurm partition (default: the cluster's default)"})
    time_min: int = field(default=24 * 60, metadata={"help": "time limit of each job in minutes (default: 1440)"})
    gpus_per_node: int = field(default=0, metadata={"help": "GPUs of each job (default: 0)"})
    cpus_per_task: int = field(default=4, metadata={"help": "CPUs of each job (default: 4)"})
    mem_gb: float | None = field(default=None, metadata={"help": "memory of each job in GB (default: the partition's)"})
    array_parallelism: int = field(default=64, metadata={"help": "jobs of the array running at once (default: 64)"})
    cluster: str = field(
        default="slurm",
        metadata={"help": "slurm, or local: the same jobs as processes on this machine through submitit's local "
                  "executor, no Slurm needed (to try a setup; what the tests run)"},
    )  # fmt: skip
    log_dir: str | None = field(
        default=None, metadata={"help": "folder of submitit's job files and logs (default: OUT/logs/submitit)"}
    )

    def __post_init__(self) -> None:
        _at_least(self, {"time_min": 1, "gpus_per_node": 0, "cpus_per_task": 1, "array_parallelism": 1})
        if self.mem_gb is not None and self.mem_gb <= 0:
            raise SuiteError(f"slurm.mem_gb: expected a positive number of GB, got {self.mem_gb}")
        if self.cluster not in ("slurm", "local"):
            raise SuiteError(f"slurm.cluster: expected slurm or local, got {self.cluster!r}")


@dataclass(frozen=True)
class RaySettings:
    """``--executor ray``: each unit a Ray task with these resources."""

    address: str | None = field(
        default=None,
        metadata={"help": "the cluster: ray://HOST:PORT (Ray Client), HOST:PORT (the head's GCS), auto (the cluster "
                  "this machine belongs to); default: a local cluster started for this command"},
    )  # fmt: skip
    num_cpus: float = field(default=1.0, metadata={"help": "CPUs each unit asks for (default: 1)"})
    num_gpus: float = field(default=0.0, metadata={"help": "GPUs each unit asks for (default: 0)"})

    def __post_init__(self) -> None:
        _at_least(self, {"num_cpus": 0, "num_gpus": 0})


@dataclass(frozen=True)
class ExecutorSettings:
    """Which executor runs the units, and each scheduler's section (only the chosen one's is used)."""

    name: str = "local"
    slurm: SlurmSettings = field(default_factory=SlurmSettings)
    ray: RaySettings = field(default_factory=RaySettings)

    def __post_init__(self) -> None:
        if self.name not in EXECUTORS:
            raise SuiteError(f"--executor: expected one of {', '.join(EXECUTORS)}, got {self.name!r}")


SECTIONS: dict[str, type] = {"slurm": SlurmSettings, "ray": RaySettings}


def _at_least(settings: Any, lows: dict[str, float]) -> None:
    section = next(k for k, v in SECTIONS.items() if v is type(settings))
    for key, low in lows.items():
        value = getattr(settings, key)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < low:
            raise SuiteError(f"{section}.{key}: expected a number >= {low}, got {value!r}")


def load_executor_settings(
    name: str, config: Path | None = None, flags: dict[str, dict[str, Any]] | None = None
) -> ExecutorSettings:
    """``name``'s executor with the sections of the YAML file ``config`` (``slurm: {partition: gpu}``, ``ray:
    {...}``), then the flags given (section -> key -> value) over them."""
    given: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    if config is not None:
        where = f"--executor-config {config}"
        try:
            data = yaml.safe_load(Path(config).read_text()) or {}
        except FileNotFoundError:
            raise FileNotFoundError(f"{where}: no such file") from None
        except yaml.YAMLError as error:
            raise SuiteError(f"{where} is not YAML: {error}") from None
        if not isinstance(data, dict) or set(data) - set(SECTIONS):
            raise SuiteError(f"{where}: expected a mapping with sections {', '.join(SECTIONS)}, got {data!r}")
        for section, values in data.items():
            allowed = [f.name for f in fields(SECTIONS[section])]
            if not isinstance(values, dict) or set(values) - set(allowed):
                unknown = sorted(set(values) - set(allowed)) if isinstance(values, dict) else values
                raise SuiteError(f"{where}: {section}: unknown key(s) {unknown}; allowed: {', '.join(allowed)}")
            given[section].update(values)
    for section, values in (flags or {}).items():
        given[section].update({k: v for k, v in values.items() if v is not None})
    settings = ExecutorSettings(name)
    return replace(settings, **{s: SECTIONS[s](**given[s]) for s in SECTIONS})
