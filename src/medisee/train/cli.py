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
    parser.add_argument(
        "--config",
        help="TrainConfig YAML over its preset's recipe; the flags below override both",
    )
    parser.add_argument("--manifest", help="JSONL manifest (splits taken from its records)")
    parser.add_argument("--output-dir", "--out", dest="output_dir", help="run directory")
    parser.add_argument(
        "--model",
        help="preset (tiny, lite, medisee-7b; default lite), trained with its recipe "
        "(medisee.train.recipes), or a saved model directory",
    )
    parser.add_argument(
        "--language-path", help="local HF directory of the MLLM (medisee-7b: LLaVA-Med)"
    )
    parser.add_argument(
        "--segmenter-weights", help="local segment-anything-format checkpoint (MedSAM ViT-B)"
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
    parser.add_argument(
        "--ema-decay",
        type=float,
        metavar="D",
        help="average the weights over each phase (EMA, decay D in (0, 1), horizon ~1/(1-D) "
        "steps) and keep the average",
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


#: ``TrainConfig`` fields that have a flag of the same name
OVERRIDABLE = (
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
    "ema_decay",
    "mixed_precision",
    "cache_dir",
    "save_every",
    "eval_every",
    "seed",
    "cpu",
    "language_path",
    "segmenter_weights",
)


def config_from_args(args: argparse.Namespace):
    """The run's ``TrainConfig``: the preset's recipe, the ``--config`` YAML over it, and
    the given flags over both."""
    from medisee.train.recipes import config_from_yaml, recipe_config

    overrides = {key: getattr(args, key) for key in OVERRIDABLE}
    if args.config:
        return config_from_yaml(
            args.config,
            manifest=args.manifest,
            output_dir=args.output_dir,
            model=args.model,
            **overrides,
        )
    missing = [
        flag
        for flag, value in (("--manifest", args.manifest), ("--output-dir", args.output_dir))
        if not value
    ]
    if missing:
        raise ValueError(f"give --config or {' and '.join(missing)}")
    return recipe_config(args.model or "lite", args.manifest, args.output_dir, **overrides)


def run(args: argparse.Namespace) -> int:
    from medisee.train.trainer import train

    config = config_from_args(args)
    result = train(config, resume=args.resume, progress=not args.no_progress)
    print(
        f"trained {result.steps} steps in {result.seconds:.0f} s; model saved to {result.model_dir}"
    )
    return 0
