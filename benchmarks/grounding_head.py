"""Grounding head cost per training step: the folded ``forward`` vs ``reference_forward``.

    python benchmarks/grounding_head.py [--batch 8] [--repeats 20] [--out results.json]

The ``lite`` preset's head (query 256 -> 128, keys over LiteMedSAM's 256 x 64 x 64
embedding, refiner width 32, two 3x3 layers) on random inputs: forward + backward of a
scalar loss, as one training step runs it. Prints the median seconds of each, and the
largest difference between the two outputs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from medisee.model.grounding import GroundingHead
    from medisee.model.presets import lite

    config = lite()
    torch.manual_seed(0)
    hidden = config.language.hidden_size
    channels, grid = config.mask.prompt_dim, config.mask.embedding_size
    head = GroundingHead(hidden, channels, config.grounding)
    embeddings = torch.randn(args.batch, channels, grid, grid)
    positional = torch.randn(1, channels, grid, grid)
    state = torch.randn(args.batch, hidden, requires_grad=True)

    def step(method) -> float:
        started = time.perf_counter()
        method(state, embeddings, positional).square().mean().backward()
        return time.perf_counter() - started

    result: dict[str, object] = {
        "batch": args.batch,
        "grid": grid,
        "channels": channels,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    for name, method in (("folded", head.forward), ("reference", head.reference_forward)):
        for _ in range(3):  # warm-up
            step(method)
        times = [step(method) for _ in range(args.repeats)]
        result[f"{name}_s"] = round(statistics.median(times), 4)
    with torch.no_grad():
        difference = head(state, embeddings, positional) - head.reference_forward(
            state, embeddings, positional
        )
    result["max_abs_difference"] = float(difference.abs().max())
    print(json.dumps(result, indent=1))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
