"""Which map regions prompt the mask decoder, and whether the mask is cut to them.

Evaluates one trained model under several ``GroundingConfig`` settings of the
inference-time rules (``seed_threshold``: regions seeded above this logit join the peak's;
``gate_dilation``: the decoded mask is cut to the region grown by this many cells;
``peak_margin``: a weak map is cut this far below its peak). The
weights are the same in every variant: each is the model directory copied with its
``config.json`` changed, scored by ``medisee eval`` (generated answers, the shipped
hand-written questions, no baselines) on the validation and test splits. A variant whose
``metrics.json`` is already in ``--out`` is not evaluated again.

    python benchmarks/experiments/grounding_regions.py --model outputs/demo/run/model \\
        --manifest outputs/demo/data/manifest.jsonl \\
        --cache-dir outputs/demo/embedding_cache --out outputs/grounding_regions \\
        --variants none,none 2,none 4,none 8,none none,1 4,1 8,1 \\
        --json benchmarks/experiments/grounding_regions.json

A variant is ``SEED,GATE`` or ``SEED,GATE,MARGIN`` (``peak_margin``; ``none`` for off). The choice is made on ``val``; ``test`` is
reported beside it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

GROUPS = ("image", "real_structure")


def parse_variant(text: str) -> dict[str, float | int | None]:
    """``SEED,GATE[,MARGIN]`` -> ``GroundingConfig`` fields (``none``: off)."""
    seed, gate, *rest = text.split(",")
    fields: dict[str, float | int | None] = {
        "seed_threshold": None if seed == "none" else float(seed),
        "gate_dilation": None if gate == "none" else int(gate),
    }
    if rest:
        fields["peak_margin"] = None if rest[0] == "none" else float(rest[0])
    return fields


def variant_dir(out: Path, text: str) -> Path:
    return out / ("v_" + text.replace(",", "_"))


def evaluate(args: argparse.Namespace, text: str, split: str) -> Path:
    directory = variant_dir(Path(args.out), text)
    metrics = directory / split / "metrics.json"
    if metrics.exists():
        return metrics
    model = directory / "model"
    if not model.exists():
        shutil.copytree(args.model, model)
        config_path = model / "config.json"
        config = json.loads(config_path.read_text())
        config["grounding"].update(parse_variant(text))
        config_path.write_text(json.dumps(config, indent=2))
    command = [
        sys.executable, "-m", "medisee", "eval", "--model", str(model),
        "--manifest", args.manifest, "--split", split, "--out", str(directory / split),
        "--questions", "shipped", "--modes", "generated", "--baselines", "none",
        "--cache-dir", args.cache_dir, "--batch-size", "16",
    ]  # fmt: skip
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return metrics


def summary(metrics: Path) -> dict[str, dict[str, float]]:
    summaries = json.loads(metrics.read_text())["summaries"]
    generated = summaries["medisee (generated)"]
    rows = {"overall": generated["overall"]}
    for group in GROUPS:
        for value, row in sorted(generated.get(group, {}).items()):
            rows[f"{group}={value}"] = row
    rows["hand-written"] = summaries["medisee (generated, hand-written)"]["overall"]
    return {
        name: {"n": row["count"], "dice": round(row["dice"], 4), "acc": round(row["acc"], 4)}
        for name, row in rows.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a trained model directory")
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--cache-dir", required=True, help="the run's embedding cache")
    parser.add_argument("--out", required=True, help="a directory for the variants' evaluations")
    parser.add_argument("--variants", nargs="+", default=["none,none", "4,1"])
    parser.add_argument("--splits", nargs="+", default=["val", "test"])
    parser.add_argument("--json", help="write the summary here")
    args = parser.parse_args()

    results = {
        text: {split: summary(evaluate(args, text, split)) for split in args.splits}
        for text in args.variants
    }
    report = {
        "command": "python benchmarks/experiments/grounding_regions.py " + " ".join(sys.argv[1:]),
        "variants": "SEED,GATE[,MARGIN]: GroundingConfig.seed_threshold, gate_dilation, "
        "peak_margin (none: off)",
        "results": results,
    }
    for split in args.splits:
        names = list(next(iter(results.values()))[split])
        print(f"== {split} (generated Dice)")
        print(f"{'group':28s}" + "".join(f"{text:>11s}" for text in results))
        for name in names:
            cells = "".join(
                f"{results[text][split].get(name, {}).get('dice', float('nan')):11.3f}"
                for text in results
            )
            print(f"{name:28s}{cells}  n={results[args.variants[0]][split][name]['n']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
