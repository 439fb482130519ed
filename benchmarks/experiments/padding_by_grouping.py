"""How many padded tokens a batch carries, with and without length grouping.

Draws the training sampler's stream over a demo build (the real bundled sequences, tokenised
by the trained model's tokenizer) and counts, per batch, real tokens and the padded width
times the batch size, for several ``group_by_length`` windows. Tokens, not seconds: the LM's
cost per step is proportional to the padded width.

    python benchmarks/padding_by_grouping.py --demo-dir outputs/demo
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo-dir", required=True, help="a `medisee demo` output directory")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--ratio", type=float, default=0.3, help="referring ratio")
    parser.add_argument("--windows", type=int, nargs="+", default=[0, 8, 16, 32])
    parser.add_argument("--out", default="benchmarks/results/padding_by_grouping.json")
    args = parser.parse_args()

    from medisee.data.manifest import read_manifest
    from medisee.model.medisee import MediSee
    from medisee.train.dataset import MediSeeDataset, MixedSampler

    demo = Path(args.demo_dir)
    records, _ = read_manifest(demo / "data" / "manifest.jsonl")
    records = [r for r in records if r.split == "train"]
    model = MediSee.from_pretrained(demo / "run" / "model")
    dataset = MediSeeDataset(records, demo / "data", model.prompt_builder(), 256, 256)
    lengths = dataset.text_lengths()
    tokens: dict[int, int] = {}

    def token_count(index: int) -> int:
        if index not in tokens:
            ref = dataset.examples[index]
            item = dataset.records[ref.record].targets[ref.target].qa[ref.qa]
            ids, _ = dataset._encode(item.question, item.answer, item.explanation)
            tokens[index] = len(ids)
        return tokens[index]

    rows = []
    for window in args.windows:
        sampler = MixedSampler(
            dataset.indices_of("referring"),
            dataset.indices_of("reasoning"),
            args.ratio,
            seed=0,
            length=args.batch_size * args.batches,
            lengths=lengths if window else None,
            group_steps=window,
            step_draws=args.batch_size,
        )
        draws = list(sampler)
        padded = real = 0
        for start in range(0, len(draws), args.batch_size):
            counts = [token_count(i) for i in draws[start : start + args.batch_size]]
            padded += max(counts) * len(counts)
            real += sum(counts)
        row = {
            "group_by_length": window,
            "padded_tokens_per_batch": padded / args.batches,
            "real_tokens_per_batch": real / args.batches,
            "padding_fraction": 1 - real / padded,
        }
        rows.append(row)
        print(json.dumps(row))
    result = {
        "what": "tokens per batch of the training sampler, by length-grouping window",
        "command": f"python benchmarks/padding_by_grouping.py --demo-dir {args.demo_dir} "
        f"--batch-size {args.batch_size} --batches {args.batches} --ratio {args.ratio}",
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
