"""Which of an adapter's outputs a shifted ImageNet test set is scored on.

ImageNet-V2, -Sketch and -C label their images among ImageNet's 1000 classes: each image's WordNet id is matched to
the adapter's class of that name (an adapter over a subset of ImageNet scores the sets' images of its classes; an
image of a class it lacks is refused, naming the classes). ImageNet-R and -A cover 200 classes: as their papers do,
a head over ImageNet's 1000 classes is scored on the 200 logits of those classes only (the argmax among them); a head
over exactly those 200 classes is scored as it is; any other head is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ...data.shift import SUBSET_KINDS, imagenet_classes, subset_classes
from ...engine.loop import Predictions

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputMap:
    """How a set's predictions are scored: ``columns`` (the adapter outputs kept, in the set's class order; None:
    all) and ``labels`` (the adapter's index of each of the set's classes; None: the same index, -1: a class the
    adapter lacks, which has no images)."""

    columns: tuple[int, ...] | None = None
    labels: tuple[int, ...] | None = None

    def apply(self, predictions: Predictions) -> Predictions:
        logits, labels = predictions.logits, predictions.labels
        if self.columns is not None:
            logits = logits[:, list(self.columns)]  # (N, K) -> (N, 200)
        if self.labels is not None:
            labels = torch.tensor(self.labels)[labels]
        return Predictions(logits, labels, predictions.ids)


def _some(names: Sequence[str]) -> str:
    return f"{list(names[:10])}{f' and {len(names) - 10} more' if len(names) > 10 else ''}"


def shifted_output_map(
    kind: str, classes: Sequence[str], labels: Sequence[int], adapter_classes: Sequence[str] | None, num_outputs: int
) -> OutputMap:
    """The :class:`OutputMap` of a shifted set of ``kind`` whose ``classes`` (WordNet ids) its images are labelled
    with (``labels``), for an adapter with ``num_outputs`` outputs named ``adapter_classes`` (None: unnamed)."""
    imagenet = imagenet_classes()
    if adapter_classes is None:
        if num_outputs != len(imagenet):
            raise ValueError(
                f"{kind} labels its images with ImageNet WordNet ids, but the adapter records no class names and has "
                f"{num_outputs} outputs, not ImageNet's {len(imagenet)}: its outputs cannot be matched to the classes"
            )
        logger.warning("the adapter records no class names: its 1000 outputs are taken as ImageNet's classes in order")
        adapter_classes = imagenet
    position = {name: k for k, name in enumerate(adapter_classes)}
    if kind in SUBSET_KINDS:
        subset = subset_classes(kind)
        if sorted(adapter_classes) == sorted(subset):  # a head over exactly the 200 classes
            return OutputMap(labels=tuple(position[name] for name in classes))
        if sorted(adapter_classes) != sorted(imagenet):
            raise ValueError(
                f"{kind} is scored on the {len(subset)} logits of its classes in a head over ImageNet's "
                f"{len(imagenet)} classes (or on a head over exactly those {len(subset)}), but this adapter's head has "
                f"{len(adapter_classes)} classes: {_some(list(adapter_classes))}"
            )
        return OutputMap(columns=tuple(position[name] for name in classes))
    used = sorted(set(labels))
    missing = [classes[k] for k in used if classes[k] not in position]
    if missing:
        raise ValueError(
            f"the {kind} folder has images of WordNet ids that are not among the adapter's classes: {_some(missing)}; "
            f"the adapter's classes are {_some(list(adapter_classes))}"
        )
    if list(adapter_classes) == list(classes):
        return OutputMap()
    return OutputMap(labels=tuple(position.get(name, -1) for name in classes))
