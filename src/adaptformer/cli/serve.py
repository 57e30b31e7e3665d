"""``adaptformer serve --adapter A --adapter B ...``: the HTTP service of :mod:`adaptformer.inference.serve` under
uvicorn. Its limits are :class:`~adaptformer.inference.serve.ServeLimits`, one flag per field."""

from __future__ import annotations

import argparse
import math
from dataclasses import fields
from typing import Any

INSTALL_HINT = "pip install 'adaptformer[serve]' (fastapi, uvicorn, python-multipart)"


def _cmd_serve(args: argparse.Namespace) -> int:
    from ..errors import MissingDependencyError

    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401  (form uploads)
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise MissingDependencyError(f"serve needs {e.name}, which is not installed: {INSTALL_HINT}") from e
    from ..engine.distributed import resolve_device
    from ..inference.serve import ServeLimits
    from ..inference.serve.app import create_app
    from ..inference.serve.server import run
    from .multitask import load_multitask, serve_precision

    limits = ServeLimits(**{f.name: getattr(args, f.name) for f in fields(ServeLimits)})
    model = load_multitask(args, args.max_batch)
    for name, value in args.threshold:
        if name not in model.tasks:
            raise ValueError(f"--threshold {name}={value:g}: no task {name!r}; the tasks are {list(model.tasks)}")
        model.set_threshold(name, value)
    model = model.to(resolve_device(args.device)).eval()
    app = create_app(model, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, limits=limits,
                     precision=serve_precision(model, args.precision))  # fmt: skip
    print(f"adaptformer serve: {len(model.tasks)} tasks ({', '.join(model.tasks)}) on http://{args.host}:{args.port}/"
          " (Ctrl-C or SIGTERM stops it)", flush=True)  # fmt: skip
    run(app, args.host, args.port, header_timeout=limits.body_timeout)
    return 0


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
    from .args import add_adapter_arguments, at_least

    parser = sub.add_parser(
        "serve", help="serve several adapters on one frozen backbone: JSON API + a web page (FastAPI, uvicorn)",
        description="Loads every --adapter on one backbone and serves GET /health, GET /tasks, POST /classify "
        "(multipart 'files', optional 'tasks' comma-separated and 'top_k'), and a page at /. Concurrent requests are "
        "batched into mixed-task batches of at most --max-batch samples, waiting at most --max-wait-ms for company. "
        "Accepts PNG, JPEG, WebP, BMP and GIF (first frame), judged by their bytes; every error is "
        '{"error": MESSAGE}. '
        f"Stops on Ctrl-C or SIGTERM. Needs the serve extra: {INSTALL_HINT}.",
    )  # fmt: skip
    add_adapter_arguments(parser)
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
