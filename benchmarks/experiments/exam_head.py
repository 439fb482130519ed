"""Answers constrained to the image's kind of exam: one model, with and without.

Fits the exam head (``medisee.model.exam_head``, what ``medisee train`` now does after its
last step) onto a model trained without one, using the training split's cached image
embeddings, and saves the result beside the original. Both are then scored by ``medisee
eval`` (generated answers, the shipped hand-written questions, no baselines): the new
model with its answers constrained to the labels of the exam kinds its head finds likely,
and with ``--any-exam`` (any trained label, as before). The other weights are the same
in both, so the difference is the constraint's alone. Also reports how often the head
read the kind right, from the rows' ``predicted_exam``.

    python benchmarks/experiments/exam_head.py --model outputs/demo/run/model \\
        --manifest outputs/demo/data/manifest.jsonl \\
        --cache-dir outputs/demo/embedding_cache --out outputs/exam_head \\
        --json benchmarks/experiments/exam_head.json

An evaluation whose ``metrics.json`` is already in ``--out`` is not run again.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from eval_variants import evaluate, summarise

VARIANTS = {"exam": [], "any_exam": ["--any-exam"]}


def fit(args: argparse.Namespace) -> dict:
    from medisee.data.manifest import load_records
    from medisee.model.embedding_cache import EmbeddingCache, encoder_fingerprint
    from medisee.model.medisee import MediSee
    from medisee.train.exam_fit import fit_exams

    target = Path(args.out) / "model"
    stats_path = Path(args.out) / "exam_fit.json"
    if (target / "config.json").exists() and stats_path.exists():
        return json.loads(stats_path.read_text())
    records, root = load_records(args.manifest)
    train = [r for r in records if r.split == "train"]
    model = MediSee.from_pretrained(args.model)
    if model.exam_head is not None:
        raise SystemExit(f"{args.model} already has an exam head")
    cache = EmbeddingCache(args.cache_dir, encoder_fingerprint(model.segmenter))
    stats = fit_exams(model, train, root, cache=cache, per_kind=args.per_kind, seed=0)
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
    parser.add_argument("--per-kind", type=int, default=128)
    parser.add_argument("--json", help="write the comparison here")
    args = parser.parse_args()
    result = {"command": " ".join(sys.argv), "fit": fit(args), "variants": {}}
    for variant in VARIANTS:
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
