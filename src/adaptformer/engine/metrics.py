"""Scores of a multi-label task (paper Table 2): mAP, the mean over classes of scikit-learn's average precision, and
F1 at a threshold, overall and per class, as the multi-label literature reports them (ML-GCN, ASL):

    OF1 = 2 OP OR / (OP + OR)   OP, OR: precision and recall over all (image, class) decisions (micro)
    CF1 = 2 CP CR / (CP + CR)   CP, CR: per-class precision and recall, averaged over classes (macro)

A class with no positive in the split has an undefined average precision (and recall): mAP, CP and CR average over
the other classes, and ``map_classes`` says how many that is, with a warning; OP and OR count every decision.
Single-label scores (top-1/top-5) are :func:`.loop.classification_metrics`; :func:`score_predictions` picks by the
task, :data:`PRIMARY` names the score model selection maximises.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .loop import Predictions, classification_metrics

logger = logging.getLogger(__name__)

THRESHOLD = 0.5  # a class is predicted when its sigmoid probability reaches this
PRIMARY = {False: "acc1", True: "map"}  # multi_label -> the validation score that selects the adapter
LABELS = {"acc1": "top-1", "map": "mAP"}  # how reports name those scores


def multilabel_metrics(
    predictions: Predictions, threshold: float = THRESHOLD, per_class: bool = False
) -> dict[str, Any]:
    """mAP, OF1/CF1 (with OP, OR, CP, CR) at ``threshold`` (percent), the mean binary cross-entropy ``loss`` and ``n``,
    from logits ``(N, K)`` and multi-hot labels ``(N, K)``; ``per_class`` adds ``ap``, each class's AP (None where
    the class has no positive)."""
    from sklearn.metrics import average_precision_score, precision_score, recall_score

    logits, labels = predictions.logits.float(), predictions.labels.float()
    n = labels.shape[0]
    if n == 0:
        raise ValueError("no predictions to score: the evaluated split has no samples")
    if labels.shape != logits.shape:
        raise ValueError(
            f"multi-label scoring needs labels of the logits' shape {tuple(logits.shape)}, got "
            f"{tuple(labels.shape)} (single-label targets given to a multi-label task?)"
        )
    truth = labels.numpy().astype(bool)
    scores = torch.sigmoid(logits).numpy()
    scored = np.flatnonzero(truth.any(axis=0))
    if len(scored) == 0:
        raise ValueError("no class has a positive sample in the evaluated split: mAP is undefined")
    if len(scored) < truth.shape[1]:
        logger.warning(
            "%d of %d classes have no positive sample here: mAP averages the other %d",
            truth.shape[1] - len(scored),
            truth.shape[1],
            len(scored),
        )
    ap = {int(k): float(average_precision_score(truth[:, k], scores[:, k])) for k in scored}
    decided = scores >= threshold
    op = precision_score(truth, decided, average="micro", zero_division=0)
    recall_o = recall_score(truth, decided, average="micro", zero_division=0)
    cp = precision_score(truth[:, scored], decided[:, scored], average="macro", zero_division=0)
    cr = recall_score(truth[:, scored], decided[:, scored], average="macro", zero_division=0)
    result: dict[str, Any] = {
        "map": 100.0 * float(np.mean(list(ap.values()))),
        "of1": 100.0 * _f1(op, recall_o),
        "cf1": 100.0 * _f1(cp, cr),
        "op": 100.0 * float(op),
        "or": 100.0 * float(recall_o),
        "cp": 100.0 * float(cp),
        "cr": 100.0 * float(cr),
        "loss": F.binary_cross_entropy_with_logits(logits, labels).item(),
        "n": n,
        "map_classes": len(scored),
        "threshold": threshold,
    }
    if per_class:
        result["ap"] = [100.0 * ap[k] if k in ap else None for k in range(truth.shape[1])]
    return result


def _f1(precision: float, recall: float) -> float:
    return float(2 * precision * recall / (precision + recall)) if precision + recall > 0 else 0.0


def score_predictions(predictions: Predictions, multi_label: bool, per_class: bool = False) -> dict[str, Any]:
    """:func:`multilabel_metrics` for a multi-label task, else :func:`.loop.classification_metrics`."""
    if multi_label:
        return multilabel_metrics(predictions, per_class=per_class)
    return classification_metrics(predictions)
