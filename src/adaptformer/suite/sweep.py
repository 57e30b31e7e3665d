"""``adaptformer sweep``: a set of training runs that differ by a few settings, run one after another as ordinary
``adaptformer train`` run folders ``OUT/<point>/``, collected into one table and one plot (:mod:`.sweep_report`).

A sweep is data: a shipped one (``recipes/sweeps.yaml``: the paper's Tables 2 and 6, each SSv2 ablation, the
accuracy-vs-trainable-parameters figure) or a YAML file of the same form::

    base: cifar100_adaptformer64          # optional: a shipped recipe or a config file, under every point
    grid: {model.method.bottleneck: [4, 16, 64], optim.blr: [0.05, 0.1]}    # every combination is a point
    points: [{name: vpt8, recipe: cifar100_vpt, set: {model.method.num_tokens: 8}}]   # and/or points one by one
    x: trainable_parameters               # the plot's x: trainable_parameters (log axis), point, or a dotted key
    series: model.method.name             # optional: one line per value of this dotted key

Everything that needs no training is checked first (every point's configuration is parsed as ``train`` will), so a
bad sweep stops before any run starts. A point whose ``test.json`` exists is done and skipped; an unfinished one
resumes (``--run.resume true``); a failed one is logged (``OUT/logs/<point>.log``, ``<point>.failed.json``) while
the others go on. ``OUT/sweep.json`` pins the sweep and the train flags: a re-run with others is refused.

Points run on an executor (:mod:`.executors`: in this process, as submitit jobs on Slurm, or as Ray tasks; a job's
id and log files in ``OUT/logs/<point>.job.json``). Several ``adaptformer sweep`` drivers may share ``OUT`` (one per
GPU, array jobs of a cluster, drivers on different executors): each point is claimed atomically
(``OUT/logs/<point>.claim.json``, :mod:`.dispatch`, as the benchmark's tasks are), so each is trained by one of them,
and a point one of them saw fail is not tried again by the others in the same round. The table is rewritten by each
driver as it ends, under a lock; the last one to end writes the complete table.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..engine.records import TEST_FILE
from .claims import default_worker_name
from .dispatch import Summary, Unit, dispatch
from .executors import ExecutorSettings, open_executor
from .stages import SuiteError, grid_points, overrides_flags, pin_settings, run_stage, train_command

__all__ = ["SWEEP_FILE", "Sweep", "SweepPoint", "SweepSettings", "load_sweep", "run_sweep", "shipped_sweeps"]

SWEEP_FILE = "sweep.json"
LOG_DIR = "logs"
RESERVED_NAMES = (LOG_DIR, SWEEP_FILE, "results.md", "results.json", "results.png")  # OUT/<point> must not be one
X_SPECIAL = ("trainable_parameters", "point")
# The sweep sets these per point; a train flag naming one would silently fight it.
OWNED_FLAGS = ("--run.output_dir", "--run.resume", "--run.overwrite", "--recipe", "--config")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=,+-]*$")


@dataclass(frozen=True)
class SweepPoint:
    """One run: a recipe (shipped name or config file; None: the defaults) and dotted-key overrides on top."""

    name: str
    recipe: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "recipe": self.recipe, "set": self.overrides}


@dataclass(frozen=True)
class Sweep:
    """The points of a sweep and how to plot them."""

    name: str
    points: tuple[SweepPoint, ...]
    x: str = "trainable_parameters"
    series: str | None = None
    title: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "x": self.x, "series": self.series,
                "points": [p.to_dict() for p in self.points]}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sweep:
        points = tuple(SweepPoint(p["name"], p["recipe"], p["set"]) for p in data["points"])
        return cls(data["name"], points, data["x"], data["series"], data["title"])


@functools.cache
def shipped_sweeps() -> dict[str, dict[str, Any]]:
    """The shipped sweep definitions (``recipes/sweeps.yaml``), by name."""
    return yaml.safe_load((resources.files("adaptformer.recipes") / "sweeps.yaml").read_text())


def load_sweep(name_or_path: str | Path) -> Sweep:
    """A shipped sweep by name, or a sweep YAML file; every point named and its recipe checked."""
    path = Path(name_or_path)
    if path.is_file():
        try:
            definition = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise SuiteError(f"sweep file {path} is not YAML: {error}") from None
        return expand_sweep(definition, name=path.stem, folder=path.parent, where=f"sweep file {path}")
    if str(name_or_path) in shipped_sweeps():
        return expand_sweep(shipped_sweeps()[str(name_or_path)], name=str(name_or_path), where=f"sweep {path}")
    if path.suffix in (".yaml", ".yml") or "/" in str(name_or_path):
        raise FileNotFoundError(f"sweep file not found: {name_or_path}")
    raise SuiteError(f"unknown sweep {str(name_or_path)!r}; shipped sweeps: {', '.join(shipped_sweeps())} (or give a "
                     "YAML file)")  # fmt: skip


def _check_keys(mapping: Any, allowed: tuple[str, ...], where: str) -> dict[str, Any]:
    if not isinstance(mapping, dict):
        raise SuiteError(f"{where}: expected a mapping with keys {', '.join(allowed)}, got {mapping!r}")
    unknown = [k for k in mapping if k not in allowed]
    if unknown:
        raise SuiteError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}; allowed: {', '.join(allowed)}")
    return mapping


def _resolve_recipe(recipe: Any, folder: Path | None, where: str) -> str | None:
    """A shipped recipe name stays a name; a file is found as given or beside the sweep file."""
    from ..recipes import load_recipe

    if recipe is None:
        return None
    if not isinstance(recipe, str):
        raise SuiteError(f"{where}: recipe must be a shipped recipe name or a config file, got {recipe!r}")
    if folder is not None and not Path(recipe).is_file() and (folder / recipe).is_file():
        recipe = str(folder / recipe)
    load_recipe(recipe)  # unknown recipe / missing file: a ValueError / FileNotFoundError naming it
    return recipe


def _grid_name(overrides: dict[str, Any]) -> str:
    parts = []
    for key, value in overrides.items():
        shown = value if isinstance(value, str) else json.dumps(value)
        parts.append(f"{key.rsplit('.', 1)[-1]}={re.sub(r'[^A-Za-z0-9._+-]', '', shown)}")
    return ",".join(parts)


def expand_sweep(definition: Any, name: str, where: str, folder: Path | None = None) -> Sweep:
    """The points of a sweep definition (``points`` first, then every combination of ``grid``)."""
    d = _check_keys(definition, ("title", "base", "grid", "points", "x", "series"), where)
    base = _resolve_recipe(d.get("base"), folder, f"{where}: base")
    points = []
    for k, entry in enumerate(d.get("points") or []):
        p = _check_keys(entry, ("name", "recipe", "set"), f"{where}: points[{k}]")
        overrides = p.get("set") or {}
        if not isinstance(overrides, dict) or not all(isinstance(key, str) for key in overrides):
            raise SuiteError(f"{where}: points[{k}].set must map dotted train keys to values, got {overrides!r}")
        recipe = _resolve_recipe(p.get("recipe", base), folder, f"{where}: points[{k}]")
        default = Path(recipe).stem if recipe and Path(recipe).is_file() else recipe
        point_name = p.get("name") or (_grid_name(overrides) if overrides else default)
        if point_name is None:
            raise SuiteError(f"{where}: points[{k}] needs a name, a recipe or settings")
        points.append(SweepPoint(str(point_name), recipe, overrides))
    grid = d.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(key, str) for key in grid):
        raise SuiteError(f"{where}: grid must map dotted train keys to lists of values, got {grid!r}")
    if grid:
        points += [SweepPoint(_grid_name(o), base, o) for o in grid_points(grid)]
    if not points:
        raise SuiteError(f"{where}: the sweep has no points (give grid: with non-empty lists, or points:)")
    names = [p.name for p in points]
    for point_name in names:
        if not _SAFE_NAME.match(point_name):
            raise SuiteError(f"{where}: point name {point_name!r} is not a plain folder name (letters, digits, ._=,+-)")
        if point_name in RESERVED_NAMES:
            raise SuiteError(f"{where}: point name {point_name!r} is a file or folder the sweep writes itself "
                             f"({', '.join(RESERVED_NAMES)}); name the point otherwise")  # fmt: skip
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SuiteError(f"{where}: several points are named {', '.join(duplicates)}; give each a name")
    x, series = d.get("x", "trainable_parameters"), d.get("series")
    for label, key in (("x", x), ("series", series)):
        if key is not None and not isinstance(key, str):
            raise SuiteError(f"{where}: {label} must be a dotted config key, got {key!r}")
    return Sweep(name, tuple(points), x, series, str(d.get("title") or name))


@dataclass(frozen=True)
class SweepSettings:
    """What a sweep run is: the sweep, its folder, the train flags of every point (recorded in ``OUT/sweep.json``),
    the command that runs ``-m adaptformer.cli train`` (default: this Python), this worker's name in point claims
    (default ``host:pid``) and how long a claim without heartbeat lasts before another worker takes the point over."""

    sweep: Sweep
    output_dir: Path
    train_flags: tuple[str, ...] = ()
    launcher: tuple[str, ...] = ()
    worker: str = field(default_factory=default_worker_name)
    stale_after_s: float = 600.0

    def recorded(self) -> dict[str, Any]:
        return {"sweep": self.sweep.to_dict(), "train_flags": list(self.train_flags)}


def train_arguments(settings: SweepSettings, point: SweepPoint) -> list[str]:
    """The ``adaptformer train`` arguments of one point: its recipe, its folder, the user's flags, its overrides."""
    recipe = ["--recipe", point.recipe] if point.recipe else []
    folder = ["--run.output_dir", str(settings.output_dir / point.name)]
    return [*recipe, *folder, *settings.train_flags, *overrides_flags(point.overrides)]


