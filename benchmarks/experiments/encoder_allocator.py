"""LiteMedSAM encoder time per image with glibc's default allocator vs medisee's settings.

    python benchmarks/encoder_allocator.py default     # glibc as it comes
    python benchmarks/encoder_allocator.py mallopt     # medisee.allocator.keep_freed_memory()

Run each mode in its own process (the thresholds are per process). Prints seconds per image
and the user/system CPU seconds of each call (random 256 x 256 inputs, batch 1 and 4).
"""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "mallopt"
    if mode not in ("default", "mallopt"):
        raise SystemExit("mode must be 'default' or 'mallopt'")
    if mode == "mallopt":
        from medisee.allocator import keep_freed_memory

        if not keep_freed_memory():
            raise SystemExit("mallopt is not available here (glibc only)")
    import torch

    from medisee.model.mask_decoder import build_segmenter
    from medisee.model.presets import lite

    segmenter = build_segmenter(lite().mask).eval()
    pixels = torch.rand(4, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    rows = []
    with torch.no_grad():
        segmenter.embed_images(pixels[:1])  # warm-up
        for batch in (1, 1, 4):
            wall, before = time.perf_counter(), os.times()
            segmenter.embed_images(pixels[:batch])
            after, wall = os.times(), time.perf_counter() - wall
            rows.append(
                {
                    "mode": mode,
                    "batch": batch,
                    "s_per_image": round(wall / batch, 3),
                    "user_s": round(after.user - before.user, 2),
                    "system_s": round(after.system - before.system, 2),
                }
            )
            print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
