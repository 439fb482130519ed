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

# Modules that add verbs, imported when the parser is built (not at import time).
_SUBSYSTEMS = (
    "medisee.data.cli",
    "medisee.model.cli",
    "medisee.train.cli",
    "medisee.evaluate.cli",
    "medisee.inference.cli",
    "medisee.serve.cli",
    "medisee.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medisee",
        description="Medical reasoning segmentation and detection.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>")
    subparsers.required = True
    for module_name in _SUBSYSTEMS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            # A subsystem whose optional extra is not installed adds no verbs.
            logging.getLogger(__name__).debug("skipping %s: %s", module_name, error)
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from medisee.allocator import keep_freed_memory

    keep_freed_memory()
    try:
        result = args.func(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"medisee {args.command}: error: {error}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
