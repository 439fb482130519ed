"""Diagnostic: how well does the grounding head localise when the label is given?

Trains ``GroundingHead`` on the bundled data's cached LiteMedSAM embeddings with a learned
embedding of the *ground-truth label* in place of the LM's ``h_det``, so that language is
taken out: what is left is the localisation the head can learn from these features. The
box is read off the map as the model does (``peak_region`` -> ``region_box``) and scored
against the target box in the segmenter input frame, on the test split.

    python benchmarks/probe_grounding.py --demo-dir outputs/demo --steps 600

``--demo-dir`` is a ``medisee demo`` output (its ``data/`` and ``embedding_cache/``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import torch
from torch import nn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo-dir", required=True)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--refine-layers", type=int, default=None, help="default: the preset's")
    parser.add_argument("--refine-dim", type=int, default=None, help="default: the preset's")
    parser.add_argument("--out", default="benchmarks/results/probe_grounding.json")
    args = parser.parse_args()

    from medisee.boxes import box_iou, mask_to_box
    from medisee.data.manifest import read_manifest
    from medisee.data.masks import load_mask
    from medisee.losses import LossWeights, grounding_loss
    from medisee.model.embedding_cache import EmbeddingCache, encoder_fingerprint
    from medisee.model.grounding import GroundingHead, peak_region, region_box
    from medisee.model.mask_decoder import build_segmenter
    from medisee.model.preprocess import SamTransform
    from medisee.model.presets import lite
    from medisee.train.dataset import mask_to_input_frame

    torch.manual_seed(args.seed)
    demo = Path(args.demo_dir)
    records, _ = read_manifest(demo / "data" / "manifest.jsonl")
    config = lite()
    config.grounding = dataclasses.replace(
        config.grounding,
        refine_layers=config.grounding.refine_layers
        if args.refine_layers is None
        else args.refine_layers,
        refine_dim=config.grounding.refine_dim if args.refine_dim is None else args.refine_dim,
    )
    segmenter = build_segmenter(config.mask).eval()
    cache = EmbeddingCache(demo / "embedding_cache", encoder_fingerprint(segmenter))
    positional = segmenter.image_positional_embeddings().detach()
    transform = SamTransform(config.mask.image_size)
    low_res = config.mask.low_res_mask_size
    labels = sorted({t.label for r in records for t in r.targets})
    label_index = {label: i for i, label in enumerate(labels)}

    embeddings, items = {}, {"train": [], "test": []}
    for record in records:
        if record.split not in items:
            continue
        embeddings[record.id] = cache.load(demo / "data" / record.image)
        for target in record.targets:
            mask = load_mask(target.mask, demo / "data", shape=(record.height, record.width))
            items[record.split].append(
                (
                    record.id,
                    label_index[target.label],
                    mask_to_input_frame(mask, transform, low_res),
                )
            )

    head = GroundingHead(config.language.hidden_size, config.mask.prompt_dim, config.grounding)
    label_states = nn.Embedding(len(labels), config.language.hidden_size)
    optimizer = torch.optim.AdamW([*head.parameters(), *label_states.parameters()], lr=args.lr)
    weights = LossWeights()

    def batch(chosen):
        return (
            torch.stack([embeddings[c[0]] for c in chosen]),
            torch.tensor([c[1] for c in chosen]),
            torch.stack([c[2] for c in chosen]),
        )

    @torch.no_grad()
    def evaluate(split: str, per_item: bool = False):
        ious = []
        for start in range(0, len(items[split]), 32):
            image, label, mask = batch(items[split][start : start + 32])
            logits = head(label_states(label), image, positional)
            cells = region_box(peak_region(logits, config.grounding.threshold))
            predicted = cells * (low_res / logits.shape[-1])
            target = torch.tensor(
                [mask_to_box(m.numpy() > 0) or (0, 0, 0, 0) for m in mask], dtype=torch.float32
            )
            ious.append(box_iou(predicted, target))
        iou = torch.cat(ious)
        if per_item:
            return iou.tolist()
        return {"box_iou": float(iou.mean()), "acc": float((iou > 0.5).float().mean())}

    @torch.no_grad()
    def by_label(split: str) -> dict[str, dict[str, float]]:
        score = evaluate(split, per_item=True)
        grouped: dict[str, list[float]] = {}
        for item, iou in zip(items[split], score, strict=True):
            grouped.setdefault(labels[item[1]], []).append(iou)
        return {
            label: {
                "n": len(v),
                "box_iou": sum(v) / len(v),
                "acc": sum(i > 0.5 for i in v) / len(v),
            }
            for label, v in sorted(grouped.items())
        }

    curve, started = [], time.perf_counter()
    for step in range(1, args.steps + 1):
        chosen = torch.randint(len(items["train"]), (args.batch_size,), generator=None)
        image, label, mask = batch([items["train"][i] for i in chosen])
        loss = grounding_loss(head(label_states(label), image, positional), mask, weights).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % args.eval_every == 0 or step == args.steps:
            point = {"step": step, "seconds": time.perf_counter() - started, **evaluate("test")}
            curve.append(point)
            print(json.dumps(point), flush=True)

    result = {
        "what": "grounding head with the ground-truth label (no LM), test split, input frame",
        "command": f"python benchmarks/probe_grounding.py --demo-dir {args.demo_dir} "
        f"--steps {args.steps} --batch-size {args.batch_size} --lr {args.lr} "
        f"--refine-layers {config.grounding.refine_layers} "
        f"--refine-dim {config.grounding.refine_dim}",
        "grounding": dataclasses.asdict(config.grounding),
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        "train_targets": len(items["train"]),
        "test_targets": len(items["test"]),
        "curve": curve,
        "train": evaluate("train"),
        "test_by_label": by_label("test"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result["train"]))


if __name__ == "__main__":
    main()
