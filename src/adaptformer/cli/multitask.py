"""``adaptformer predict --adapter A --adapter B ... FILES``: every task's top-k for every file, with one frozen
backbone (:class:`adaptformer.inference.multitask.MultiTaskModel`): images as mixed-task batches, video files through
each video task's recorded test views (as single-adapter predict)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..factory import BackboneSource
    from ..inference.multitask import MultiTaskModel
    from ..saving import AdapterInfo


def load_multitask(args: argparse.Namespace, max_batch: int = 64) -> MultiTaskModel:
    """The multi-task model of every ``--adapter``, each adapter_config.json read once: every adapter checked against
    ``--model.backbone`` when given, the backbone the first one records with the command line's overrides; the tasks
    named as ``--adapter [NAME=]DIR`` names them."""
    from ..inference.evaluate import check_backbone_name
    from ..inference.multitask import MultiTaskModel
    from ..saving import read_adapter_config
    from .args import adapter_names

    infos = [read_adapter_config(directory) for directory in args.adapter]
    if args.backbone is not None:
        for directory, info in zip(args.adapter, infos, strict=True):
            check_backbone_name(directory, info, args.backbone)
    source = backbone_source(args, infos[0])
    return MultiTaskModel.from_adapters(
        args.adapter, names=adapter_names(args), source=source, max_batch=max_batch, infos=infos
    )


def backbone_source(args: argparse.Namespace, info: AdapterInfo) -> BackboneSource | None:
    """The backbone ``info`` records with the backbone group's overrides; None when no flag overrides it."""
    from ..inference.evaluate import overridden_source

    overrides = {"checkpoint": args.checkpoint, "checkpoint_source": args.checkpoint_source,
                 "kwargs": args.model_kwargs, "init_seed": args.init_seed}  # fmt: skip
    given = any(v is not None for v in overrides.values())
    return overridden_source(info, **overrides) if given else None  # None: as the adapter records


def _recorded_precisions(records: dict[str, Any]) -> dict[str, str]:
    return {t: r.training.precision if r.training is not None else "auto" for t, r in records.items()}


def image_precision(given: str | None, recorded: dict[str, str], image_tasks: list[str]) -> str:
    """The precision of the image tasks' shared forward: ``given``, else the one they all recorded (as single-adapter
    predict uses), else auto."""
    shared = {recorded[t] for t in image_tasks}
    return given or (shared.pop() if len(shared) == 1 else "auto")


def serve_precision(model: MultiTaskModel, given: str | None) -> str:
    records = {t: model.task(t).adapter for t in model.tasks}
    return image_precision(given, _recorded_precisions(records), [t for t in model.tasks if not model.task(t).is_video])


def predict_many(args: argparse.Namespace) -> int:
    from ..data import ACCEPTED_FORMATS, ImageDecodeError, load_rgb
    from ..engine.distributed import resolve_device
    from ..inference.evaluate import predict_files, video_settings

    if args.class_names is not None:
        raise ValueError("--class-names names one adapter's classes; with several --adapter each uses its own")
    device = resolve_device(args.device)
    model = load_multitask(args).to(device).eval()
    tasks = model.tasks
    other = [f"{t} ({model.task(t).kind})" for t in tasks if model.task(t).kind in ("multi-label", "segmentation")]
    if other:
        raise ValueError(
            f"predict with several --adapter prints single-label top-k; {', '.join(other)} answer otherwise: predict "
            "each alone, or serve them (adaptformer serve) or use MultiTaskModel.classify"
        )
    records = {t: model.task(t).adapter for t in tasks}
    recorded = _recorded_precisions(records)
    image_tasks = [t for t in tasks if not model.task(t).is_video]
    precision = image_precision(args.precision, recorded, image_tasks)
    answers: list[dict[str, Any]] = [{} for _ in args.files]  # per file: task -> top list, or an error message
    if image_tasks:
        inputs, where = [], []
        for i, path in enumerate(args.files):
            try:  # each file's input tensors, its full-size image dropped at once: memory does not grow with files
                inputs.append(model.prepare(load_rgb(path, formats=ACCEPTED_FORMATS), image_tasks))
                where.append(i)
            except ImageDecodeError as e:
                answers[i].update({t: str(e) for t in image_tasks})
        results = model.classify_inputs(inputs, args.top_k or 5, precision) if inputs else []
        for i, result in zip(where, results, strict=True):
            answers[i].update(result)
    for task in tasks:
        if task in image_tasks:
            continue
        info = model.task(task)
        single = model.task_model(task)
        settings = video_settings(records[task])
        top_k = min(args.top_k or 5, len(info.classes))
        own = args.precision or recorded[task]
        for i, found in enumerate(predict_files(single, args.files, top_k, own, args.device, settings)):
            answers[i][task] = found.error if found.error else [(info.classes[j], j, p) for j, p in found.top]
    return _print(args, tasks, answers)


def _print(args: argparse.Namespace, tasks: tuple[str, ...], answers: list[dict[str, Any]]) -> int:
    failed = 0
    for path, answer in zip(args.files, answers, strict=True):
        per_task = {}
        for task in tasks:
            found = answer[task]
            if isinstance(found, str):
                failed += 1
                per_task[task] = {"error": found}
                if not args.json:
                    print(f"{path} [{task}]: error: {found}")
            else:
                per_task[task] = {"top": [{"class": c, "index": j, "prob": p} for c, j, p in found]}
                if not args.json:
                    print(f"{path} [{task}]: " + ", ".join(f"{c} {p:.3f}" for c, _, p in found))
        if args.json:
            print(json.dumps({"file": str(path), "tasks": per_task}))
    if failed:
        print(f"error: {failed} of {len(args.files) * len(tasks)} (file, task) pairs could not be classified",
              file=sys.stderr)  # fmt: skip
        return 2
    return 0
