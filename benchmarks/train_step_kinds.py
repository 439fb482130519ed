"""Seconds per training step of each kind, in the real trainer, on a demo build's data.

    python benchmarks/train_step_kinds.py --demo-dir outputs/demo --out runs/step_kinds \
        --steps 100 --refit-steps 40 [--model lite-smollm2] [--refit-cached]

Trains a preset (``lite`` by default) with its demo recipe (cached embeddings, the mask
decoder on every k-th step, ground-truth box prompts) for ``--steps`` joint and
``--refit-steps`` refit steps and prints the median wall seconds of the three kinds of
step: joint without masks, joint with the mask decoder, and grounding refit. Each step is timed from one call of the task to the
next, so it includes loading the batch, the backward pass and the optimizer. The host's
steal share over the run is printed beside them: on a shared machine a median is only as
good as that number.

To compare two versions of the code on the same data, run this file once with each on
``PYTHONPATH`` and compare the printed medians and the saved ``model/`` weights (the same
weights mean the change did not alter the arithmetic).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo-dir", required=True, help="a `medisee demo --out` directory")
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--refit-steps", type=int, default=40)
    parser.add_argument("--model", default="lite", help="preset, trained with its recipe")
    parser.add_argument(
        "--refit-cached",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="refit on cached h_det states (default: the recipe's)",
    )
    parser.add_argument("--json", help="also write the medians here")
    args = parser.parse_args()

    from host_load import cpu_times, steal_fraction

    from medisee.data.manifest import load_records
    from medisee.demo import DemoConfig
    from medisee.train import task as task_module
    from medisee.train.trainer import train

    demo_dir = Path(args.demo_dir)
    manifest = demo_dir / "data" / "manifest.jsonl"
    stamps: list[tuple[float, bool, bool]] = []
    forward = task_module.MediSeeTask.forward

    def timed_forward(self, batch, decode_masks=True, grounding_only=False, det_states=None):
        stamps.append((time.perf_counter(), decode_masks, grounding_only))
        return forward(self, batch, decode_masks, grounding_only, det_states)

    task_module.MediSeeTask.forward = timed_forward
    # The demo's run, shortened; no checkpoint inside the timed steps.
    demo = DemoConfig(model=args.model, steps=args.steps, grounding_refit_steps=args.refit_steps)
    config = dataclasses.replace(
        demo.train_config(manifest, args.out, demo_dir / "embedding_cache"), save_every=10**9
    )
    if args.refit_cached is not None:
        config = dataclasses.replace(config, refit_cached_states=args.refit_cached)
    before = cpu_times()
    started = time.perf_counter()
    train(config, progress=False, records=load_records(manifest))
    seconds = time.perf_counter() - started
    steal = steal_fraction(before, cpu_times())
    task_module.MediSeeTask.forward = forward

    # A step lasts from its task call to the next one; the first few warm caches up.
    spans = [(b[0] - a[0], a[1], a[2]) for a, b in zip(stamps, stamps[1:])]
    kinds = {
        "joint": [
            s for i, (s, masks, refit) in enumerate(spans) if i >= 5 and not masks and not refit
        ],
        "joint_with_masks": [s for s, masks, refit in spans if masks and not refit],
        "refit": [s for s, masks, refit in spans if refit],
    }
    result = {
        "median_s": {k: round(statistics.median(v), 4) for k, v in kinds.items() if v},
        "count": {k: len(v) for k, v in kinds.items()},
        "model": args.model,
        "refit_cached_states": config.refit_cached_states,
        "total_s": round(seconds, 1),
        "host_steal_fraction": None if steal is None else round(steal, 3),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
