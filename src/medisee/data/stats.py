"""Dataset statistics (the paper's Fig. 4 analysis): counts per split, modality, category,
QA kind/perspective/length, question lengths, mask sizes; as JSON, text and a PNG plot."""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medisee.data.schema import Record

#: Question-length histogram bins, in words.
WORD_BINS = (0, 5, 10, 15, 20, 25, 30, 40, 50, 75, 100, 1000)


def compute_stats(records: Sequence[Record]) -> dict[str, Any]:
    """A JSON-ready summary of ``records``."""
    per_split: dict[str, Counter[str]] = defaultdict(Counter)
    categories: dict[str, Counter[str]] = defaultdict(Counter)
    modalities: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    qa_kind: Counter[str] = Counter()
    qa_perspective: Counter[str] = Counter()
    qa_length: Counter[str] = Counter()
    qa_engine: Counter[str] = Counter()
    words: dict[str, list[int]] = defaultdict(list)
    area_fraction: list[float] = []
    sizes: Counter[str] = Counter()
    conversations = 0
    turns = 0
    for record in records:
        per_split[record.split]["images"] += 1
        per_split[record.split]["targets"] += len(record.targets)
        modalities[record.modality] += 1
        sources[record.source] += 1
        sizes[f"{record.height}x{record.width}"] += 1
        if record.conversation:
            conversations += 1
            turns += len(record.conversation)
        for target in record.targets:
            categories[target.label]["targets"] += 1
            categories[target.label]["qa"] += len(target.qa)
            area_fraction.append(target.area / (record.height * record.width))
            for item in target.qa:
                per_split[record.split]["qa"] += 1
                qa_kind[item.kind] += 1
                qa_perspective[item.perspective or "none"] += 1
                qa_length[item.length] += 1
                qa_engine[item.engine] += 1
                n_words = len(item.question.split())
                words[item.length].append(n_words)
                words["all"].append(n_words)

    def summary(values: list[int] | list[float]) -> dict[str, float]:
        if not values:
            return {"count": 0}
        array = np.asarray(values, dtype=np.float64)
        return {
            "count": int(array.size),
            "mean": round(float(array.mean()), 3),
            "median": round(float(np.median(array)), 3),
            "min": round(float(array.min()), 4),
            "max": round(float(array.max()), 4),
        }

    histograms = {
        length: np.histogram(values, bins=WORD_BINS)[0].astype(int).tolist()
        for length, values in words.items()
    }
    return {
        "num_images": len(records),
        "num_targets": sum(len(r.targets) for r in records),
        "num_qa": sum(qa_kind.values()),
        "num_categories": len(categories),
        "splits": {split: dict(counts) for split, counts in sorted(per_split.items())},
        "modalities": dict(modalities.most_common()),
        "sources": dict(sources.most_common()),
        "image_sizes": dict(sizes.most_common(10)),
        "categories": {
            label: dict(counts)
            for label, counts in sorted(categories.items(), key=lambda kv: -kv[1]["targets"])
        },
        "qa": {
            "kind": dict(qa_kind),
            "perspective": dict(qa_perspective),
            "length": dict(qa_length),
            "engine": dict(qa_engine),
        },
        "question_words": {length: summary(values) for length, values in words.items()},
        "question_word_histogram": {"bins": list(WORD_BINS), **histograms},
        "mask_area_fraction": summary(area_fraction),
        "conversations": {"records": conversations, "turns": turns},
    }


def format_stats(stats: dict[str, Any]) -> str:
    """A human-readable report of :func:`compute_stats` output."""
    lines = [
        f"images {stats['num_images']}, targets {stats['num_targets']}, "
        f"categories {stats['num_categories']}, QA items {stats['num_qa']}",
        "splits: "
        + ", ".join(
            f"{k} {v.get('images', 0)} img / {v.get('qa', 0)} qa"
            for k, v in stats["splits"].items()
        ),
        "modalities: " + ", ".join(f"{k} {v}" for k, v in stats["modalities"].items()),
        "sources: " + ", ".join(f"{k} {v}" for k, v in stats["sources"].items()),
        "QA kind: " + ", ".join(f"{k} {v}" for k, v in stats["qa"]["kind"].items()),
        "QA perspective: " + ", ".join(f"{k} {v}" for k, v in stats["qa"]["perspective"].items()),
        "QA length: " + ", ".join(f"{k} {v}" for k, v in stats["qa"]["length"].items()),
    ]
    for length, summary in stats["question_words"].items():
        if summary.get("count"):
            lines.append(
                f"question words ({length}): mean {summary['mean']}, median {summary['median']}, max {summary['max']:.0f}"
            )
    area = stats["mask_area_fraction"]
    if area.get("count"):
        lines.append(
            f"mask area / image area: median {area['median']:.4f} (min {area['min']:.4f}, max {area['max']:.4f})"
        )
    conv = stats["conversations"]
    lines.append(f"conversations: {conv['records']} records, {conv['turns']} turns")
    lines.append("categories (targets / QA):")
    for label, counts in stats["categories"].items():
        lines.append(f"  {label:<32} {counts.get('targets', 0):>5} / {counts.get('qa', 0):>6}")
    return "\n".join(lines)


def plot_stats(stats: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write a PNG: targets and QA per category, question-length histograms, modalities."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt

    categories = stats["categories"]
    labels = list(categories)
    n = max(1, len(labels))
    fig = plt.figure(figsize=(16, max(6.0, 0.17 * n + 2)))
    grid = fig.add_gridspec(2, 3, width_ratios=(1.0, 0.7, 1.1))
    y = np.arange(len(labels))
    ax_cat = fig.add_subplot(grid[:, 0])
    ax_cat.barh(y, [categories[k].get("targets", 0) for k in labels], color="tab:blue")
    ax_cat.set_yticks(y, labels, fontsize=6)
    ax_cat.invert_yaxis()
    ax_cat.set_xlabel("targets (image-mask pairs)")
    ax_cat.set_title("targets per category")
    ax_qa = fig.add_subplot(grid[:, 1], sharey=ax_cat)
    ax_qa.barh(y, [categories[k].get("qa", 0) for k in labels], color="tab:orange")
    ax_qa.tick_params(axis="y", labelleft=False)
    ax_qa.set_xlabel("QA items")
    ax_qa.set_title("QA items per category")
    ax_len = fig.add_subplot(grid[0, 2])
    bins = stats["question_word_histogram"]["bins"]
    centers = np.arange(len(bins) - 1)
    width = 0.4
    for offset, length in ((-width / 2, "short"), (width / 2, "long")):
        counts = stats["question_word_histogram"].get(length)
        if counts:
            ax_len.bar(centers + offset, counts, width=width, label=length)
    ax_len.set_xticks(
        centers, [f"{a}-{b}" for a, b in zip(bins[:-1], bins[1:])], rotation=45, fontsize=7
    )
    ax_len.set_xlabel("question length (words)")
    ax_len.set_ylabel("questions")
    ax_len.legend()
    ax_len.set_title("question lengths")
    ax_mod = fig.add_subplot(grid[1, 2])
    modalities = stats["modalities"]
    ax_mod.bar(list(modalities), list(modalities.values()), color="tab:green")
    ax_mod.set_ylabel("images")
    ax_mod.set_title("modalities")
    ax_mod.tick_params(axis="x", rotation=30, labelsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
