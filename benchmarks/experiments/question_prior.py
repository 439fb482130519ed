"""A question prior on the answer's label: one model, with and without.

Fits the question prior (``medisee.model.question_prior``, what ``medisee train`` now does
after its last step) onto a trained model, from the training split's questions read by
the first layers of SmolLM2-135M-Instruct, and saves the result beside the original.
Both are then scored by ``medisee eval`` (generated answers, the shipped hand-written
questions, no baselines): with the prior weighing the constrained answer's labels, and
with ``--no-question-prior`` (as before). The other weights are the same in both, so the
difference is the prior's alone.

    python benchmarks/experiments/question_prior.py --model outputs/demo/run/model \\
        --manifest outputs/demo/data/manifest.jsonl \\
        --cache-dir outputs/demo/embedding_cache --out outputs/question_prior \\
        --json benchmarks/experiments/question_prior.json

An evaluation whose ``metrics.json`` is already in ``--out`` is not run again.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from eval_variants import evaluate, summarise

VARIANTS = {"prior": [], "no_prior": ["--no-question-prior"]}


def fit(args: argparse.Namespace) -> dict:
    import time

    from medisee.data.manifest import load_records
    from medisee.model.config import QuestionPriorConfig
    from medisee.model.medisee import MediSee
    from medisee.train.prior_fit import fit_prior

    target = Path(args.out) / "model"
    stats_path = Path(args.out) / "prior_fit.json"
    if (target / "config.json").exists() and stats_path.exists():
        return json.loads(stats_path.read_text())
    records, _ = load_records(args.manifest)
    train = [r for r in records if r.split == "train"]
    model = MediSee.from_pretrained(args.model)
    if model.question_prior is not None and not args.refit:
        raise SystemExit(f"{args.model} already has a question prior (--refit replaces it)")
    started = time.perf_counter()
    prior = QuestionPriorConfig(layers=args.layers)
    stats = fit_prior(model, train, questions=args.questions, seed=args.seed, prior=prior)
    stats["seconds"] = time.perf_counter() - started
    model.save_pretrained(target)
    stats_path.write_text(json.dumps(stats, indent=1))
    return stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--splits", nargs="+", default=["val", "test"])
    parser.add_argument("--questions", type=int, default=4000)
    parser.add_argument("--layers", type=int, default=3, help="the encoder's layers read")
    parser.add_argument("--seed", type=int, default=0, help="the draw of the questions")
    parser.add_argument(
        "--refit", action="store_true", help="replace the model's own question prior"
    )
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--json", help="write the comparison here")
    args = parser.parse_args()
    result = {"command": " ".join(sys.argv), "fit": fit(args), "variants": {}}
    for variant in args.variants:
        for split in args.splits:
            directory = evaluate(
                Path(args.out) / "model", args.manifest, args.cache_dir,
                Path(args.out) / variant / split, split, VARIANTS[variant],
            )  # fmt: skip
            summary = summarise(directory)
            result["variants"].setdefault(variant, {})[split] = summary
            print(variant, split, json.dumps(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
