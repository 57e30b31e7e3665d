"""``adaptformer serve --adapter A --adapter NAME=B ... [--adapter-root DIR]``: the HTTP service of
:mod:`adaptformer.inference.serve` under uvicorn. Its limits are :class:`~adaptformer.inference.serve.ServeLimits`, one
flag per field; the dynamic adapters of ``--adapter-root`` its
:class:`~adaptformer.inference.serve.adapters.AdapterStore`."""

from __future__ import annotations

import argparse
import logging
import math
import os
from dataclasses import fields
from typing import Any

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'adaptformer[serve]' (fastapi, uvicorn, python-multipart, prometheus-client)"


def _cmd_serve(args: argparse.Namespace) -> int:
    from ..errors import MissingDependencyError

    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401  (/metrics)
        import python_multipart  # noqa: F401  (form uploads)
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise MissingDependencyError(f"serve needs {e.name}, which is not installed: {INSTALL_HINT}") from e
    from ..engine.distributed import resolve_device
    from ..inference.serve import ServeLimits
    from ..inference.serve.adapters import AdapterStore
    from ..inference.serve.app import create_app
    from ..inference.serve.ops import ADMIN_TOKEN_ENV
    from ..inference.serve.server import run
    from .multitask import serve_precision

    if not args.adapter and args.adapter_root is None:
        raise ValueError("serve needs --adapter DIR (one or several) or --adapter-root DIR, or both")
    limits = ServeLimits(**{f.name: getattr(args, f.name) for f in fields(ServeLimits)})
    model, fingerprint = _model(args)
    thresholds = dict(args.threshold)
    for name, value in thresholds.items():
        if name in model.tasks:
            model.set_threshold(name, value)
        elif args.adapter_root is None or not (args.adapter_root / name).is_dir():
            raise ValueError(
                f"--threshold {name}={value:g}: no task {name!r}; the tasks are {list(model.tasks)}"
                + (f" and the adapters of --adapter-root {args.adapter_root}" if args.adapter_root else "")
            )
    model = model.to(resolve_device(args.device)).eval()
    store = AdapterStore(
        model,
        args.adapter_root,
        args.max_resident,
        args.max_cached,
        fingerprint,
        {n: v for n, v in thresholds.items() if n not in model.tasks},
    )
    token = args.admin_token or os.environ.get(ADMIN_TOKEN_ENV) or None
    app = create_app(model, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, limits=limits,
                     precision=serve_precision(model, args.precision), store=store, admin_token=token)  # fmt: skip
    root = f"; adapters of {args.adapter_root} on request" if args.adapter_root else ""
    admin = "admin endpoints on" if token else f"admin endpoints off (no --admin-token or {ADMIN_TOKEN_ENV})"
    print(f"adaptformer serve: {len(model.tasks)} tasks ({', '.join(model.tasks)}){root}; {admin}; on "
          f"http://{args.host}:{args.port}/ (Ctrl-C or SIGTERM stops it)", flush=True)  # fmt: skip
    run(app, args.host, args.port, header_timeout=limits.body_timeout, grace_s=limits.deadline_s + 5)
    return 0


def _model(args: argparse.Namespace) -> tuple[Any, str | None]:
    """The multi-task model of every ``--adapter`` (without any: an empty one on the backbone of the first adapter
    folder of ``--adapter-root``, alphabetically), and the backbone's fingerprint as its adapters record it."""
    from ..inference.evaluate import check_backbone_name
    from ..inference.multitask import MultiTaskModel
    from ..saving import CONFIG_NAME, build_adapter_backbone, read_adapter_config
    from .multitask import backbone_source, load_multitask

    if args.adapter:
        model = load_multitask(args, args.max_batch)
        return model, model.task(model.tasks[0]).adapter.backbone_fingerprint
    found = None
    for candidate in sorted(args.adapter_root.iterdir()):
        folder = candidate if (candidate / CONFIG_NAME).is_file() else candidate / "adapter"
        try:
            found = (folder, read_adapter_config(folder))
            break
        except (OSError, ValueError) as e:  # no folder, a damaged one: the next names the backbone
            logger.warning("--adapter-root: %s does not name the backbone (%s)", candidate.name, e)
    if found is None:
        raise ValueError(f"--adapter-root {args.adapter_root}: no adapter folder in it (DIR/NAME/{CONFIG_NAME} or "
                         f"DIR/NAME/adapter/{CONFIG_NAME}), and no --adapter names the backbone")  # fmt: skip
    first, info = found
    if args.backbone is not None:
        check_backbone_name(first, info, args.backbone)
    backbone = build_adapter_backbone(first, backbone_source(args, info), info=info)
    return MultiTaskModel(backbone, info.spec.backbone, args.max_batch), info.backbone_fingerprint


