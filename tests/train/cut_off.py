"""A finished run's directory as a run killed after one of its checkpoints would leave it."""

from __future__ import annotations

import shutil
from pathlib import Path


def cut_off_after(run: Path, cut: Path, step: int) -> Path:
    """Copy the finished run directory ``run`` to ``cut`` as if the run had been killed
    right after its step-``step`` checkpoint: no final model, no later checkpoint, and
    ``checkpoints/latest`` naming step ``step``. Returns ``cut``."""
    shutil.copytree(run, cut)
    shutil.rmtree(cut / "model")
    for later in (cut / "checkpoints").glob("step_*"):
        if int(later.name.split("_")[1]) > step:
            shutil.rmtree(later)
    (cut / "checkpoints" / "latest").write_text(f"step_{step:07d}")
    return cut
