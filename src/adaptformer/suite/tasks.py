"""The two benchmark suites of the PETL community as data: VTAB-1k (19 tasks in three groups) and FGVC (five
fine-grained datasets), with the data kind option that picks a task and the shipped protocol recipes per method.

A suite's task list comes from its data kind (:data:`~adaptformer.data.image.vtab.VTAB_TASKS`,
:data:`~adaptformer.data.image.fgvc.FGVC_DATASETS`); its methods are the rows of ``recipes/vtab_fgvc.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..data.image.fgvc import FGVC_DATASETS
from ..data.image.vtab import VTAB_GROUPS, VTAB_TASKS
from ..recipes import recipe_names

__all__ = ["SUITES", "Suite", "get_suite"]


@dataclass(frozen=True)
class Suite:
    """One benchmark suite.

    Args:
        name: "vtab" or "fgvc" (also the prefix of its recipes: ``<name>_<task>_<method>``).
        kind: the data kind (``data.dataset``) its tasks are read with.
        option: the ``data.options`` key that names a task ("task" for vtab1k, "dataset" for fgvc).
        tasks: every task, in the suite's customary order.
        groups: task -> group (VTAB-1k's natural / specialized / structured); empty for a suite without groups.
        group_order: the groups in their customary order.
        tune_split: what the tuning stage validates on (for the report's column names).
    """

    name: str
    kind: str
    option: str
    tasks: tuple[str, ...]
    groups: dict[str, str] = field(default_factory=dict)
    group_order: tuple[str, ...] = ()
    tune_split: str = "val"

    def recipe(self, task: str, method: str) -> str:
        """The shipped recipe of ``task`` x ``method``."""
        return f"{self.name}_{task}_{method}"

    def options(self, task: str, stage: str) -> dict[str, Any]:
        """``data.options`` of ``task`` at protocol ``stage`` ("tune" or "final")."""
        return {self.option: task, "stage": stage}

    def methods(self) -> tuple[str, ...]:
        """The method rows the suite's recipes ship (e.g. adaptformer8, lora8)."""
        prefix = f"{self.name}_{self.tasks[0]}_"
        return tuple(n.removeprefix(prefix) for n in recipe_names() if n.startswith(prefix))

    def check_tasks(self, tasks: list[str]) -> None:
        unknown = [t for t in tasks if t not in self.tasks]
        if unknown:
            raise ValueError(f"{self.name}: unknown task(s) {unknown} (--tasks); the suite's tasks: {list(self.tasks)}")
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"{self.name}: --tasks names a task twice: {tasks}")

    def check_method(self, method: str) -> None:
        if method not in self.methods():
            raise ValueError(
                f"{self.name}: unknown method {method!r} (--method); the shipped protocol recipes have: "
                f"{list(self.methods())} (recipes/vtab_fgvc.yaml; other settings: --method with train flags after --)"
            )


SUITES: dict[str, Suite] = {
    "vtab": Suite(
        "vtab",
        "vtab1k",
        "task",
        tuple(VTAB_TASKS),
        {t: info.group for t, info in VTAB_TASKS.items()},
        VTAB_GROUPS,
        tune_split="val200",
    ),
    "fgvc": Suite("fgvc", "fgvc", "dataset", tuple(FGVC_DATASETS)),
}


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise ValueError(f"unknown benchmark suite {name!r}; allowed: {list(SUITES)}")
    return SUITES[name]
