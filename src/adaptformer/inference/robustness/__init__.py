"""A trained adapter under distribution shift (``adaptformer robustness``): its accuracy on a clean split, on that
split under ImageNet-C's corruptions and on the released shifted ImageNet sets (:mod:`.evaluation`, scored on the
right outputs by :mod:`.classes`), and the report with mCE and retention (:mod:`.report`)."""

from .evaluation import RobustnessSettings, Scores, ShiftedSet, evaluate_robustness
from .report import build_report, corruption_errors, mean_error, retention, write_report

__all__ = [
    "RobustnessSettings",
    "Scores",
    "ShiftedSet",
    "build_report",
    "corruption_errors",
    "evaluate_robustness",
    "mean_error",
    "retention",
    "write_report",
]
