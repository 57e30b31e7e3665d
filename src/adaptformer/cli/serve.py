"""``adaptformer serve --adapter A --adapter B ...``: the HTTP service of :mod:`adaptformer.inference.serve` under
uvicorn."""

from __future__ import annotations

import argparse
from typing import Any

INSTALL_HINT = "pip install 'adaptformer[serve]' (fastapi, uvicorn, python-multipart)"


def _cmd_serve(args: argparse.Namespace) -> int:
    from ..errors import MissingDependencyError

    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401  (form uploads)
        import uvicorn
    except ImportError as e:
        raise MissingDependencyError(f"serve needs {e.name}, which is not installed: {INSTALL_HINT}") from e
    from ..engine.distributed import resolve_device
    from ..inference.serve import create_app
    from .multitask import load_multitask, serve_precision

    model = load_multitask(args, args.max_batch)
    model = model.to(resolve_device(args.device)).eval()
    app = create_app(
        model, args.max_batch, args.max_wait_ms, args.max_upload_mb, serve_precision(model, args.precision)
    )
    print(f"adaptformer serve: {len(model.tasks)} tasks ({', '.join(model.tasks)}) on http://{args.host}:{args.port}/"
          " (Ctrl-C or SIGTERM stops it)", flush=True)  # fmt: skip
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def add_serve_command(sub: Any) -> None:
    """The ``serve`` subcommand."""
    from .args import add_adapter_arguments, at_least

    parser = sub.add_parser(
        "serve", help="serve several adapters on one frozen backbone: JSON API + a web page (FastAPI, uvicorn)",
        description="Loads every --adapter on one backbone and serves GET /health, GET /tasks, POST /classify "
        "(multipart 'files', optional 'tasks' comma-separated and 'top_k'), and a page at /. Concurrent requests are "
        "batched into mixed-task batches of at most --max-batch samples, waiting at most --max-wait-ms for company. "
        f"Stops on Ctrl-C or SIGTERM. Needs the serve extra: {INSTALL_HINT}.",
    )  # fmt: skip
    add_adapter_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=at_least(0), default=8000, help="port (default: 8000)")
    parser.add_argument("--max-batch", type=at_least(1), default=64, help="samples per batch at most (default: 64)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="batching wait, ms (default: 5)")
    parser.add_argument("--max-upload-mb", type=float, default=10.0, help="largest image file, MB (default: 10)")
    parser.set_defaults(func=_cmd_serve)
