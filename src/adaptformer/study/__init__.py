"""Research code that exercises the library, apart from it: the miniature reproduction of AdaptFormer's claims
(``adaptformer study``) and the demo built on it (``adaptformer demo``).

- :mod:`.run`: the methods, tasks and recipes of the comparison, and :func:`run_study`, which trains every
  (task, method, seed) cell through :func:`adaptformer.engine.train.train` and writes the report;
- :mod:`.report`: the markdown table and the accuracy-versus-trainable-parameters plot (the paper's Figure 1);
- :mod:`.demo`: :func:`run_demo`, three methods on the digits task.

The library never imports this package (only the command line does, inside its ``study`` and ``demo`` commands).
The plots use matplotlib, a dependency of the package.
"""

from .demo import DEMO_METHODS, run_demo
from .report import format_table, plot_accuracy_vs_params, ranking, write_markdown
from .run import Cell, StudyReport, StudySettings, build_cells, run_cell, run_study, summarise
from .tasks import METHODS, Method, Task, default_tasks

__all__ = [
    "DEMO_METHODS",
    "METHODS",
    "Cell",
    "Method",
    "StudyReport",
    "StudySettings",
    "Task",
    "build_cells",
    "default_tasks",
    "format_table",
    "plot_accuracy_vs_params",
    "ranking",
    "run_cell",
    "run_demo",
    "run_study",
    "summarise",
    "write_markdown",
]
