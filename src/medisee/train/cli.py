"""``medisee train``: a thin layer over ``medisee.train.trainer.train``."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train MediSee (end2end or finetune stage) with Accelerate",
        description="Train on a medisee manifest. Launch with `accelerate launch -m medisee train ...` "
        "for DDP/DeepSpeed; plain `medisee train` runs on one device.",
    )
    parser.add_argument("--config", help="TrainConfig YAML; the flags below override it")
    parser.add_argument("--manifest", help="JSONL manifest (splits taken from its records)")
    parser.add_argument("--output-dir", "--out", dest="output_dir", help="run directory")
    parser.add_argument(
        "--model", help="preset (tiny, lite, medisee-7b) or a saved model directory"
    )
    parser.add_argument("--stage", choices=("end2end", "finetune"))
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--grad-accum", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--warmup-steps", type=int)
    parser.add_argument("--referring-ratio", type=float)
    parser.add_argument(
        "--mask-loss-every", type=int, help="run the mask decoder on every k-th step only"
    )
    parser.add_argument(
        "--mask-prompt",
        choices=("predicted", "target"),
        help="box prompting the mask decoder in training (target = ground truth)",
    )
    parser.add_argument(
        "--group-by-length",
        type=int,
        metavar="STEPS",
        help="sort each window of STEPS steps' samples by length so batches pad little (0: off)",
    )
    parser.add_argument(
        "--repeat-threshold",
        type=float,
        metavar="T",
        help="repeat-factor sampling: rare structures drawn max(1, sqrt(T/f)) times (0: off)",
    )
    parser.add_argument(
        "--grounding-refit-steps",
        type=int,
        metavar="N",
        help="after --max-steps, N steps training the grounding head alone on the fixed LM",
    )
    parser.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"))
    parser.add_argument(
        "--cache-dir", help="embedding cache directory (default: the run's embedding_cache/)"
    )
    parser.add_argument("--save-every", type=int)
    parser.add_argument("--eval-every", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument(
        "--cpu", action="store_true", default=None, help="force CPU even if a GPU is present"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the run's last checkpoint"
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medisee.train.config import TrainConfig
    from medisee.train.trainer import train

    overrides = {
        key: getattr(args, key)
        for key in (
            "manifest",
            "output_dir",
            "model",
            "stage",
            "max_steps",
            "batch_size",
            "grad_accum",
            "lr",
            "warmup_steps",
            "referring_ratio",
            "mask_loss_every",
            "mask_prompt",
            "group_by_length",
            "repeat_threshold",
            "grounding_refit_steps",
            "mixed_precision",
            "cache_dir",
            "save_every",
            "eval_every",
            "seed",
            "cpu",
        )
    }
    if args.config:
        config = TrainConfig.from_yaml(args.config, **overrides)
    else:
        missing = [
            flag
            for flag, key in (("--manifest", "manifest"), ("--output-dir", "output_dir"))
            if not overrides[key]
        ]
        if missing:
            raise ValueError(f"give --config or {' and '.join(missing)}")
        config = TrainConfig.from_dict({k: v for k, v in overrides.items() if v is not None})
    result = train(config, resume=args.resume, progress=not args.no_progress)
    print(
        f"trained {result.steps} steps in {result.seconds:.0f} s; model saved to {result.model_dir}"
    )
    return 0
