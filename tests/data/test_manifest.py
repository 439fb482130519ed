"""Schema validation, masks, and bad input: counted skips, nothing else lost."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medisee.data.manifest import read_manifest
from medisee.data.masks import MaskError, decode_rle, encode_rle, load_mask
from medisee.data.samples import ManifestDataset, flatten
from medisee.data.schema import QAItem, Record, Target, Turn, normalize_modality
from medisee.data.writer import DatasetWriter


def _mask(h, w, box):
    m = np.zeros((h, w), dtype=bool)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = True
    return m


def test_rle_round_trip_and_uncompressed_counts():
    mask = np.zeros((7, 9), dtype=bool)
    mask[2:5, 3:8] = True
    mask[6, 0] = True
    rle = encode_rle(mask)
    assert rle["size"] == [7, 9] and isinstance(rle["counts"], str)
    np.testing.assert_array_equal(decode_rle(json.loads(json.dumps(rle))), mask)
    # Column-major uncompressed counts, COCO "iscrowd" style: 5 off, 1 on, 6 off.
    np.testing.assert_array_equal(
        decode_rle({"size": [3, 4], "counts": [5, 1, 6]}),
        np.eye(1, 12, 5, dtype=bool).reshape(4, 3).T,
    )
    with pytest.raises(MaskError, match="image is"):
        load_mask(rle, shape=(9, 7))


def test_schema_validation_errors():
    target = Target("liver", {"size": [10, 10], "counts": "0"}, (1, 1, 4, 4), 9)
    with pytest.raises(ValueError, match="box_xyxy"):
        Target("liver", "m.png", (4, 1, 4, 4), 1)
    with pytest.raises(ValueError, match="area"):
        Target("liver", "m.png", (0, 0, 2, 2), 0)
    with pytest.raises(ValueError, match="exceeds"):
        Record("a", "i.png", "CT", "s", "s", 3, 10, [target])
    with pytest.raises(ValueError, match="RLE size"):
        Record("a", "i.png", "CT", "s", "s", 12, 10, [target])
    with pytest.raises(ValueError, match="Record.id"):
        Record("a b", "i.png", "CT", "s", "s", 10, 10, [target])
    with pytest.raises(ValueError, match="modality"):
        Record("a", "i.png", "sonar", "s", "s", 10, 10, [target])
    with pytest.raises(ValueError, match="perspective"):
        QAItem("reasoning", None, "short", "q?", "a")
    with pytest.raises(ValueError, match="target"):
        Record(
            "a",
            "i.png",
            "CT",
            "s",
            "s",
            10,
            10,
            [target],
            conversation=[Turn("assistant", "x", target=3)],
        )
    assert normalize_modality("mr_t1") == "MRI" and normalize_modality("x_ray") == "X-ray"
    record = Record(
        "a",
        "i.png",
        "ct",
        "s",
        "s",
        10,
        10,
        [target],
        conversation=[Turn("user", "q"), Turn("assistant", "x", 0)],
    )
    again = Record.from_dict(json.loads(json.dumps(record.to_dict())))
    assert again == record and again.modality == "CT"


def _dataset(tmp_path):
    """A 4-record dataset with PNG masks, then corrupted in four different ways."""
    from PIL import Image

    writer = DatasetWriter(tmp_path, mask_format="png")
    records = []
    for i in range(4):
        image = np.full((20, 30), 40 * i, dtype=np.uint8)
        targets = [
            ("liver", _mask(20, 30, (2, 3, 10, 12))),
            ("spleen", _mask(20, 30, (15, 5, 25, 15))),
        ]
        record = writer.add(
            f"img-{i}", image, targets, modality="CT", source="test", source_id=f"vol-{i // 2}"
        )
        record.targets[0].qa = [QAItem("referring", None, "short", "Segment the liver.", "Sure.")]
        record.conversation = [
            Turn("user", "Where is the spleen?"),
            Turn("assistant", "Here.", target=1),
        ]
        records.append(record)
    writer.finish(records, {"name": "t"})
    # 1: corrupt image file
    (tmp_path / records[0].image).write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    # 2: a mask of another size
    Image.fromarray(np.zeros((10, 10), dtype=np.uint8)).save(tmp_path / records[1].targets[0].mask)
    # 3: an empty mask (and its box now disagrees)
    Image.fromarray(np.zeros((20, 30), dtype=np.uint8)).save(tmp_path / records[2].targets[1].mask)
    # 4: an unknown label
    lines = (tmp_path / "manifest.jsonl").read_text().splitlines()
    data = json.loads(lines[3])
    data["targets"][0]["label"] = "flux capacitor"
    lines[3] = json.dumps(data)
    lines.append("{not json")
    lines.append(json.dumps({**data, "id": "future", "schema_version": "2.0"}))
    lines.append(
        json.dumps(
            {
                **data,
                "id": "bad-box",
                "targets": [{**data["targets"][1], "box_xyxy": [0, 0, 99, 5]}],
            }
        )
    )
    (tmp_path / "manifest.jsonl").write_text("\n".join(lines) + "\n\n")
    return records


def test_bad_input_is_counted_and_the_rest_kept(tmp_path, ontology):
    _dataset(tmp_path)
    records, report = read_manifest(tmp_path, check_files=True, ontology=ontology)
    assert report.counts == {
        "corrupt image": 1,
        "mask size mismatch": 1,
        "empty mask": 1,
        "unknown label": 1,
        "invalid json": 1,
        "unsupported schema version": 1,
        "schema error": 1,
        "conversation dropped": 1,
    }
    by_id = {r.id: r for r in records}
    assert sorted(by_id) == ["img-1", "img-2", "img-3"]
    assert by_id["img-1"].labels == ["spleen"]  # wrong-size liver mask dropped
    assert by_id["img-1"].conversation[1].target == 0  # re-indexed onto the spleen
    assert by_id["img-2"].labels == ["liver"] and by_id["img-2"].conversation is None
    assert by_id["img-3"].labels == ["spleen"]
    # Without file checks and ontology, only the unparsable lines are skipped.
    records, report = read_manifest(tmp_path)
    assert len(records) == 4 and report.total == 3


def test_writer_skips_bad_targets_with_reasons(tmp_path):
    from medisee.data.schema import SkipReport

    writer = DatasetWriter(tmp_path)
    report = SkipReport()
    image = np.zeros((8, 8), dtype=np.uint8)
    record = writer.add(
        "r",
        image,
        [
            ("liver", _mask(8, 8, (1, 1, 3, 3))),
            ("spleen", np.zeros((8, 8), bool)),
            ("kidney", np.ones((4, 4), bool)),
        ],
        modality="CT",
        source="t",
        source_id="r",
        report=report,
    )
    assert (
        record.labels == ["liver"]
        and record.targets[0].box_xyxy == (1, 1, 3, 3)
        and record.targets[0].area == 4
    )
    assert report.counts == {"empty mask": 1, "mask size mismatch": 1}
    assert (
        writer.add(
            "s",
            image,
            [("liver", np.zeros((8, 8), bool))],
            modality="CT",
            source="t",
            source_id="s",
            report=report,
        )
        is None
    )
    assert report.counts["no targets left"] == 1
    writer.finish([record], {})
    with pytest.raises(FileExistsError):
        DatasetWriter(tmp_path)
    DatasetWriter(tmp_path, overwrite=True)


def test_samples_flatten_and_load(bundled):
    root = bundled.manifest.parent
    samples = flatten(bundled.records, root)
    kinds = {s.kind for s in samples}
    assert kinds == {"referring", "reasoning"}
    assert len(samples) == sum(len(t.qa) for r in bundled.records for t in r.targets)
    reasoning = flatten(bundled.records, root, kinds=["reasoning"], splits=["train"])
    assert reasoning and all(s.kind == "reasoning" and s.record.split == "train" for s in reasoning)
    sample = samples[0]
    image, mask = sample.load_image(), sample.load_mask()
    assert image.dtype == np.uint8 and image.shape == (sample.record.height, sample.record.width, 3)
    assert mask.dtype == bool and mask.shape == image.shape[:2]
    dataset = ManifestDataset(root, splits=["val", "test"])
    item = dataset[0]
    assert item["split"] in ("val", "test") and item["mask"].any()
    assert set(dataset.indices_by_kind()) == {"referring", "reasoning"}