def dotted(config: dict[str, Any], key: str) -> Any:
    """``config["model"]["method"]["name"]`` for ``"model.method.name"``; KeyError where it is missing."""
    value: Any = config
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(key)
        value = value[part]
    return value


def check_sweep(settings: SweepSettings) -> None:
    """Parse every point's configuration as ``adaptformer train`` will, so that a bad key, value or train flag stops
    the sweep before any run starts."""
    from ..engine.config.parser import parse_cli
    from ..recipes import load_recipe

    for flag in settings.train_flags:
        name = flag.split("=", 1)[0]
        if name in OWNED_FLAGS:
            raise SuiteError(f"train flag {name}: the sweep sets it for each point; remove it")
    keys = {key for point in settings.sweep.points for key in point.overrides}
    both = [f for f in settings.train_flags if f.startswith("--") and f.split("=", 1)[0][2:] in keys]
    if both:
        raise SuiteError(f"train flag {both[0]} is also a setting of the sweep's points; give it in one place")
    configs = []
    for point in settings.sweep.points:
        layers = [(f"recipe {point.recipe}", load_recipe(point.recipe))] if point.recipe else []
        arguments = train_arguments(settings, point)[2 if point.recipe else 0 :]
        try:
            configs.append(parse_cli(arguments, layers).to_dict())
        except ValueError as error:
            raise SuiteError(f"sweep point {point.name}: {error}") from None
    for label, key in (("x", settings.sweep.x), ("series", settings.sweep.series)):
        if key is None or key in X_SPECIAL:
            continue
        if not any(_has(config, key) for config in configs):
            raise SuiteError(f"{label}: {key} is not a key of the training configuration (e.g. model.method.scale), "
                             f"nor one of {', '.join(X_SPECIAL)}")  # fmt: skip


