"""The released model on the real test CT (lung2) shown in several windows, as a user's CT
file would be: the template questions of the test split on each lung2 slice, the slice
rendered from the patient's volume in each window, scored against the split's masks.

    python benchmarks/experiments/ct_display.py --model medisee-lite \\
        --manifest outputs/demo/data/manifest.jsonl \\
        --windows lung,abdomen,mediastinum,stretch --json benchmarks/experiments/ct_display.json

The training CT was built in the ``lung`` window, so in that window the slices are the
test split's own images (checked pixel for pixel) and the scores are the evaluation's.
``abdomen`` is what a CT file without a window gets (``medisee.data.io.DEFAULT_CT_WINDOW``),
``stretch`` what a NIfTI file without ``--modality CT`` gets.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from medisee.data.io import (
    ImageMeta,
    MedicalImage,
    display_slice,
    render_display,
    resolve_display,
    stretch_window,
)
from medisee.data.masks import decode_rle
from medisee.data.sources.radiomics import find_sdist, read_volumes
from medisee.inference.predictor import Predictor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="medisee-lite")
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--windows", default="lung,abdomen,stretch")
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    root = Path(args.manifest).parent
    records = [json.loads(line) for line in Path(args.manifest).read_text().splitlines()]
    records = [r for r in records if r["split"] == "test" and r["meta"].get("patient") == "lung2"]
    volume = read_volumes(find_sdist(), ["lung2"])["lung2"].image
    predictor = Predictor.from_pretrained(args.model)
    result: dict = {
        "command": shlex.join(["python", "benchmarks/experiments/ct_display.py", *sys.argv[1:]]),
        "windows": {},
    }
    for window in args.windows.split(","):
        dice: dict[str, list[float]] = defaultdict(list)
        for record in records:
            values = display_slice(volume, 2, int(record["meta"]["index"]))
            displays = resolve_display(window) or (stretch_window(values),)
            meta = ImageMeta(format="nifti", modality="CT")
            image = MedicalImage(render_display(values, displays, meta), values, meta)
            if window == "lung":  # the split's own image, pixel for pixel
                from PIL import Image

                shipped = np.asarray(Image.open(root / record["image"]).convert("RGB"))
                if not np.array_equal(shipped, image.pixels):
                    raise SystemExit(f"{record['image']}: not the lung window's pixels")
            state = predictor.prepare(image)
            asked = [
                (target, qa["question"])
                for target in record["targets"]
                for qa in target.get("qa", [])
                if qa["kind"] == "reasoning"
            ]
            predictions = predictor.predict_batch([(state, question) for _, question in asked])
            for (target, _), prediction in zip(asked, predictions):
                truth = decode_rle(target["mask"]).astype(bool)
                mask = prediction.mask
                overlap = (
                    2 * float((mask & truth).sum()) / max(1.0, float(mask.sum() + truth.sum()))
                )
                dice[target["label"]].append(overlap)
                dice["all"].append(overlap)
        result["windows"][window] = {
            label: {"n": len(values), "dice": round(float(np.mean(values)), 4)}
            for label, values in sorted(dice.items())
        }
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(window, result["windows"][window]["all"], flush=True)


if __name__ == "__main__":
    main()
