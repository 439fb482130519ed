"""Shared by the experiments that score one saved model under several ``medisee eval``
flag sets (``exam_head.py``, ``question_prior.py``): run each evaluation once, read its
generated figures back."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

GROUPS = ("image", "real_structure")


def evaluate(
    model_dir: Path, manifest: str, cache_dir: str, out: Path, split: str, flags: Sequence[str]
) -> Path:
    """``medisee eval`` of ``model_dir`` on ``split`` (generated answers, the shipped
    hand-written questions, no baselines) with ``flags``, into ``out``; skipped when
    ``out`` already holds its ``metrics.json``."""
    if not (out / "metrics.json").exists():
        command = [
            sys.executable, "-m", "medisee", "eval", "--model", str(model_dir),
            "--manifest", manifest, "--split", split, "--out", str(out),
            "--questions", "shipped", "--modes", "generated", "--baselines", "none",
            "--cache-dir", cache_dir, "--batch-size", "16", *flags,
        ]  # fmt: skip
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return out


def with_rule(model: Path, section: str, field: str, value: object, out: Path) -> Path:
    """A copy of ``model`` at ``out`` whose ``config.json`` has ``section.field`` = ``value``
    (with an empty ``field``, ``value`` is a dict of the section's fields to set; the
    weights file linked, not copied); an existing ``out`` is kept as it is."""
    if out.exists():
        return out
    out.mkdir(parents=True)
    for item in model.iterdir():
        target = out / item.name
        if item.is_dir():
            shutil.copytree(item, target)
        elif item.name == "config.json":
            config = json.loads(item.read_text())
            if not isinstance(config.get(section), dict):
                raise SystemExit(f"{model}/config.json has no section {section!r}")
            if field:
                config[section][field] = value
            elif isinstance(value, dict):
                config[section].update(value)
            else:
                raise SystemExit(f"a whole section {section!r} takes a JSON object, got {value!r}")
            target.write_text(json.dumps(config, indent=2))
        else:
            target.symlink_to(item.resolve())
    return out


def evaluate_splits(
    model_dir: Path, manifest: str, cache_dir: str, out: Path, tag: str, splits: Sequence[str]
) -> dict:
    """``evaluate`` of ``model_dir`` on each of ``splits`` into ``out/{tag}_{split}``, then
    ``summarise`` of each: ``{split: summary}``."""
    return {
        split: summarise(
            evaluate(model_dir, manifest, cache_dir, out / f"{tag}_{split}", split, [])
        )
        for split in splits
    }


def summarise(directory: Path) -> dict:
    """The generated rows' overall figures and Dice per group, and how often the exam
    head read the image's kind right (where the rows record it)."""
    metrics = json.loads((directory / "metrics.json").read_text())["summaries"]
    out: dict = {}
    for method, summary in metrics.items():
        if not method.startswith("medisee (generated"):
            continue
        overall = summary["overall"]
        row = {k: overall[k] for k in ("dice", "acc", "named_rate", "plausible_rate", "count")}
        if "by_question" in summary:  # each question once (medisee.evaluate.metrics)
            by_question = summary["by_question"]
            row["by_question"] = {k: by_question[k] for k in ("dice", "named_rate", "count")}
        for group in GROUPS:
            for name, values in summary.get(group, {}).items():
                row[f"{group}:{name}"] = round(values["dice"], 4)
        out[method] = row
    rows = [json.loads(line) for line in (directory / "predictions.jsonl").open()]
    judged = [r for r in rows if "predicted_exam" in r]
    if judged:
        out["exam_accuracy"] = sum(r["predicted_exam"] == r["exam"] for r in judged) / len(judged)
    return out