def _positive(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def _threshold(text: str) -> tuple[str, float]:
    """An argparse type: ``NAME=VALUE``, VALUE a number in (0, 1)."""
    name, sep, value = text.rpartition("=")
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not sep or not name or not 0.0 < number < 1.0:
        raise argparse.ArgumentTypeError(f"expected TASK=VALUE with VALUE in (0, 1), e.g. tags=0.3; got {text!r}")
    return name, number


def add_serve_command(sub: Any) -> None:
    """The ``serve`` subcommand."""
    from ..inference.serve import ServeLimits
    from .args import add_adapter_arguments, at_least, folder_path

    parser = sub.add_parser(
        "serve", help="serve several adapters on one frozen backbone: JSON API + a web page (FastAPI, uvicorn)",
        description="Loads every --adapter on one backbone (and the adapters of --adapter-root on request) and "
        "serves GET /health, /health/live, /health/ready, /metrics (Prometheus), /tasks, /adapters, POST /classify "
        "(multipart 'files', optional 'tasks' comma-separated and 'top_k'), POST and DELETE /adapters/NAME (with "
        "the admin token), and a page at /. Concurrent requests are "
        "batched into mixed-task batches of at most --max-batch samples, waiting at most --max-wait-ms for company. "
        "Accepts PNG, JPEG, WebP, BMP and GIF (first frame), judged by their bytes; every error is "
        '{"error": MESSAGE}. '
        f"Stops on Ctrl-C or SIGTERM. Needs the serve extra: {INSTALL_HINT}.",
    )  # fmt: skip
    add_adapter_arguments(parser, required=False)
    dynamic = parser.add_argument_group("dynamic adapters (GET /adapters, POST and DELETE /adapters/NAME)")
    dynamic.add_argument("--adapter-root", type=folder_path, default=None, metavar="DIR",
                         help="serve every adapter folder under DIR (DIR/NAME or DIR/NAME/adapter) as task NAME, "
                         "loaded on its first request or by POST /adapters/NAME (default: none)")  # fmt: skip
    dynamic.add_argument("--max-resident", type=at_least(1), default=8,
                         help="adapters of --adapter-root on the device at most (LRU; default: 8)")  # fmt: skip
    dynamic.add_argument("--max-cached", type=at_least(0), default=64,
                         help="more adapters kept in host memory, re-attached without reading their folder (LRU; "
                         "default: 64)")  # fmt: skip
    dynamic.add_argument("--admin-token", default=None, metavar="TOKEN",
                         help="bearer token of POST/DELETE /adapters/NAME (default: the ADAPTFORMER_ADMIN_TOKEN "
                         "environment variable, which other users cannot read in the process list; neither: those "
                         "endpoints answer 403)")  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=at_least(0), default=8000, help="port (default: 8000)")
    parser.add_argument("--max-batch", type=at_least(1), default=64, help="samples per batch at most (default: 64)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="batching wait, ms (default: 5)")
    parser.add_argument(
        "--threshold", type=_threshold, action="append", default=[], metavar="TASK=VALUE",
        help="a multi-label task's threshold: the classes whose sigmoid probability reaches it are answered "
        "(repeatable; default: 0.5, as predict)",
    )  # fmt: skip
    limits = parser.add_argument_group("limits (a request over one is refused before it costs more)")
    for f in fields(ServeLimits):
        kind = _positive if f.type == "float" else at_least(1)
        limits.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default,
                            help=f"{f.metadata['help']} (default: {f.default})")  # fmt: skip
    parser.set_defaults(func=_cmd_serve)
