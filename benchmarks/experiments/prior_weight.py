"""The question prior's weights at inference (``QuestionPriorConfig.weight``, or another
of its fields with ``--field``, such as ``knowledge_weight``): score one saved model with
the field set to each value, on the validation split (and the test split with
``--test``), generated answers, template and hand-written questions.

    python benchmarks/experiments/prior_weight.py --model src/medisee/assets/models/medisee-lite \\
        --manifest outputs/data/manifest.jsonl --cache-dir outputs/embedding_cache \\
        --out outputs/prior_weight --weights 0.5,1,2,4 --json benchmarks/experiments/prior_weight.json

The weight scales the prior's log-probability against the language model's: 1 is the plain
product of the two probabilities; 0 leaves the prior out. Only ``config.json`` differs
between the copies, so the weights are the same model's. Each evaluation is skipped when
its output exists, so a stopped run resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from eval_variants import evaluate_splits, with_rule  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--weights", default="0.5,1,2,4")
    parser.add_argument(
        "--field",
        default="weight",
        choices=("weight", "knowledge_weight"),
        help="the QuestionPriorConfig field to set",
    )
    parser.add_argument("--test", action="store_true", help="the test split too")
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    weights = [float(w) for w in args.weights.split(",")]
    splits = ["val", "test"] if args.test else ["val"]
    command = " ".join(["benchmarks/experiments/prior_weight.py", *sys.argv[1:]])
    result: dict = {"command": command, "variants": {}}
    letter = "w" if args.field == "weight" else "k"
    for weight in weights:
        tag = f"{letter}{weight:g}"
        model = with_rule(
            Path(args.model), "question_prior", args.field, weight, out / f"model_{tag}"
        )
        result["variants"][f"{weight:g}"] = evaluate_splits(
            model, args.manifest, args.cache_dir, out, tag, splits
        )
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
