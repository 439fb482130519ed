"""``medisee eval``: score a model (generated + teacher-forced) and the baselines."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a model and baselines on a manifest split",
        description="Dice, gIoU, cIoU, box IoU and Acc@0.5 by split, query length, perspective and "
        "category; generated evaluation is the headline, teacher-forced is reported beside it.",
    )
    parser.add_argument(
        "--model",
        required=True,
        help="saved model directory, a released model (medisee-lite) or a Hub id",
    )
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument(
        "--out", required=True, help="directory for metrics.json/.md and predictions.jsonl"
    )
    parser.add_argument(
        "--kinds", default="reasoning", help="comma-separated QA kinds (reasoning,referring)"
    )
    parser.add_argument("--modes", default="generated,teacher_forced")
    parser.add_argument(
        "--baselines",
        default="whole_image_box,label_match,oracle_box",
        help="comma-separated, or 'none'",
    )
    parser.add_argument(
        "--prior-split",
        default="train",
        help="split the label-match baseline learns box priors from",
    )
    parser.add_argument(
        "--questions",
        metavar="FILE",
        help="also score hand-written questions (JSONL of label + question) on the split's "
        "images of their labels; 'shipped' for the set that ships with medisee",
    )
    parser.add_argument(
        "--free-answers",
        action="store_true",
        help="generate answer sentences freely (default: each names one of the structures "
        "the model was trained on)",
    )
    parser.add_argument(
        "--any-exam",
        action="store_true",
        help="let a constrained answer name any trained structure (default: with an exam "
        "head, only those trained on the image's kind of exam)",
    )
    parser.add_argument(
        "--no-question-prior",
        action="store_true",
        help="do not weigh a constrained answer's labels by the question prior (default: "
        "with one, they are)",
    )
    parser.add_argument("--max-examples", type=int)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--cache-dir", help="embedding cache directory (reused across runs)")
    parser.add_argument("--device", default="cpu")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medisee.evaluate.handwritten import load_questions
    from medisee.evaluate.pipeline import evaluate_with_baselines

    questions = None
    if args.questions:
        questions = load_questions(None if args.questions == "shipped" else args.questions)

    # Flags passed through as they are.
    same = ("manifest", "split", "prior_split", "max_examples", "batch_size", "cache_dir", "device")
    report = evaluate_with_baselines(
        model_dir=args.model,
        out=Path(args.out),
        kinds=args.kinds.split(","),
        modes=args.modes.split(","),
        baselines=[] if args.baselines == "none" else args.baselines.split(","),
        questions=questions,
        constrain_answer=not args.free_answers,
        constrain_to_exam=not args.any_exam,
        question_prior=not args.no_question_prior,
        **{name: getattr(args, name) for name in same},
    )
    print((Path(args.out) / "metrics.md").read_text())
    print(json.dumps({k: v["overall"].as_dict() for k, v in report.items()}, indent=1))
    return 0
