"""``medisee release``: the released checkpoint, from ``medisee demo`` (``build``)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "release",
        help="run the demo and pack its model as the released medisee-lite",
        description="Run `medisee demo` with its defaults, pack its model as a release "
        "(fp16, without the upstream LiteMedSAM encoders), evaluate the packed weights on "
        "the test split, score the check items and write release.json and MODEL_CARD.md.",
    )
    parser.add_argument("--demo-dir", default="outputs/demo", help="the demo's output directory")
    parser.add_argument(
        "--skip-demo",
        action="store_true",
        help="reuse the finished demo in --demo-dir instead of running it",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="where to write (default: the package's assets/models/medisee-lite)",
    )
    parser.add_argument("--dtype", default="float16", help="float16, bfloat16 or float32")
    parser.add_argument(
        "--refresh",
        action="store_true",
        help="keep the release's weights, set its inference-only rules to the preset's "
        "current values and measure it again on --demo-dir's test split",
    )
    parser.set_defaults(func=run_release)


def run_release(args: argparse.Namespace) -> int:
    from medisee.release.build import ReleaseConfig, build_release, refresh_release

    config = ReleaseConfig(
        demo_dir=args.demo_dir, out_dir=args.out, run_demo=not args.skip_demo, dtype=args.dtype
    )
    if args.refresh:
        refresh_release(config)
    else:
        build_release(config)
    return 0
