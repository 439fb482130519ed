"""Stratified, leakage-free splits (``medisee.data.splits``)."""

from collections import Counter

import pytest

from medisee.data.schema import Record, Target
from medisee.data.splits import assign_splits, check_no_leakage, default_stratum


def _record(name: str, modality: str, source_id: str | None = None, kind: str | None = None):
    target = Target("liver", {"size": [4, 4], "counts": "0@"}, (0, 0, 1, 1), 1)
    meta = {"kind": kind} if kind else {}
    return Record(
        name, f"{name}.png", modality, "src", source_id or name, 4, 4, [target], meta=meta
    )


def _per_stratum(records):
    counts = Counter((default_stratum(r), r.split) for r in records)
    return {key: counts[key] for key in counts}


def test_every_stratum_is_split_in_proportion():
    # 13 of one kind and 40 of another: a plain random split can starve a small kind.
    records = [_record(f"ab{i}", "CT", kind="abdominal_ct") for i in range(13)]
    records += [_record(f"cx{i}", "X-ray", kind="chest_xray") for i in range(40)]
    counts = assign_splits(records, (0.8, 0.1, 0.1), seed=3)
    assert sum(counts.values()) == 53
    per = _per_stratum(records)
    assert per[("src/CT/abdominal_ct", "train")] in (10, 11)
    assert per[("src/CT/abdominal_ct", "val")] >= 1 and per[("src/CT/abdominal_ct", "test")] >= 1
    assert per[("src/X-ray/chest_xray", "train")] == 32
    assert per[("src/X-ray/chest_xray", "val")] == per[("src/X-ray/chest_xray", "test")] == 4


def test_groups_stay_together_and_the_split_is_deterministic():
    records = [_record(f"v{v}s{s}", "CT", source_id=f"vol{v}") for v in range(12) for s in range(3)]
    assign_splits(records, seed=0)
    check_no_leakage(records)
    first = [r.split for r in records]
    assert set(first) == {"train", "val", "test"}
    assign_splits(records, seed=0)
    assert [r.split for r in records] == first
    assign_splits(records, seed=1)
    assert Counter(r.split for r in records) == Counter(first)


def test_strata_too_small_to_split_are_pooled():
    # Twenty modalities of one image each: alone each would go to train.
    names = ["CT", "MRI", "X-ray", "ultrasound", "PET"]
    records = [_record(f"r{i}", names[i % 5], kind=f"k{i}") for i in range(20)]
    counts = assign_splits(records, (0.8, 0.1, 0.1))
    assert counts == {"train": 16, "val": 2, "test": 2}


def test_zero_share_splits_get_nothing():
    records = [_record(f"r{i}", "CT") for i in range(30)]
    assert assign_splits(records, (0.9, 0.1, 0.0))["test"] == 0
    with pytest.raises(ValueError, match="non-negative"):
        assign_splits(records, (0.9, -0.1, 0.2))
