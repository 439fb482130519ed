"""Model verbs of the ``medisee`` CLI: ``convert llava-med``, ``export``, ``memory``.

Nothing heavy is imported here: each verb imports its library module when it runs.
"""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    convert = subparsers.add_parser(
        "convert", help="convert public releases into the formats medisee loads"
    )
    kinds = convert.add_subparsers(dest="kind", metavar="<kind>")
    kinds.required = True
    llava = kinds.add_parser(
        "llava-med",
        help="original LLaVA-Med v1.5 (llava_mistral) + CLIP tower -> HF LLaVA directory",
        description=(
            "Convert microsoft/llava-med-v1.5-mistral-7b (original LLaVA layout) and its CLIP "
            "ViT-L/14-336 tower into a transformers LlavaForConditionalGeneration directory, "
            "the language.pretrained_path of the medisee-7b preset."
        ),
    )
    llava.add_argument("--src", required=True, help="the LLaVA-Med release directory")
    llava.add_argument("--clip", required=True, help="the CLIP vision tower directory (HF format)")
    llava.add_argument("--out", required=True, help="output directory")
    llava.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default=None,
        help="output dtype (default: the release's torch_dtype)",
    )
    llava.add_argument(
        "--max-shard-size", type=float, default=5.0, help="GB per safetensors shard (default 5)"
    )
    llava.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    llava.set_defaults(func=_convert_llava_med)

    export = subparsers.add_parser(
        "export",
        help="merge LoRA into the weights and write a standalone checkpoint",
        description=(
            "Merge the LoRA adapters and new-token rows of a trained checkpoint into the base "
            "weights and write a checkpoint that needs neither PEFT nor the base LLaVA directory."
        ),
    )
    export.add_argument(
        "--model",
        required=True,
        help="trained checkpoint (save_pretrained dir), a released model (medisee-lite) or a Hub id",
    )
    export.add_argument("--out", required=True, help="output directory")
    export.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default=None,
        help="dtype of the LLaVA language model in the export (default: as stored)",
    )
    export.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    export.set_defaults(func=_export)

    memory = subparsers.add_parser(
        "memory",
        help="estimate the GPU memory of training a preset (per device)",
        description=(
            "Analytical per-GPU memory of training: bf16 weights, LoRA and trainable heads, "
            "AdamW states and gradients sharded by ZeRO-2, activations with gradient "
            "checkpointing. See medisee.model.memory for every assumption."
        ),
    )
    memory.add_argument("--preset", default="medisee-7b", help="model preset (llava backbone)")
    memory.add_argument("--gpus", type=int, default=4, help="data-parallel GPUs (ZeRO-2 shards)")
    memory.add_argument("--batch", type=int, default=15, help="per-device batch size")
    memory.add_argument(
        "--text-tokens", type=int, default=256, help="text tokens per sample (besides the image)"
    )
    memory.add_argument(
        "--cache-embeddings",
        action="store_true",
        help="SAM image embeddings come from the cache (the SAM encoder does not run)",
    )
    memory.add_argument("--json", action="store_true", help="print the breakdown as JSON")
    memory.set_defaults(func=_memory)


def _convert_llava_med(args: argparse.Namespace) -> int:
    from medisee.model.convert import convert_llava_med

    report = convert_llava_med(
        args.src,
        args.clip,
        args.out,
        dtype=args.dtype,
        max_shard_size=int(args.max_shard_size * 10**9),
        overwrite=args.overwrite,
    )
    print(report.format())
    return 0


def _export(args: argparse.Namespace) -> int:
    from medisee.model.export import export_model
    from medisee.model.released import resolve_model

    report = export_model(
        resolve_model(args.model), args.out, dtype=args.dtype, overwrite=args.overwrite
    )
    print(report.format())
    return 0


def _memory(args: argparse.Namespace) -> int:
    from medisee.model.memory import estimate_training_memory, format_estimate

    estimate = estimate_training_memory(
        preset=args.preset,
        gpus=args.gpus,
        batch_size=args.batch,
        text_tokens=args.text_tokens,
        cache_embeddings=args.cache_embeddings,
    )
    if args.json:
        print(json.dumps(estimate.as_dict(), indent=2))
    else:
        print(format_estimate(estimate))
    return 0
