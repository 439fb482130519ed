"""The window the real CT slices are shown in: build the demo's data with
``--radiomics-ct-window W``, train the ``lite`` recipe on it, and score the model on the
validation and test splits (generated answers, template and hand-written questions).

    python benchmarks/experiments/ct_window.py --window chest_wide --out outputs/ct_window \\
        --json benchmarks/experiments/ct_window.json

The lung window (-600/1500, the default) shows soft tissue at 0.93 and bone at 1.0 of
the grey range, so bone and muscle look alike; ``chest_wide`` (-160/1150, the chest
phantoms' window) shows them at 0.67 and 0.81+. Each step is skipped when its output
exists, so a stopped run resumes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from eval_variants import evaluate, summarise  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    data, run, cache = out / "data", out / "run", out / "embedding_cache"
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    if not (data / "manifest.jsonl").exists():
        command = [
            sys.executable, "-m", "medisee", "data", "build", "--source", "bundled",
            "--num-images", "150", "--train-qa-variants", "8", "--seed", "0",
            "--radiomics-ct-window", args.window, "--out", str(data), "--no-progress",
        ]  # fmt: skip
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds["data"] = time.perf_counter() - started
    if not (run / "model" / "config.json").exists():
        command = [
            sys.executable, "-m", "medisee", "train", "--model", "lite",
            "--manifest", str(data / "manifest.jsonl"), "--out", str(run),
            "--cache-dir", str(cache),
        ]  # fmt: skip
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds["train"] = time.perf_counter() - started - seconds["data"]
    command = " ".join(["benchmarks/experiments/ct_window.py", *sys.argv[1:]])
    result: dict = {"command": command, "window": args.window, "seconds": seconds}
    for split in ("val", "test"):
        directory = evaluate(
            run / "model", str(data / "manifest.jsonl"), str(cache), out / f"eval_{split}",
            split, [],
        )  # fmt: skip
        result[split] = summarise(directory)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
