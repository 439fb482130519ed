"""Where the demo's evaluation phase spends its time: the same call as ``medisee demo``'s
step 3 (``evaluate_with_baselines`` on the test split, its batch size and the shipped
hand-written questions), on a finished demo directory, under ``cProfile``.

    python benchmarks/profile_demo_eval.py --demo-dir outputs/demo \
        --json benchmarks/results/demo_eval_profile.json

The embedding cache of the demo directory is warm, so the test images are not embedded
again (the demo's own evaluation embeds its 28 test images first). The profiler adds a
few per cent to the wall time.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shlex
import sys
import tempfile
import time
from pathlib import Path

from host_load import cpu_times, print_report, steal_fraction

#: (name in the report, the function's file suffix, its name): cumulative seconds of each.
PARTS = (
    ("generated and teacher-forced answers, template questions", "evaluator.py", "evaluate"),
    ("teacher-forced forward passes", "evaluator.py", "_teacher_forced"),
    ("mask decoder (LiteMedSAM), every pass, the baselines' too", "mask_decoder.py", "decode"),
    ("of which the map region's pieces, decoded one by one", "medisee.py", "_decode_pieces"),
    ("question prior, every question", "medisee.py", "question_label_probabilities"),
    ("of which the whole LM reading unfamiliar questions", "medisee.py", "_whole_lm_label_scores"),
    ("answer generation (LM decoding)", "mllm.py", "generate"),
    ("stray pieces dropped before the answer box", "medisee.py", "_drop_small_pieces"),
    ("baselines (pretrained LiteMedSAM)", "baselines.py", "run_baselines"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo-dir", default="outputs/demo")
    parser.add_argument("--json", help="write the report here too")
    args = parser.parse_args()

    from medisee.demo import DemoConfig
    from medisee.evaluate.handwritten import load_questions
    from medisee.evaluate.pipeline import evaluate_with_baselines

    demo = Path(args.demo_dir)
    config = DemoConfig()
    profile = cProfile.Profile()
    before = cpu_times()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        profile.enable()
        evaluate_with_baselines(
            model_dir=demo / "run" / "model",
            manifest=demo / "data" / "manifest.jsonl",
            split="test",
            out=Path(out),
            max_examples=config.eval_examples,
            batch_size=config.eval_batch_size,
            cache_dir=demo / "embedding_cache",
            questions=load_questions(),
            progress=False,
        )
        profile.disable()
    wall = time.perf_counter() - started
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    cumulative: dict[str, float] = {}
    for name, suffix, function in PARTS:
        cumulative[name] = round(
            sum(
                row[3]
                for (path, _, func), row in stats.items()
                if func == function and path.endswith(suffix)
            ),
            1,
        )
    report = {
        "command": shlex.join(["python", "benchmarks/profile_demo_eval.py", *sys.argv[1:]]),
        "wall_s": round(wall, 1),
        "host_steal_fraction": steal_fraction(before, cpu_times()),
        "cumulative_s": cumulative,
    }
    print_report(report, args.json)


if __name__ == "__main__":
    main()
