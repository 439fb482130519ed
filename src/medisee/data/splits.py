"""Leakage-free train/val/test splits: every record of one ``source_id`` (one image or
one volume: all its slices) lands in the same split."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from medisee.data.schema import Record

DEFAULT_RATIOS = (0.8, 0.1, 0.1)


def parse_ratios(text: str) -> tuple[float, float, float]:
    """``"0.8,0.1,0.1"`` -> ``(0.8, 0.1, 0.1)`` (validated)."""
    parts = [float(p) for p in text.split(",")]
    if len(parts) != 3:
        raise ValueError(f"split ratios need three numbers train,val,test; got {text!r}")
    return check_ratios(tuple(parts))  # type: ignore[arg-type]


def check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    if len(ratios) != 3 or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ValueError(f"split ratios must be three non-negative numbers, got {ratios!r}")
    total = float(sum(ratios))
    return tuple(float(r) / total for r in ratios)  # type: ignore[return-value]


def assign_splits(
    records: Sequence[Record], ratios: Sequence[float] = DEFAULT_RATIOS, seed: int = 0
) -> dict[str, int]:
    """Set ``record.split`` for all records, grouping by ``source_id``.

    Groups are visited largest first (ties in a seeded random order) and each goes to the
    split furthest below its target record count, so proportions come out close even for
    small datasets. Deterministic for a seed. Returns records per split.
    """
    fractions = check_ratios(ratios)
    names = ("train", "val", "test")
    groups: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        groups[record.source_id].append(record)
    keys = sorted(groups)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(keys))
    ranked = sorted(range(len(keys)), key=lambda i: (-len(groups[keys[i]]), int(order[i])))
    total = len(records)
    counts = dict.fromkeys(names, 0)
    for i in ranked:
        members = groups[keys[i]]
        deficits = [fractions[k] * total - counts[name] for k, name in enumerate(names)]
        # Never start a split whose share is zero.
        choice = max(
            (k for k in range(3) if fractions[k] > 0),
            key=lambda k: (deficits[k], -k),
        )
        for record in members:
            record.split = names[choice]
        counts[names[choice]] += len(members)
    return counts


def check_no_leakage(records: Sequence[Record]) -> None:
    """Raise ``ValueError`` if one ``source_id`` appears in two splits."""
    seen: dict[str, str] = {}
    for record in records:
        previous = seen.setdefault(record.source_id, record.split)
        if previous != record.split:
            raise ValueError(
                f"source {record.source_id!r} is in both {previous!r} and {record.split!r}"
            )