def _has(config: dict[str, Any], key: str) -> bool:
    try:
        dotted(config, key)
    except KeyError:
        return False
    return True


SweepSummary = Summary  # what one driver did: ran, already_done, held_elsewhere, failed


def failed_file(output_dir: Path, name: str) -> Path:
    return output_dir / LOG_DIR / f"{name}.failed.json"


def job_file(output_dir: Path, name: str) -> Path:
    """The scheduler's job of a point (executor, job id, log files)."""
    return output_dir / LOG_DIR / f"{name}.job.json"


def point_unit(output_dir: Path, name: str) -> Unit:
    logs = output_dir / LOG_DIR
    return Unit(name, output_dir / name / TEST_FILE, logs / f"{name}.claim.json", failed_file(output_dir, name),
                job_file(output_dir, name))  # fmt: skip


def run_sweep(settings: SweepSettings, executor: ExecutorSettings | None = None) -> Summary:
    """Every unfinished point of the sweep that this driver can claim, on ``executor`` (default: in this process; see
    the module docstring)."""
    check_sweep(settings)
    with open_executor(executor or ExecutorSettings(), settings.output_dir) as running:
        pin_settings(settings.output_dir / SWEEP_FILE, settings.recorded(), "sweep")
        units = [point_unit(settings.output_dir, point.name) for point in settings.sweep.points]
        return dispatch(units, functools.partial(execute_point, settings), running, settings.worker,
                        settings.stale_after_s)  # fmt: skip


def execute_point(settings: SweepSettings, name: str) -> str | None:
    """Train point ``name`` (or resume it), wherever the executor runs it; the error if it failed."""
    point = next(p for p in settings.sweep.points if p.name == name)
    folder = settings.output_dir / point.name
    command = train_command(settings.launcher, train_arguments(settings, point), folder)
    try:
        run_stage(command, folder, settings.output_dir / LOG_DIR / f"{point.name}.log")
    except SuiteError as error:
        return str(error)
    return None
