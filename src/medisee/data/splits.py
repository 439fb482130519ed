"""Leakage-free, stratified train/val/test splits: every record of one ``source_id`` (one
image or one volume: all its slices) lands in the same split, and each kind of image is
split in the given proportions."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np

from medisee.data.schema import Record

DEFAULT_RATIOS = (0.8, 0.1, 0.1)


def parse_ratios(text: str) -> tuple[float, float, float]:
    """``"0.8,0.1,0.1"`` -> ``(0.8, 0.1, 0.1)`` (validated)."""
    parts = [float(p) for p in text.split(",")]
    if len(parts) != 3:
        raise ValueError(f"split ratios need three numbers train,val,test; got {text!r}")
    return check_ratios(tuple(parts))


def check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    if len(ratios) != 3 or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ValueError(f"split ratios must be three non-negative numbers, got {ratios!r}")
    total = float(sum(ratios))
    return tuple(float(r) / total for r in ratios)  # type: ignore[return-value]


def default_stratum(record: Record) -> str:
    """What a split is stratified by: the source, the modality and, for generated
    images, the generator's kind (``meta["kind"]``): an abdominal CT and a chest CT
    phantom are both "CT" but share no structures."""
    kind = record.meta.get("kind")
    return f"{record.source}/{record.modality}" + (f"/{kind}" if kind else "")


def assign_splits(
    records: Sequence[Record],
    ratios: Sequence[float] = DEFAULT_RATIOS,
    seed: int = 0,
    stratum: Callable[[Record], str] = default_stratum,
) -> dict[str, int]:
    """Set ``record.split`` for all records, grouping by ``source_id`` and stratifying by
    ``stratum`` (a group's stratum is its first record's). Returns records per split.

    Each stratum is split in the given proportions on its own, so every kind of image
    reaches train, val and test (a random split of 13 abdominal CTs once gave train 6,
    val 5, test 2, starving training of the structures only that kind shows). Strata too
    small for every split to get a record (fewer than ``1 / smallest ratio`` records) are
    pooled and split together. Within a split unit, groups are visited largest first
    (ties in a seeded random order), and each goes to the split furthest below its running
    share of the records seen so far, so proportions stay close at every prefix.
    Deterministic for a seed.
    """
    fractions = check_ratios(ratios)
    names = ("train", "val", "test")
    groups: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        groups[record.source_id].append(record)
    keys = sorted(groups)
    rng = np.random.default_rng(seed)
    tie_break = dict(zip(keys, rng.permutation(len(keys)).tolist()))

    strata: dict[str, list[str]] = defaultdict(list)
    for key in keys:
        strata[stratum(groups[key][0])].append(key)
    smallest = min(f for f in fractions if f > 0)
    pooled = "\0pooled"  # sorts before any real stratum name
    units: dict[str, list[str]] = defaultdict(list)
    for name, members in strata.items():
        size = sum(len(groups[key]) for key in members)
        units[name if size * smallest >= 1 else pooled].extend(members)

    counts = dict.fromkeys(names, 0)
    for name in sorted(units):
        unit_counts = [0, 0, 0]
        seen = 0
        ordered = sorted(units[name], key=lambda key: (-len(groups[key]), tie_break[key]))
        for key in ordered:
            group = groups[key]
            seen += len(group)
            deficits = [fractions[k] * seen - unit_counts[k] for k in range(3)]
            # Never start a split whose share is zero; ties go to the earlier split.
            choice = max((k for k in range(3) if fractions[k] > 0), key=lambda k: (deficits[k], -k))
            for record in group:
                record.split = names[choice]
            unit_counts[choice] += len(group)
            counts[names[choice]] += len(group)
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
