"""adaptformer 0.1 configurations (one flat mapping: ``dataset: cifar100``, ``bottleneck: 64``, ``adapter_scale:
0.1``, ...) read as their 0.2 nesting, so that 0.1 recipes and run ``config.yaml`` files keep working.

Every 0.1 key has one place in 0.2 (``V01_KEYS``). 0.1 wrote all its method fields into every file and read only
those of the chosen method, so the others are dropped (with a warning when they differ from 0.1's default). The glibc
allocator option is gone (measured no faster): its "auto"/"default" values are dropped, "tuned" is refused with the
reason.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

# 0.1 key -> its 0.2 place (dotted); "model.method.<field>" keys belong to the method named by `method`.
V01_KEYS: dict[str, str] = {
    "model": "model.backbone", "model_kwargs": "model.kwargs", "head": "model.head", "checkpoint": "model.checkpoint",
    "checkpoint_source": "model.checkpoint_source", "drop_path": "model.drop_path",
    "dataset": "data.dataset", "data_dir": "data.data_dir", "dataset_options": "data.options",
    "verify_checksums": "data.verify_checksums", "skip_bad_images": "data.skip_bad_images",
    "skip_bad_videos": "data.skip_bad_videos", "val_split": "data.val_split", "split_seed": "data.split_seed",
    "num_workers": "data.num_workers", "crop_scale": "data.crop_scale", "flip": "data.flip",
    "num_frames": "data.video.num_frames", "sampling": "data.video.sampling",
    "sampling_stride": "data.video.sampling_stride", "test_clips": "data.video.test_clips",
    "test_crops": "data.video.test_crops",
    "epochs": "optim.epochs", "warmup_epochs": "optim.warmup_epochs", "batch_size": "optim.batch_size",
    "effective_batch": "optim.effective_batch", "eval_batch_size": "optim.eval_batch_size",
    "optimizer": "optim.optimizer", "blr": "optim.blr", "lr": "optim.lr", "min_lr": "optim.min_lr",
    "momentum": "optim.momentum", "betas": "optim.betas", "weight_decay": "optim.weight_decay",
    "clip_grad": "optim.clip_grad", "precision": "optim.precision",
    "frozen_dtype": "speed.frozen_dtype", "attention": "speed.attention",
    "frozen_backward": "speed.frozen_backward", "class_token_tail": "speed.class_token_tail",
    "grad_checkpointing": "speed.grad_checkpointing", "compile": "speed.compile",
    "device": "run.device", "seed": "run.seed", "output_dir": "run.output_dir", "select": "run.select",
    "eval_every": "run.eval_every", "save_every_steps": "run.save_every_steps", "log_every": "run.log_every",
    "tensorboard": "run.tensorboard", "resume": "run.resume", "stop_after_steps": "run.stop_after_steps",
    "recipe": "run.recipe",
}  # fmt: skip
# 0.1's method fields: 0.1 key -> (method, 0.2 field, 0.1 default)
V01_METHOD_KEYS: dict[str, tuple[str, str, Any]] = {
    "bottleneck": ("adaptformer", "bottleneck", 64),
    "adapter_scale": ("adaptformer", "scale", 0.1),
    "adapter_dropout": ("adaptformer", "dropout", 0.1),
    "adapter_form": ("adaptformer", "form", "parallel"),
    "adapter_layers": ("adaptformer", "layers", None),
    "vpt_tokens": ("vpt", "num_tokens", 1),
    "vpt_deep": ("vpt", "deep", True),
}
REMOVED = {"allocator": ("auto", "default"), "frozen_prefix": ("auto", "on", "off")}  # key -> values dropped
# every 0.1 key -> the 0.2 command-line flag, for the message a 0.1 flag gets
V01_FLAGS: dict[str, str] = {
    **{key: f"--{place}" for key, place in V01_KEYS.items()},
    "method": "--model.method",
    **{key: f"--model.method.{name}" for key, (_, name, _) in V01_METHOD_KEYS.items()},
    "allocator": "gone (the glibc allocator tuning measured no faster; see BENCHMARKS.md)",
    "frozen_prefix": "gone (autograd already records nothing for frozen blocks with frozen input; see BENCHMARKS.md)",
}


def is_v01(data: dict[str, Any]) -> bool:
    """Whether ``data`` is a 0.1 flat configuration: a 0.1 key at the top level ("model" as a name, not a section)."""
    if isinstance(data.get("model"), str):
        return True
    return any(k != "model" and (k in V01_KEYS or k in V01_METHOD_KEYS or k in ("method", *REMOVED)) for k in data)


def place(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Put ``value`` at the dotted key in nested ``tree`` (sections created as needed)."""
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def upgrade_v01(data: dict[str, Any], where: str = "configuration") -> dict[str, Any]:
    """The 0.2 nested mapping of a 0.1 flat one; ValueError naming the key for what has no 0.2 equivalent."""
    method = data.get("method", "adaptformer")
    nested: dict[str, Any] = {"model": {"method": {"name": method}}}
    for key, value in data.items():
        if key == "method":
            continue
        if key in REMOVED:
            if value not in REMOVED[key]:
                raise ValueError(f"{where}: {key}: {value!r} was removed in 0.2 ({V01_FLAGS[key]}); delete the line")
            logger.warning("%s: %s: %r dropped: the option is %s", where, key, value, V01_FLAGS[key])
            continue
        if key in V01_METHOD_KEYS:
            owner, name, default = V01_METHOD_KEYS[key]
            if owner == method:
                nested["model"]["method"][name] = value
            elif value != default:  # 0.1 wrote every method's fields and read only its own method's
                logger.warning("%s: %s: %r dropped (0.1 ignored it: it applies to method %r, not %r)", where, key,
                               value, owner, method)  # fmt: skip
            continue
        if key not in V01_KEYS:
            raise ValueError(
                f"{where}: unknown key {key!r} in a flat (0.1) configuration; 0.2 configurations are nested "
                "(model, data, optim, speed, run): see `adaptformer recipes --show NAME` for an example"
            )
        place(nested, V01_KEYS[key], value)
    return nested
