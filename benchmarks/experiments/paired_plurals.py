"""A paired structure asked for in the plural ("Where are the lungs?"), scored against both
sides' masks, beside the same structure asked for in the singular ("Where is the lung?",
one side: what the plural got before ``medisee.inference.paired``).

    python benchmarks/experiments/paired_plurals.py --model medisee-lite \\
        --manifest outputs/demo/data/manifest.jsonl --split test \\
        --json benchmarks/experiments/paired_plurals.json

Every image of the split with both sides of a paired structure as targets; the Dice of
each reply's mask against the union of the two sides' masks, per structure.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from medisee.data.masks import decode_rle
from medisee.data.ontology import SIDES, Ontology
from medisee.inference.predictor import Predictor

_PLURALS = {"lung": "lungs"}  # else the name with an "s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="medisee-lite")
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    ontology = Ontology.load()
    predictor = Predictor.from_pretrained(args.model)
    root = Path(args.manifest).parent
    dice: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for line in Path(args.manifest).read_text().splitlines():
        record = json.loads(line)
        if record["split"] != args.split:
            continue
        targets = {target["label"]: target for target in record["targets"]}
        for name, category in ontology.categories.items():
            sides = [targets.get(f"{side} {name}") for side in SIDES]
            if not category.paired or None in sides:
                continue
            truth = np.logical_or.reduce([decode_rle(t["mask"]).astype(bool) for t in sides])
            predictor.set_image(root / record["image"])
            plural = _PLURALS.get(name, f"{name}s")
            for form, question in (
                ("plural", f"Where are the {plural}?"),
                ("singular", f"Where is the {name}?"),
            ):
                mask = predictor.predict(question).mask
                overlap = 2 * float((mask & truth).sum()) / float(mask.sum() + truth.sum())
                dice[name][form].append(overlap)
    result = {
        "command": shlex.join(
            ["python", "benchmarks/experiments/paired_plurals.py", *sys.argv[1:]]
        ),
        "structures": {
            name: {
                "images": len(forms["plural"]),
                **{form: round(float(np.mean(values)), 4) for form, values in forms.items()},
            }
            for name, forms in sorted(dice.items())
        },
    }
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
