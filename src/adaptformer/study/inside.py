"""What the study's AdaptFormer adapters do inside: the first seed's adapters of each image task inspected on test
images (:func:`adaptformer.inference.inspection.inspect_adapter`), as their evaluation reads them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .run import StudySettings

INSPECT_SAMPLES = 256  # test images each inspected adapter is measured on


def inspect_adapters(runs: Sequence[dict[str, Any]], settings: StudySettings) -> list[dict[str, Any]]:
    """What the AdaptFormer adapters of the first seed do inside
    (:func:`~adaptformer.inference.inspection.inspect_adapter` on ``INSPECT_SAMPLES`` test images of their task, read
    as their evaluation reads them), image tasks only: one record per (task, method)."""
    from torch.utils.data import DataLoader

    from ..data.segmentation import collate_segmentation
    from ..engine.config.parser import parse_data_cli
    from ..engine.splits import DataSpec, load_split
    from ..inference.evaluate import load_trained_model
    from ..inference.inspection import inspect_adapter
    from ..preprocessing import clip_frames

    chosen = [r for r in runs if r["family"] == "adaptformer" and r["seed"] == settings.seeds[0]]
    records, splits = [], {}  # the test split read once per task, built for each adapter's model
    for run in chosen:
        adapter = Path(run["output_dir"]) / "adapter"
        model, info = load_trained_model(adapter)
        if clip_frames(model) is not None or info.training is None:
            continue  # video: the question is asked of the image tasks
        record = info.training
        data = {"dataset": record.dataset, "options": dict(record.dataset_options), "num_workers": 0}
        data |= {"segmentation": record.segmentation} if record.segmentation else {}  # its eval resize
        spec = DataSpec.from_config(parse_data_cli([], data))
        if run["task"] not in splits:
            splits[run["task"]] = load_split(spec, "test")
        test = splits[run["task"]].build(model, "eval")
        collate = collate_segmentation if spec.is_segmentation else None
        loader = DataLoader(test, batch_size=128, collate_fn=collate)
        report = inspect_adapter(model, loader, INSPECT_SAMPLES, device="cpu")
        # the study's method name (e.g. "adaptformer-64-blocks1-3") over the report's method title
        records.append({**report.to_dict(), "task": run["task"], "method": run["method"]})
    return records
