"""One inference rule of a saved model's ``config.json`` set to each of several values, the
weights unchanged: ``medisee eval`` of each copy on the validation split (and the test
split with ``--test``), generated answers, template and hand-written questions.

    python benchmarks/experiments/inference_rule.py --model outputs/demo/run/model \\
        --manifest outputs/demo/data/manifest.jsonl --cache-dir outputs/demo/embedding_cache \\
        --out outputs/decode_regions --rule grounding.decode_regions --values null,8 --test \\
        --json benchmarks/experiments/decode_regions.json

``--values`` are JSON (``null`` for off). With ``--rule`` a section alone, each value is
a JSON object of that section's fields, and the values are separated by ``;``
(``--rule question_prior --values '{"a": 1, "b": 0};{"a": 0.5, "b": 1}'``). Only
``config.json`` differs between the copies (the weights file is linked), so the
difference is the rules' alone. Each evaluation is
skipped when its output exists, so a stopped run resumes.
"""

from __future__ import annotations

import argparse
import json
import shlex
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
    parser.add_argument(
        "--rule",
        required=True,
        help="section.field, e.g. grounding.peak_margin; or a section (values: JSON objects)",
    )
    parser.add_argument("--values", required=True, help="comma-separated JSON values")
    parser.add_argument("--test", action="store_true", help="the test split too")
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    section, _, field = args.rule.partition(".")
    out = Path(args.out)
    splits = ["val", "test"] if args.test else ["val"]
    command = shlex.join(["python", "benchmarks/experiments/inference_rule.py", *sys.argv[1:]])
    result: dict = {"command": command, "rule": args.rule, "variants": {}}
    for number, text in enumerate(args.values.split(";" if not field else ",")):
        value = json.loads(text)
        tag = f"{field}-{text}" if field else f"{section}-{number}"
        model = with_rule(Path(args.model), section, field, value, out / f"model_{tag}")
        result["variants"][text] = evaluate_splits(
            model, args.manifest, args.cache_dir, out, tag, splits
        )
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
