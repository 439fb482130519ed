"""Generated Dice by how close the box that prompted the mask decoder is to the target's.

A run's Dice mixes two things: where the prompt box lands (the grounding map) and what the
mask decoder paints from it. Binning each reply by the IoU of its prompt box with the
target's box separates them: within a bin the prompts are equally good, so a difference
there is the decoder's. The ``lite`` preset answers with the box of the decoded mask
(``ModelConfig.answer_box = "mask"``), so score a copy of each model with ``"prompt"``
in its ``config.json``: the masks are the same, and the box in ``predictions.jsonl`` is
then the prompt. This reads those files (template questions, replies that name the right
structure) and writes per bin the count and mean Dice of each run, phantoms and real
scans apart.

    medisee eval --model COPY --manifest outputs/demo/data/manifest.jsonl --split test \
        --out OUT --modes generated --baselines none --cache-dir outputs/demo/embedding_cache
    python benchmarks/experiments/dice_by_box_iou.py --run L OUT_L/predictions.jsonl \
        --run jitter OUT_J/predictions.jsonl --json benchmarks/experiments/box_jitter_dice_by_iou.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

#: Box IoU bins, lower edge included.
BINS = ((0.0, 0.3), (0.3, 0.5), (0.5, 0.7), (0.7, 0.85), (0.85, 1.0001))


def binned(path: str) -> dict[str, dict[str, dict[str, float]]]:
    """``{image kind: {bin: {"count", "dice"}}}`` of one ``predictions.jsonl``."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["kind"] != "handwritten" and r.get("named")]
    out: dict[str, dict[str, dict[str, float]]] = {}
    for kind in ("phantom", "real"):
        chosen = [r for r in rows if (r["provenance"] == "phantom") == (kind == "phantom")]
        out[kind] = {}
        for low, high in BINS:
            dice = [r["dice"] for r in chosen if low <= r["box_iou"] < high]
            out[kind][f"{low:.2f}-{min(high, 1.0):.2f}"] = {
                "count": len(dice),
                "dice": round(sum(dice) / len(dice), 4) if dice else float("nan"),
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--run", nargs=2, action="append", required=True, metavar=("NAME", "PREDICTIONS")
    )
    parser.add_argument("--json", help="write the table here too")
    args = parser.parse_args()
    result = {
        "command": " ".join(["python", "benchmarks/experiments/dice_by_box_iou.py", *sys.argv[1:]]),
        "runs": {name: binned(path) for name, path in args.run},
    }
    for kind in ("phantom", "real"):
        print(kind)
        for key in result["runs"][args.run[0][0]][kind]:
            cells = [
                f"{name}: n={result['runs'][name][kind][key]['count']:3d} "
                f"dice={result['runs'][name][kind][key]['dice']:.3f}"
                for name, _ in args.run
            ]
            print(f"  box IoU {key}  " + "   ".join(cells))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
