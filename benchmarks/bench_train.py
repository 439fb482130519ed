"""Training throughput: samples/s and peak memory of one optimizer step.

    python benchmarks/bench_train.py --preset lite --batch-sizes 4 8 --steps 5

Image embeddings are fed precomputed (as the trainer does with its cache), so this times
the trained part: LM forward/backward, fusion, decoders, AdamW. Results go to
``benchmarks/results/train_<preset>_<device>.json`` and a Markdown table is printed.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from pathlib import Path

import torch


def synthetic_batch(model, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    builder = model.prompt_builder()
    question = "Which organ in this scan stores bile and sits under the right hemidiaphragm?"
    answer = builder.answer_text("It is the liver.", "It lies in the right upper abdomen.")
    encoded = builder.encode([(question, answer)])
    ids = torch.tensor([encoded.input_ids] * batch_size)
    labels = torch.tensor([encoded.labels] * batch_size)
    mask_config = model.config.mask
    low_res = mask_config.low_res_mask_size
    masks = torch.zeros(batch_size, low_res, low_res)
    masks[:, low_res // 4 : low_res // 2, low_res // 3 : 2 * low_res // 3] = 1
    grid = mask_config.embedding_size
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": labels,
        "image_sizes": torch.tensor([[mask_config.image_size] * 2] * batch_size),
        "image_embeddings": torch.randn(batch_size, mask_config.prompt_dim, grid, grid),
        "target_masks": masks,
        "target_boxes": torch.tensor([[0.5, 0.375, 0.33, 0.25]] * batch_size),
    }
    if not model.language.uses_segmenter_embedding:
        batch["pixel_values"] = torch.rand(
            batch_size, 3, mask_config.image_size, mask_config.image_size
        )
    return {k: v.to(device) for k, v in batch.items()}


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    from medisee.losses import LossWeights
    from medisee.model.builder import parameter_report
    from medisee.model.medisee import build_model
    from medisee.model.presets import get_preset
    from medisee.train.task import MediSeeTask

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="lite")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(get_preset(args.preset)).to(device)
    report = parameter_report(model)
    task = MediSeeTask(model, LossWeights()).train()
    optimizer = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=1e-4)
    rows = []
    for batch_size in args.batch_sizes:
        batch = synthetic_batch(model, batch_size, device)
        times = []
        for step in range(args.warmup + args.steps):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            task(batch).total.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if step >= args.warmup:
                times.append(time.perf_counter() - start)
        median = statistics.median(times)
        rows.append(
            {
                "batch_size": batch_size,
                "step_s_median": round(median, 4),
                "samples_per_s": round(batch_size / median, 2),
                "peak_memory_mib": round(peak_memory_mib(device), 1),
                "sequence_length": int(batch["input_ids"].shape[1]),
            }
        )
        print(
            f"batch {batch_size}: {median:.3f} s/step, {batch_size / median:.2f} samples/s",
            flush=True,
        )
    result = {
        "preset": args.preset,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "trainable_parameters": report.total_trainable,
        "frozen_parameters": report.total_frozen,
        "rows": rows,
        "note": "image embeddings precomputed (as with the trainer's cache); peak memory is the "
        "process max RSS on CPU, torch.cuda.max_memory_allocated on GPU",
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"train_{args.preset}_{device.type}.json"
    path.write_text(json.dumps(result, indent=1))
    print(
        "\n| preset | device | batch | s/step | samples/s | peak MiB |\n|---|---|---:|---:|---:|---:|"
    )
    for row in rows:
        print(
            f"| {args.preset} | {result['device']} | {row['batch_size']} | {row['step_s_median']} | "
            f"{row['samples_per_s']} | {row['peak_memory_mib']} |"
        )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
