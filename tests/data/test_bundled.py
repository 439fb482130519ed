"""The bundled offline dataset: deterministic, diverse, exact masks, consistent sides."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from medisee.boxes import mask_to_box
from medisee.data.build import BuildOptions
from medisee.data.manifest import read_manifest
from medisee.data.phantom import GENERATORS, generate
from medisee.data.samples import load_target_mask
from medisee.data.splits import check_no_leakage


def _digest(directory):
    h = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.name != "dataset.json":
            h.update(path.relative_to(directory).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def test_build_is_deterministic_for_a_seed(tmp_path):
    from medisee.data.sources.bundled import build_bundled

    kwargs = dict(
        num_images=14,
        mni_slices=2,
        kinds=["chest_ct", "fundus", "brain_mri", "chest_xray"],
        radiomics=False,
    )
    build_bundled(tmp_path / "a", BuildOptions(seed=7), **kwargs)
    build_bundled(tmp_path / "b", BuildOptions(seed=7), **kwargs)
    build_bundled(tmp_path / "c", BuildOptions(seed=8), **kwargs)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_size_categories_modalities_and_real_slices(bundled, ontology):
    records = bundled.records
    assert len(records) == 48
    labels = {t.label for r in records for t in r.targets}
    categories = {ontology.resolve(label).category.name for label in labels}
    assert len(labels) >= 40 and len(categories) >= 40
    assert len({r.modality for r in records}) >= 3
    mni = [r for r in records if r.source == "nilearn-mni152"]
    assert len(mni) == 12 and {r.meta["axis"] for r in mni} == {"axial", "coronal", "sagittal"}
    mni_labels = {t.label for r in mni for t in r.targets}
    assert {
        "brain",
        "gray matter",
        "white matter",
        "left lateral ventricle",
        "right lateral ventricle",
    } <= mni_labels
    assert {r.id for r in records if r.source == "pydicom-testdata"} == {
        "pydicom-ct-small",
        "pydicom-mr-overlay",
    }
    assert len({r.split for r in mni}) == 1  # one volume, one split
    check_no_leakage(records)
    assert {r.split for r in records} == {"train", "val", "test"}
    # Real-image masks are plausible: the vertebra and the marked lesion are compact blobs.
    ct = next(r for r in records if r.id == "pydicom-ct-small")
    assert 1000 < ct.targets[0].area < 4000
    lesion = next(r for r in records if r.id == "pydicom-mr-overlay").targets[0]
    assert lesion.label == "liver lesion" and 500 < lesion.area < 1000


def test_every_mask_is_non_empty_inside_and_matches_its_box(bundled):
    records, report = read_manifest(bundled.manifest, check_files=True)
    assert not report and len(records) == len(bundled.records)
    root = bundled.manifest.parent
    for record in records:
        for target in record.targets:
            mask = load_target_mask(record, target, root)
            assert mask.shape == (record.height, record.width) and mask.any()
            assert mask_to_box(mask) == target.box_xyxy and int(mask.sum()) == target.area
            x0, y0, x1, y1 = target.box_xyxy
            assert 0 <= x0 < x1 <= record.width and 0 <= y0 < y1 <= record.height


def test_sizes_are_about_256_and_some_non_square(bundled):
    sizes = {(r.height, r.width) for r in bundled.records if r.source == "phantom"}
    assert all(200 <= h <= 300 and 200 <= w <= 340 for h, w in sizes)
    assert any(h != w for h, w in sizes)


def _centroid_x(mask):
    return float(np.nonzero(mask)[1].mean())


def test_patient_sides_follow_the_display_convention(bundled):
    """Radiological display: a target labelled "left ..." lies right of its "right ..." twin."""
    root = bundled.manifest.parent
    checked = 0
    for record in bundled.records:
        if record.display != "radiological":
            continue
        by_label = {t.label: i for i, t in enumerate(record.targets)}
        for label, i in by_label.items():
            if label.startswith("left ") and "right " + label[5:] in by_label:
                j = by_label["right " + label[5:]]
                left_x = _centroid_x(load_target_mask(record, i, root))
                right_x = _centroid_x(load_target_mask(record, j, root))
                assert left_x > right_x, (record.id, label)
                checked += 1
    assert checked >= 10


@pytest.mark.parametrize("kind", sorted(GENERATORS))
def test_each_phantom_kind(kind, ontology):
    for seed in (0, 1):
        phantom = generate(kind, [seed, 5])
        assert phantom.image.dtype == np.uint8
        assert phantom.targets, kind
        for label, mask in phantom.targets:
            assert ontology.resolve(label) is not None and ontology.resolve(label).label == label
            assert mask.shape == phantom.image.shape[:2] and mask.sum() >= 12
    again = generate(kind, [0, 5])
    np.testing.assert_array_equal(again.image, generate(kind, [0, 5]).image)


def test_train_qa_variants_add_training_questions_only(tmp_path):
    """Extra template draws add new reasoning questions to training images; validation and
    test questions are exactly those of the plain build, and no target repeats a question."""
    from medisee.data.sources.bundled import build_bundled

    kwargs = dict(
        num_images=20,
        mni_slices=2,
        kinds=["abdominal_ct", "thyroid_ultrasound", "mammography"],
        radiomics=False,
    )
    plain = build_bundled(tmp_path / "plain", BuildOptions(seed=5), **kwargs)
    more = build_bundled(tmp_path / "more", BuildOptions(seed=5, train_qa_variants=2), **kwargs)

    def questions(result):
        return {
            (r.id, t.label): [(q.kind, q.question) for q in t.qa]
            for r in result.records
            for t in r.targets
        }

    before, after = questions(plain), questions(more)
    splits = {r.id: r.split for r in more.records}
    assert splits == {r.id: r.split for r in plain.records}
    added = 0
    for key, items in after.items():
        assert len(set(items)) == len(items)
        assert items[: len(before[key])] == before[key]  # the plain build's items come first
        extra = items[len(before[key]) :]
        if splits[key[0]] != "train":
            assert not extra
        assert all(kind == "reasoning" for kind, _ in extra)
        added += len(extra)
    assert added == more.info["train_variant_questions"] > 0
    assert plain.info["train_variant_questions"] == 0
