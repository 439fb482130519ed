"""A directory of DICOM slices read as one volume (``medisee.data.dicom_series``)."""

from __future__ import annotations

import numpy as np
import pytest

from medisee.data.dicom_series import DicomSeriesError, read_dicom_series
from medisee.data.io import load_volume, read_image
from tests.inference.helpers import write_ct_series


def _slices(count: int = 3, rows: int = 6, columns: int = 8) -> list[np.ndarray]:
    """Slice ``k``: ``100 k + 10 row + column`` HU, so every voxel says where it is."""
    grid = 10 * np.arange(rows)[:, None] + np.arange(columns)[None, :]
    return [(100 * k + grid).astype(np.int16) for k in range(count)]


def test_a_series_reads_as_the_volume_its_geometry_says(tmp_path):
    slices = _slices()
    paths = write_ct_series(tmp_path, slices, positions=[10.0, 12.5, 15.0])
    (tmp_path / "README.txt").write_text("not DICOM")  # skipped
    series = read_dicom_series(tmp_path)
    assert series.modality == "CT" and series.files == paths  # by position, not by name
    data = np.asarray(series.image.dataobj)
    assert data.shape == (8, 6, 3)  # columns x rows x slices
    for k, values in enumerate(slices):
        assert np.array_equal(data[:, :, k], values.T)
    # LPS -> RAS: x and y negated. i runs along a row (0.75 mm), j down a column (0.5 mm).
    expected = np.array([[-0.75, 0, 0, 20.0], [0, -0.5, 0, 30.0], [0, 0, 2.5, 10.0], [0, 0, 0, 1]])
    assert np.allclose(series.image.affine, expected)


@pytest.mark.parametrize(
    ("orientation", "positions", "shown"),
    [
        # Stored as radiologists look at an axial slice: shown as stored.
        ((1, 0, 0, 0, 1, 0), [0.0, 3.0, 6.0], lambda values: values),
        # Rows run toward the patient's right: shown mirrored, the right on the left again.
        # The normal (row x column) then points down: slices 0, 1, 2 rise from the feet at
        # positions 0, -3, -6 along it, and slice index k is still the k-th from the feet.
        ((-1, 0, 0, 0, 1, 0), [0.0, -3.0, -6.0], lambda values: values[:, ::-1]),
    ],
)
def test_a_series_slice_is_shown_in_the_radiological_convention(
    tmp_path, orientation, positions, shown
):
    slices = _slices()
    write_ct_series(tmp_path, slices, positions=positions, orientation=orientation)
    for k, values in enumerate(slices):
        image = read_image(tmp_path, index=k)
        assert image.meta.format == "dicom_series" and image.meta.modality == "CT"
        assert np.array_equal(image.values, shown(values).astype(np.float32))
    assert load_volume(tmp_path).zooms == pytest.approx((0.75, 0.5, 3.0))


def test_several_series_are_listed_and_one_can_be_picked(tmp_path):
    write_ct_series(tmp_path, _slices(2), positions=[0.0, 1.0], series_uid="1.2.3")
    write_ct_series(tmp_path / "b", _slices(3), positions=[0.0, 1.0, 2.0], series_uid="1.2.4")
    for path in (tmp_path / "b").iterdir():
        path.rename(tmp_path / f"b_{path.name}")
    with pytest.raises(DicomSeriesError, match=r"2 series: 1\.2\.4 \(3 files\), 1\.2\.3 \(2"):
        read_dicom_series(tmp_path)
    assert np.asarray(read_dicom_series(tmp_path, series_uid="1.2.3").image.dataobj).shape[2] == 2
    assert read_image(tmp_path, series_uid="1.2.4", index=2).meta.num_slices == 3


@pytest.mark.parametrize(
    ("positions", "message"),
    [
        ([0.0, 2.0, 4.0, 8.0], r"not evenly spaced \(4\.000 mm between IM0002 and IM0001"),
        ([0.0, 2.0, 2.0, 4.0], "lie at the same position"),
    ],
)
def test_slices_that_make_no_volume_are_refused(tmp_path, positions, message):
    write_ct_series(tmp_path, _slices(len(positions)), positions=positions)
    with pytest.raises(DicomSeriesError, match=message):
        read_dicom_series(tmp_path)


def test_a_directory_without_dicom_images_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DicomSeriesError, match="holds no DICOM image file; separate images"):
        read_image(tmp_path)
    # A study: one subdirectory per series.
    write_ct_series(tmp_path / "series_2", _slices(2), positions=[0.0, 1.0])
    with pytest.raises(DicomSeriesError, match=r"subdirectories \(series_2\) may each hold"):
        read_image(tmp_path)


def test_real_ct_written_as_a_series_reads_back_as_the_radiomics_slices(tmp_path):
    from medisee.data.io import display_slice, resolve_display
    from medisee.data.sources.radiomics import RadiomicsDataError, find_sdist, read_volumes

    try:
        sdist = find_sdist()
    except RadiomicsDataError as error:  # a checkout without scripts/install.sh's download
        pytest.skip(str(error))
    volume = read_volumes(sdist, ["lung2"])["lung2"]
    # Three slices of the patient's CT as DICOM files (stored in LPS, as a scanner writes
    # axial slices: rows from anterior, columns from the patient's right).
    lps = [np.ascontiguousarray(volume.image[::-1, ::-1, z].T) for z in (19, 20, 21)]
    write_ct_series(
        tmp_path,
        [values.astype(np.int16) for values in lps],
        positions=[0.0, 5.0, 10.0],
        spacing=(volume.spacing[1], volume.spacing[0]),
    )
    image = read_image(tmp_path, index=1, window="lung")
    expected = display_slice(volume.image, 2, 20)
    np.testing.assert_array_equal(image.values, expected)
    (lung,) = resolve_display("lung")
    assert image.meta.window == (lung.center, lung.width)
