"""One training schedule, measured: train ``lite`` on a demo build's data and cached
embeddings, then evaluate generated + teacher-forced on the test split (no baselines).

    python benchmarks/train_eval_once.py --demo-dir outputs/demo --out runs/sched \
        --steps 400 --lr 1e-3 --ratio 0.5 --mask-every 4 --mask-prompt target

Prints the loss history, seconds per step and the overall metrics, plus how many
generated replies name the right structure in their first sentence ("label acc").
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--ratio", type=float, default=0.7, help="referring ratio")
    parser.add_argument("--mask-every", type=int, default=1, help="mask_loss_every")
    parser.add_argument("--mask-prompt", default="predicted")
    parser.add_argument("--mp", default="no", help="mixed precision")
    parser.add_argument("--group", type=int, default=0, help="group_by_length (steps)")
    parser.add_argument("--repeat", type=float, default=0.0, help="repeat_threshold")
    parser.add_argument("--ground-weight", type=float, default=1.0, help="x L_ground weights")
    parser.add_argument("--answer-weight", type=float, default=1.0, help="answer_tokens weight")
    parser.add_argument("--word-dropout", type=float, default=0.0, help="question_word_dropout")
    parser.add_argument("--refit", type=int, default=0, help="grounding_refit_steps")
    parser.add_argument(
        "--model", default="lite", help="preset, or a saved model directory to continue from"
    )
    parser.add_argument("--eval", type=int, default=60, help="test questions (0: none)")
    parser.add_argument(
        "--overrides",
        default="{}",
        help='model overrides as JSON, e.g. {"language": {"image_grid": 4}}',
    )
    args = parser.parse_args()

    from medisee.allocator import keep_freed_memory

    keep_freed_memory()  # as the CLI does (MEDISEE_DEFAULT_MALLOC=1 leaves glibc alone)

    from medisee.data.manifest import load_records
    from medisee.evaluate.pipeline import evaluate_with_baselines
    from medisee.losses import LossWeights
    from medisee.train.config import TrainConfig
    from medisee.train.trainer import train

    demo = Path(args.demo_dir)
    manifest = demo / "data" / "manifest.jsonl"
    records = load_records(manifest)
    started = time.perf_counter()
    config = TrainConfig(
        manifest=str(manifest),
        output_dir=args.out,
        model=args.model,
        max_steps=args.steps,
        grounding_refit_steps=args.refit,
        question_word_dropout=args.word_dropout,
        batch_size=args.batch,
        lr=args.lr,
        warmup_steps=args.warmup,
        log_every=25,
        save_every=10**6,
        seed=0,
        cache_dir=str(demo / "embedding_cache"),
        cpu=True,
        mask_loss_every=args.mask_every,
        mask_prompt=args.mask_prompt,
        referring_ratio=args.ratio,
        group_by_length=args.group,
        repeat_threshold=args.repeat,
        mixed_precision=args.mp,
        losses=LossWeights(
            ground_bce=args.ground_weight,
            ground_dice=args.ground_weight,
            answer_tokens=args.answer_weight,
        ),
        model_overrides=json.loads(args.overrides),
    )
    result = train(config, records=records, progress=False)
    trained = time.perf_counter()
    for entry in result.history:
        print({k: round(v, 4) for k, v in entry.items()})
    print(
        f"train {trained - started:.1f} s, {(trained - started) / max(1, args.steps + args.refit):.3f} s/step"
    )
    if not args.eval:
        return
    summaries = evaluate_with_baselines(
        model_dir=result.model_dir,
        manifest=manifest,
        split="test",
        out=Path(args.out) / "eval",
        max_examples=args.eval,
        cache_dir=demo / "embedding_cache",
        records=records,
        baselines=(),
        progress=False,
    )
    for name, summary in summaries.items():
        print(name, json.dumps(summary["overall"].as_dict()))
    rows = [json.loads(line) for line in open(Path(args.out) / "eval" / "predictions.jsonl")]
    named = sum(row["label"] in row["reply"].split(".")[0] for row in rows)
    print(f"label acc {named}/{len(rows)}; eval {time.perf_counter() - trained:.1f} s")


if __name__ == "__main__":
    main()
