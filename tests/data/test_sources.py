"""Folder, SA-Med2D and NIfTI builders on small real files written here."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from medisee.data.manifest import read_manifest
from medisee.data.sources.folder import build_folder
from medisee.data.sources.nifti import build_nifti, choose_slices
from medisee.data.sources.samed2d import build_samed2d, parse_image_name, parse_mask_class
from medisee.data.splits import check_no_leakage


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _rect(h, w, box, value=255):
    m = np.zeros((h, w), dtype=np.uint8)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = value
    return m


def test_folder_source_with_bad_input(tmp_path):
    root = tmp_path / "in"
    h, w = 40, 50
    for i in range(4):
        _png(root / "images" / f"case{i}_s{i}.png", np.full((h, w), 30 + 20 * i, dtype=np.uint8))
        _png(root / "masks" / f"case{i}_s{i}" / "liver_0.png", _rect(h, w, (2, 2, 20, 20)))
        _png(root / "masks" / f"case{i}_s{i}" / "liver_1.png", _rect(h, w, (22, 2, 24, 4)))
        _png(root / "masks" / f"case{i}_s{i}" / "kidney_left.png", _rect(h, w, (30, 25, 40, 38)))
    _png(root / "masks" / "case1_s1" / "spleen.png", _rect(20, 20, (1, 1, 5, 5)))  # wrong size
    _png(root / "masks" / "case2_s2" / "spleen.png", np.zeros((h, w), np.uint8))  # empty
    _png(root / "masks" / "case3_s3" / "thing.png", _rect(h, w, (1, 30, 5, 35)))  # unknown label
    (root / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    # A label-map image with a class-id mask.
    _png(root / "images" / "lm.png", np.zeros((h, w), np.uint8))
    ids = np.zeros((h, w), np.uint8)
    ids[5:15, 5:15] = 1
    ids[20:30, 30:45] = 2
    _png(root / "masks" / "lm.png", ids)
    (root / "labels.json").write_text(
        json.dumps({"labels": {"1": "liver", "2": "spleen"}, "modality": "CT"})
    )

    result = build_folder(root, tmp_path / "out", source_id_regex=r"^(case\d+)")
    assert result.report.counts == {
        "corrupt image": 1,
        "mask size mismatch": 1,
        "empty mask": 1,
        "unknown label": 1,
    }
    records = {r.id: r for r in result.records}
    assert sorted(records) == ["case0-s0", "case1-s1", "case2-s2", "case3-s3", "lm"]
    assert records["case0-s0"].labels == ["left kidney", "liver"]
    liver = records["case0-s0"].targets[1]
    assert liver.box_xyxy == (2, 2, 24, 20) and liver.area == 18 * 18 + 4  # instances merged
    assert records["lm"].labels == ["liver", "spleen"]
    assert records["case1-s1"].source_id == "case1"
    check_no_leakage(result.records)
    again, report = read_manifest(result.manifest, check_files=True)
    assert not report and len(again) == 5


def test_samed2d_layout(tmp_path):
    root = tmp_path / "SAMed2Dv1"
    h, w = 32, 32
    index = {}
    for case in ("case_0001", "case_0002"):
        for z in (10, 11):
            stem = f"ct_00--AbdomenCT1K--{case}--z_{z:04d}"
            _png(root / "images" / f"{stem}.png", np.full((h, w), z * 10, np.uint8))
            masks = [
                f"masks/{stem}--0000_000.png",
                f"masks/{stem}--0001_000.png",
                f"masks/{stem}--union_liver_000.png",
            ]
            _png(root / masks[0], _rect(h, w, (2, 2, 12, 12)))
            _png(root / masks[1], _rect(h, w, (20, 20, 30, 30)))
            _png(root / masks[2], _rect(h, w, (2, 2, 30, 30)))
            index[f"images/{stem}.png"] = masks
    stem = "mr_t1--BraTS--case_9--z_0001"
    _png(root / "images" / f"{stem}.png", np.zeros((h, w), np.uint8))
    _png(root / "masks" / f"{stem}--brain_tumor_000.png", _rect(h, w, (5, 5, 9, 9)))
    index[f"images/{stem}.png"] = [
        f"masks/{stem}--brain_tumor_000.png",
        f"masks/{stem}--0007_000.png",
    ]
    (root / "annotations").mkdir()
    (root / "annotations" / "SAMed2D_v1.json").write_text(json.dumps(index))
    (root / "annotations" / "SAMed2D_v1_class_mapping_id.json").write_text(
        json.dumps({"AbdomenCT1K": {"liver": 0, "kidney_right": 1}, "BraTS": {"edema": 2}})
    )
    result = build_samed2d(root, tmp_path / "out")
    assert result.report.counts == {"union label": 4, "unknown class id": 1}
    records = {r.id: r for r in result.records}
    assert records["ct-00-abdomenct1k-case-0001-z-0010"].labels == ["liver", "right kidney"]
    brats = records["mr-t1-brats-case-9-z-0001"]
    assert brats.modality == "MRI" and brats.labels == ["brain tumor"] and brats.display is None
    splits = {r.source_id: r.split for r in result.records}
    assert set(splits) == {"AbdomenCT1K--case_0001", "AbdomenCT1K--case_0002", "BraTS--case_9"}
    check_no_leakage(result.records)
    assert parse_image_name("ct_00--X--c--x_0095.png")["slice"] == "0095"
    assert parse_mask_class("ct_00--X--c--x_0095--liver_000.png") == ("liver", 0)


def test_nifti_volumes_are_sliced_where_labels_are(tmp_path):
    import nibabel as nib

    root = tmp_path / "in"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for case in ("liver_001", "liver_002"):
        image = np.random.default_rng(0).normal(40, 10, (24, 20, 12)).astype(np.float32)
        labels = np.zeros((24, 20, 12), np.uint8)
        # The file's i axis runs toward the patient's LEFT (x flipped): low i is the
        # patient's right, so this liver must appear on the image's left.
        labels[2:10, 4:12, 3:9] = 1
        labels[4:6, 6:8, 5:7] = 2
        labels[20:22, 2:4, 4] = 9  # not in the label map
        affine = np.diag([-1.0, -1.0, 2.0, 1.0])
        nib.save(nib.Nifti1Image(image, affine), str(root / "imagesTr" / f"{case}_0000.nii.gz"))
        nib.save(nib.Nifti1Image(labels, affine), str(root / "labelsTr" / f"{case}.nii.gz"))
    (root / "dataset.json").write_text(
        json.dumps(
            {"labels": {"background": 0, "liver": 1, "liver tumor": 2}, "modality": {"0": "CT"}}
        )
    )
    result = build_nifti(root, tmp_path / "out", slices_per_volume=3)
    assert result.report.counts == {"unknown label id": 2}
    assert len(result.records) == 6
    for record in result.records:
        assert record.modality == "CT" and record.display == "radiological"
        assert record.meta["index"] in range(3, 9)
        liver = record.targets[0]
        assert liver.label == "liver"
        assert liver.box_xyxy[0] == 2 and liver.box_xyxy[2] == 10  # image columns 2..9
    assert {r.source_id: r.split for r in result.records}.keys() == {"liver_001", "liver_002"}
    check_no_leakage(result.records)
    assert choose_slices(np.array([0, 1, 1, 1, 1, 1, 0], bool), 2) == [2, 4]
    assert {tuple(r.meta["window"]) for r in result.records} == {(40.0, 400.0)}  # CT default
    composite = build_nifti(
        root, tmp_path / "composite", slices_per_volume=3, window="lung_mediastinum_bone"
    )
    record = composite.records[0]
    assert record.meta["window"] == "lung_mediastinum_bone"  # a name the trainer reads
    assert record.meta["windows"] == [[-600.0, 1500.0], [50.0, 350.0], [400.0, 1800.0]]
    pixels = np.asarray(Image.open(tmp_path / "composite" / record.image))
    assert pixels.ndim == 3 and not np.array_equal(pixels[..., 0], pixels[..., 2])
