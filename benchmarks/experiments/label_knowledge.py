"""The whole pretrained LM's reading of a question (``medisee.model.label_knowledge``), on
one saved model: its question prior gains the familiarity of its training questions and a
knowledge weight, and nothing else changes.

    python benchmarks/experiments/label_knowledge.py --model outputs/demo/run/model \\
        --manifest outputs/demo/data/manifest.jsonl \\
        --cache-dir outputs/demo/embedding_cache --out outputs/label_knowledge \\
        --weights 1 --test --json benchmarks/experiments/label_knowledge.json

For each weight, a copy of ``--model`` is saved whose prior keeps its classifier and adds
the training questions' covariance and largest distance (``fit_familiarity``, on the same
questions the trainer's fit reads), with ``knowledge_weight`` set; ``medisee eval`` then
scores it on the validation split (and the test split with ``--test``), generated answers,
template and hand-written questions. The results also count, per split, how many of the
template and of the hand-written questions the prior finds unfamiliar. Without the
familiarity (``--no-familiarity``) the LM reads every question. Each evaluation is skipped
when its output exists, so a stopped run resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from eval_variants import evaluate_splits  # noqa: E402


def with_knowledge(args: argparse.Namespace, weight: float, out: Path) -> tuple[Path, dict]:
    """``--model`` saved to ``out`` with familiarity (unless ``--no-familiarity``) and
    ``knowledge_weight`` = ``weight``; returns the directory and the fit's figures."""
    stats_path = out / "familiarity.json"
    if (out / "config.json").exists() and stats_path.exists():
        return out, json.loads(stats_path.read_text())
    from medisee.data.manifest import load_records
    from medisee.evaluate.handwritten import load_questions
    from medisee.model.medisee import MediSee
    from medisee.model.question_prior import QuestionPrior, fit_familiarity
    from medisee.train.prior_fit import training_questions

    model = MediSee.from_pretrained(args.model)
    config = model.config.question_prior
    if config is None or model.question_prior is None:
        raise SystemExit(f"{args.model} has no question prior")
    stats: dict = {}
    config = dataclasses.replace(
        config, knowledge_weight=weight, familiarity=not args.no_familiarity
    )
    if config.familiarity:
        records, _ = load_records(args.manifest)
        train = [r for r in records if r.split == "train"]
        drawn = training_questions(train, args.questions, args.seed)
        encoder = model.question_encoder()
        prior = QuestionPrior(config.width, len(model.config.labels), familiarity=True)
        prior.load_state_dict(model.question_prior.state_dict(), strict=False)
        stats["familiar_distance"] = fit_familiarity(
            prior, encoder.encode([question for question, _, _ in drawn])
        )
        stats["training_questions"] = len(drawn)
        for split in ("val", "test"):
            template = sorted(
                {
                    " ".join(qa.question.split())
                    for record in records
                    if record.split == split
                    for target in record.targets
                    for qa in target.qa
                }
            )
            unfamiliar = prior.unfamiliar(encoder.encode(template))
            stats[f"{split}_template_unfamiliar"] = [int(unfamiliar.sum()), len(template)]
        handwritten = [item.question for item in load_questions()]
        unfamiliar = prior.unfamiliar(encoder.encode(handwritten))
        stats["handwritten_unfamiliar"] = [int(unfamiliar.sum()), len(handwritten)]
        model.question_prior = prior
    model.config = dataclasses.replace(model.config, question_prior=config)
    model.save_pretrained(out)
    stats_path.write_text(json.dumps(stats, indent=1))
    return out, stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--weights", default="1")
    parser.add_argument("--no-familiarity", action="store_true")
    parser.add_argument("--questions", type=int, default=20000, help="as the lite recipe")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test", action="store_true", help="the test split too")
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    splits = ["val", "test"] if args.test else ["val"]
    command = shlex.join(["python", "benchmarks/experiments/label_knowledge.py", *sys.argv[1:]])
    result: dict = {"command": command, "variants": {}}
    for weight in [float(w) for w in args.weights.split(",")]:
        tag = f"k{weight:g}" + ("_all" if args.no_familiarity else "")
        model, stats = with_knowledge(args, weight, out / f"model_{tag}")
        result["variants"][tag] = {
            "familiarity": stats,
            **evaluate_splits(model, args.manifest, args.cache_dir, out, tag, splits),
        }
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
