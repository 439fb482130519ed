"""The ``medisee`` command line: verbs mapped to library functions.

Each subsystem owns its verbs in a ``cli.py`` of its own with a ``register(subparsers)``
function; this module only assembles them, so ``main(argv)`` is callable from tests and
importing it loads no model, dataset or server.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# Modules that add verbs, imported when the parser is built (not at import time). They
# import only the standard library at module level: a verb imports what it needs when it
# runs, so a missing optional extra fails that verb alone.
SUBSYSTEMS = (
    "medisee.data.cli",
    "medisee.model.cli",
    "medisee.train.cli",
    "medisee.evaluate.cli",
    "medisee.inference.cli",
    "medisee.serve.cli",
    "medisee.demo",
    "medisee.release.cli",
)

#: top-level module of an optional dependency -> the extra that installs it
EXTRA_OF_MODULE = {
    "accelerate": "train",
    "tensorboard": "train",
    "fastapi": "serve",
    "uvicorn": "serve",
    "multipart": "serve",
    "python_multipart": "serve",
    "nibabel": "data",
    "pydicom": "data",
    "nilearn": "data",
    "pycocotools": "data",
    "skimage": "data",
    "scipy": "data",
    "matplotlib": "data",
    "httpx": "data",
}


def missing_extra_message(error: ModuleNotFoundError) -> str | None:
    """The install hint for an optional dependency that is missing, or ``None`` when the
    missing module is medisee's own (a broken install or a bug: re-raise it)."""
    missing = (error.name or "").split(".")[0]
    if not missing or missing == "medisee":
        return None
    extra = EXTRA_OF_MODULE.get(missing, "all")
    return (
        f"{missing!r} is not installed: install medisee[{extra}] (pip install 'medisee[{extra}]')"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medisee",
        description="Medical reasoning segmentation and detection.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>")
    subparsers.required = True
    for module_name in SUBSYSTEMS:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from medisee.allocator import tune_from_environment

    try:
        tune_from_environment()
        result = args.func(args)
    except ModuleNotFoundError as error:
        hint = missing_extra_message(error)
        if hint is None:
            raise
        print(f"medisee {args.command}: error: {hint}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as error:
        print(f"medisee {args.command}: error: {error}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
