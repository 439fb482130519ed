"""``medisee serve``: the REST API and web page with uvicorn."""

from __future__ import annotations

import argparse
import logging
import os

logger = logging.getLogger(__name__)

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(subparsers: argparse._SubParsersAction) -> None:
    from medisee.serve.settings import ServeSettings

    defaults = ServeSettings()
    serve = subparsers.add_parser(
        "serve",
        help="REST API + web page",
        description="Serve a model: POST /v1/predict, GET / (web page), GET /healthz, "
        "GET /openapi.json. One model worker; requests queue.",
    )
    serve.add_argument(
        "--model",
        default=None,
        help="checkpoint directory, released model name or Hub id (default: the released "
        "medisee-lite)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--device", default="cpu")
    serve.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads; on a small shared CPU 1 can be much faster than several",
    )
    serve.add_argument(
        "--api-key-env",
        default=None,
        metavar="VAR",
        help="require the API key held in this environment variable (X-API-Key header)",
    )
    serve.add_argument("--max-upload-mb", type=float, default=defaults.max_upload_bytes / 2**20)
    serve.add_argument("--max-pixels", type=int, default=defaults.max_pixels)
    serve.add_argument("--timeout", type=float, default=defaults.request_timeout_s, help="s")
    serve.add_argument("--queue-size", type=int, default=defaults.queue_size)
    serve.add_argument("--max-batch-size", type=int, default=defaults.max_batch_size)
    serve.add_argument("--max-sessions", type=int, default=defaults.max_sessions)
    serve.add_argument("--session-ttl", type=float, default=defaults.session_ttl_s, help="s")
    serve.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    serve.add_argument("--docs", action="store_true", help="serve Swagger UI at /docs (CDN JS)")
    serve.add_argument(
        "--no-knowledge",
        dest="knowledge",
        action="store_false",
        help="answer every turn with the fine-tuned model (see medisee chat --help)",
    )
    serve.set_defaults(func=run_serve)


def settings_from_args(args: argparse.Namespace):
    from medisee.serve.settings import ServeSettings

    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise ValueError(f"--api-key-env {args.api_key_env}: the variable is unset or empty")
    return ServeSettings(
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_pixels=args.max_pixels,
        request_timeout_s=args.timeout,
        queue_size=args.queue_size,
        max_batch_size=args.max_batch_size,
        max_sessions=args.max_sessions,
        session_ttl_s=args.session_ttl,
        max_new_tokens=args.max_new_tokens,
        max_new_tokens_limit=max(256, args.max_new_tokens),
        api_key=api_key,
        enable_docs=args.docs,
        knowledge=args.knowledge,
    )


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from medisee.serve.app import create_app

    settings = settings_from_args(args)
    from medisee.model.released import resolve_model

    # Resolved before the server starts, so a bad name fails here and not in the worker.
    model_dir = resolve_model(args.model)
    if args.host not in _LOOPBACK and settings.api_key is None:
        logger.warning(
            "serving on %s without an API key: anyone who can reach it can use it "
            "(use --api-key-env)",
            args.host,
        )
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    app = create_app(model_dir, settings, device=args.device)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
