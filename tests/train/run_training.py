"""Subprocess driver for the kill/resume and DDP tests: synthetic records + ``train``.

usage: python run_training.py DATA_DIR OUT_DIR MAX_STEPS SAVE_EVERY [--resume]
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from medisee.train.config import TrainConfig  # noqa: E402
from medisee.train.trainer import train  # noqa: E402
from tests.train.conftest import write_synthetic_records  # noqa: E402


def main() -> None:
    data, out, max_steps, save_every = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    records = write_synthetic_records(Path(data))
    config = TrainConfig(
        manifest=str(Path(data) / "unused.jsonl"),
        output_dir=out,
        model="tiny",
        max_steps=max_steps,
        batch_size=2,
        warmup_steps=2,
        log_every=1,
        save_every=save_every,
        cpu=True,
        eval_every=0,
        keep_checkpoints=3,
    )
    result = train(
        config, resume="--resume" in sys.argv, progress=False, records=(records, Path(data))
    )
    summary = json.dumps({"steps": result.steps, "resumed_from": result.resumed_from})
    # One file per rank as well: two ranks printing to one pipe can interleave their lines.
    rank = os.environ.get("RANK", "0")
    (Path(out) / f"result_rank{rank}.json").write_text(summary)
    print(summary)


if __name__ == "__main__":
    main()
