"""Does a model find a structure by what it looks like, or by where it sat in training?

Moves one slice up or down inside its frame (rows shifted, the gap filled with the
median of the slice's top row: the air around the patient), asks the same template-free
question ("Segment the <label>.") and scores the mask against the moved ground truth. A
model that has learnt the structure's look keeps its Dice as the slice moves; one that
has learnt where its training patient's structure lay finds it only where the slice puts
it there. Run it on a training patient's held-out (val) slice and on a test patient's.

    python benchmarks/experiments/position_probe.py --model outputs/demo/run/model \
        --manifest outputs/demo/data/manifest.jsonl --label vertebra \
        --image radiomics-lung1-z042 --image radiomics-lung2-z018 --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
from PIL import Image

#: Row shifts tried, in pixels of the slice (positive: down).
SHIFTS = (-120, -60, 0, 60, 120)


def moved(array: np.ndarray, rows: int, fill) -> np.ndarray:
    """``array`` moved down by ``rows`` (up when negative), ``fill`` in the gap."""
    out = np.full_like(array, fill)
    if rows >= 0:
        out[rows:] = array[: array.shape[0] - rows]
    else:
        out[:rows] = array[-rows:]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--label", required=True)
    parser.add_argument("--image", action="append", required=True, help="record id")
    parser.add_argument("--shifts", type=int, nargs="+", default=list(SHIFTS))
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()

    import torch

    from medisee.data.manifest import read_manifest
    from medisee.data.masks import load_mask
    from medisee.evaluate.metrics import mask_scores
    from medisee.inference.predictor import Predictor

    torch.manual_seed(0)
    predictor = Predictor.from_pretrained(args.model)
    root = Path(args.manifest).parent
    records = {record.id: record for record in read_manifest(args.manifest)[0]}
    result: dict = {
        "command": shlex.join(
            ["python", "benchmarks/experiments/position_probe.py", *sys.argv[1:]]
        ),
        "question": f"Segment the {args.label}.",
        "dice": {},
    }
    for record_id in args.image:
        record = records[record_id]
        image = np.asarray(Image.open(root / record.image).convert("L"))
        target = next(t for t in record.targets if t.label == args.label)
        truth = load_mask(target.mask, root, shape=(record.height, record.width)).astype(bool)
        background = int(np.median(image[0]))
        row = {}
        for rows in args.shifts:
            prediction = predictor.predict(result["question"], image=moved(image, rows, background))
            mask = np.asarray(prediction.mask).astype(bool)
            dice = mask_scores(mask, moved(truth, rows, False))[0]
            row[str(rows)] = round(dice, 3)
        result["dice"][record_id] = {"split": record.split, **row}
        print(record_id, record.split, row, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
