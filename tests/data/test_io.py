"""Readers round-trip real files written by nibabel, pydicom and Pillow."""

from __future__ import annotations

import numpy as np
import pytest

from medisee.data.io import (
    WINDOW_PRESETS,
    ImageReadError,
    Window,
    apply_window,
    display_slice,
    load_volume,
    parse_window,
    read_image,
    resolve_display,
    resolve_window,
)


# ---------------------------------------------------------------------- NIfTI
def _nifti(path, data, affine):
    import nibabel as nib

    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _marked_volume(shape=(6, 7, 5)):
    data = np.zeros(shape, dtype=np.float32)
    data[...] = 10.0
    return data


def test_nifti_flipped_axis_reads_patient_right_on_image_left(tmp_path):
    # Stored with x flipped (voxel i grows toward the patient's LEFT, "LAS").
    data = _marked_volume()
    data[0, 2, 3] = 100.0  # i = 0 is the patient's rightmost column in LAS
    affine = np.diag([-1.0, 1.0, 1.0, 1.0])
    affine[0, 3] = 5.0
    path = _nifti(tmp_path / "las.nii.gz", data, affine)

    image = read_image(path, axis="axial", index=3, window=(55.0, 90.0))
    # Display: rows top = anterior (max j), columns left = patient right.
    assert image.meta.display == "radiological"
    assert image.values is not None and image.values.shape == (7, 6)
    row, col = np.unravel_index(int(np.argmax(image.values)), image.values.shape)
    assert (row, col) == (7 - 1 - 2, 0)  # patient right -> image left column 0
    assert image.pixels[row, col, 0] == 255 and image.pixels[0, 1, 0] == 0

    # The same anatomy stored RAS reads back identically.
    ras = np.flip(data, axis=0).copy()
    path2 = _nifti(tmp_path / "ras.nii.gz", ras, np.eye(4))
    image2 = read_image(path2, axis="axial", index=3, window=(55.0, 90.0))
    np.testing.assert_array_equal(image.values, image2.values)


def test_nifti_axes_and_spacing(tmp_path):
    data = _marked_volume((4, 5, 6))
    data[3, 1, 5] = 100.0  # patient right-most, posterior, top slice
    affine = np.diag([1.0, 2.0, 3.0, 1.0])
    path = _nifti(tmp_path / "v.nii", data, affine)
    volume = load_volume(path)
    assert volume.zooms == (1.0, 2.0, 3.0)

    coronal = volume.slice("coronal", 1)  # rows superior->inferior, cols right->left
    assert coronal.shape == (6, 4) and coronal[0, 0] == 100.0
    sagittal = volume.slice("sagittal", 3)  # rows superior->inferior, cols anterior->posterior
    assert sagittal.shape == (6, 5) and sagittal[0, 5 - 1 - 1] == 100.0
    axial = volume.slice("axial", 5)
    assert axial.shape == (5, 4) and axial[5 - 1 - 1, 0] == 100.0
    assert volume.spacing("axial") == (2.0, 1.0)  # rows along y (2 mm), columns along x
    assert read_image(path, axis="sagittal", index=3).meta.display is None
    with pytest.raises(ValueError, match="out of range"):
        display_slice(volume.data, 2, 6)


def test_nifti_label_volume_keeps_integer_ids(tmp_path):
    labels = np.zeros((5, 5, 3), dtype=np.int16)
    labels[1:3, 1:3, 1] = 7
    path = _nifti(tmp_path / "labels.nii.gz", labels, np.diag([-1.0, -1.0, 1.0, 1.0]))
    volume = load_volume(path, labels=True)
    assert volume.data.dtype == np.int32
    assert set(np.unique(volume.data)) == {0, 7}
    assert volume.slice("axial", 1).sum() == 7 * 4


# ---------------------------------------------------------------------- DICOM
def _dicom(
    path,
    pixels,
    *,
    slope=1.0,
    intercept=0.0,
    window=None,
    photometric="MONOCHROME2",
    modality="CT",
    signed=False,
):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.PixelSpacing = [0.5, 0.75]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_rescale_and_header_window(tmp_path):
    stored = np.array([[0, 432, 512], [562, 612, 2000]], dtype=np.uint16)
    path = _dicom(tmp_path / "ct.dcm", stored, slope=2.0, intercept=-1024.0, window=(40, 400))
    image = read_image(path)
    # HU = 2 * stored - 1024
    np.testing.assert_array_equal(image.values, [[-1024, -160, 0], [100, 200, 2976]])
    # window 40/400: lo = -160, (HU + 160) / 400 * 255, rounded half up
    np.testing.assert_array_equal(image.pixels[..., 0], [[0, 0, 102], [166, 230, 255]])
    assert image.meta.window == (40.0, 400.0)
    assert image.meta.display == "radiological" and image.meta.spacing == (0.5, 0.75)
    assert image.meta.modality == "CT"


def test_dicom_presets_override_header_and_ct_default(tmp_path):
    stored = np.array([[424, 1024], [1424, 1624]], dtype=np.uint16)  # HU -600, 0, 400, 600
    path = _dicom(tmp_path / "ct.dcm", stored, intercept=-1024.0, window=(40, 400))
    lung = read_image(path, window="lung")  # -600 / 1500: lo = -1350
    expected = np.floor(
        np.clip((np.array([[-600, 0], [400, 600]]) + 1350) / 1500, 0, 1) * 255 + 0.5
    )
    np.testing.assert_array_equal(lung.pixels[..., 0], expected)
    bone = read_image(path, window=(400, 1800))
    assert bone.pixels[1, 0, 0] == 128  # HU 400 at the centre: 127.5 rounds up
    no_header = _dicom(tmp_path / "ct2.dcm", stored, intercept=-1024.0)
    assert read_image(no_header).meta.window == WINDOW_PRESETS["abdomen"]
    with pytest.raises(ValueError, match="no WindowCenter"):
        read_image(no_header, window="header")


def test_dicom_composite_display_has_one_window_per_channel(tmp_path):
    stored = np.array([[24, 1024], [1424, 2624]], dtype=np.uint16)  # HU -1000, 0, 400, 1600
    path = _dicom(tmp_path / "ct.dcm", stored, intercept=-1024.0, window=(40, 400))
    hu = np.array([[-1000.0, 0.0], [400.0, 1600.0]])
    expected = [
        apply_window(hu, Window(*WINDOW_PRESETS[n])) for n in ("lung", "mediastinum", "bone")
    ]
    for window in ("lung_mediastinum_bone", "Lung-Mediastinum-Bone"):
        image = read_image(path, window=window)
        for channel in range(3):
            np.testing.assert_array_equal(image.pixels[..., channel], expected[channel])
        assert image.meta.window is None
        assert image.meta.extra["windows"] == [[-600.0, 1500.0], [50.0, 350.0], [400.0, 1800.0]]
    # "auto" with a model's CT display: that display, not the header's window.
    model_view = read_image(path, ct_window="lung_mediastinum_bone")
    np.testing.assert_array_equal(model_view.pixels[..., 2], expected[2])
    lung_view = read_image(path, ct_window="lung")
    assert lung_view.meta.window == WINDOW_PRESETS["lung"] and lung_view.is_gray
    # An explicit window still wins over the model's display.
    assert read_image(path, window="bone", ct_window="lung").meta.window == WINDOW_PRESETS["bone"]
    # Not CT: the model's CT display does not apply.
    xray = _dicom(tmp_path / "cr.dcm", stored, window=(150, 300), modality="CR")
    assert read_image(xray, ct_window="lung_mediastinum_bone").meta.window == (150.0, 300.0)


def test_composite_names_resolve_as_displays_not_windows():
    assert resolve_display("lung") == (Window(-600.0, 1500.0),)
    assert resolve_display("auto") is None
    assert len(resolve_display("lung_mediastinum_bone")) == 3
    assert parse_window("lung_mediastinum_bone") == "lung_mediastinum_bone"
    with pytest.raises(ValueError, match="composite"):
        resolve_window("lung_mediastinum_bone")
    with pytest.raises(ValueError, match="lung_mediastinum_bone"):
        parse_window("rainbow")


def test_nifti_ct_slice_in_a_composite(tmp_path):
    data = np.full((4, 5, 3), -1000.0, dtype=np.float32)
    data[1:3, 1:4, :] = 400.0
    path = _nifti(tmp_path / "ct.nii.gz", data, np.eye(4))
    image = read_image(path, modality="CT", ct_window="lung_mediastinum_bone")
    hu = display_slice(data, 2, 1)
    np.testing.assert_array_equal(image.pixels[..., 1], apply_window(hu, Window(50.0, 350.0)))
    np.testing.assert_array_equal(image.pixels[..., 2], apply_window(hu, Window(400.0, 1800.0)))
    # A NIfTI header names no modality: values in Hounsfield units (air at -1000) read as
    # CT, and get the model's display.
    unnamed = read_image(path, ct_window="lung_mediastinum_bone")
    assert unnamed.meta.modality == "CT" and np.array_equal(unnamed.pixels, image.pixels)
    # Intensities that never reach air's HU (an MR) are stretched, as before.
    mr = _nifti(tmp_path / "mr.nii.gz", data + 1000.0, np.eye(4))
    shown = read_image(mr, ct_window="lung_mediastinum_bone")
    assert shown.meta.modality is None and shown.is_gray


def test_dicom_monochrome1_is_inverted(tmp_path):
    stored = np.array([[0, 100], [200, 300]], dtype=np.uint16)
    path = _dicom(
        tmp_path / "cr.dcm", stored, window=(150, 300), photometric="MONOCHROME1", modality="CR"
    )
    image = read_image(path)
    assert image.meta.modality == "X-ray"
    # windowed 0, 85, 170, 255 then inverted
    np.testing.assert_array_equal(image.pixels[..., 0], [[255, 170], [85, 0]])
    np.testing.assert_array_equal(image.values, stored)


def test_real_pydicom_sample_reads():
    from pydicom.data import get_testdata_file

    image = read_image(get_testdata_file("CT_small.dcm"))
    assert image.pixels.shape == (128, 128, 3) and image.meta.display == "radiological"
    assert image.values.min() < -500 and image.values.max() > 500  # air and bone in HU


def test_a_dicom_dose_grid_is_refused_by_name():
    from pydicom.data import get_testdata_file

    # pydicom's RT Dose sample has pixel data (a 10 x 10 dose grid), but no patient in it.
    with pytest.raises(ImageReadError, match="RTDOSE object .a radiotherapy dose grid"):
        read_image(get_testdata_file("rtdose.dcm"))


# ---------------------------------------------------------------------- rasters
def test_png_jpeg_tiff_round_trip(tmp_path):
    from PIL import Image

    gray = (np.arange(12 * 10).reshape(12, 10) % 256).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    image = read_image(tmp_path / "g.png")
    assert image.pixels.shape == (12, 10, 3) and image.is_gray and image.values is None
    np.testing.assert_array_equal(image.pixels[..., 1], gray)

    rgba = np.zeros((5, 6, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 50
    Image.fromarray(rgba).save(tmp_path / "c.png")
    assert read_image(tmp_path / "c.png").pixels[0, 0].tolist() == [200, 0, 0]

    Image.fromarray(gray).save(tmp_path / "g.jpg", quality=95)
    assert read_image(tmp_path / "g.jpg").pixels.shape == (12, 10, 3)

    sixteen = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "s.tif")
    tif = read_image(tmp_path / "s.tif", window=(2000, 4000))
    np.testing.assert_array_equal(tif.values, sixteen)
    np.testing.assert_array_equal(tif.pixels[..., 0], [[0, 64], [128, 255]])


def test_corrupt_and_missing_files(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ImageReadError):
        read_image(tmp_path / "bad.png")
    (tmp_path / "bad.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\x01\x02")
    with pytest.raises(ImageReadError):
        read_image(tmp_path / "bad.dcm")
    (tmp_path / "bad.nii.gz").write_bytes(b"garbage")
    with pytest.raises(ImageReadError):
        read_image(tmp_path / "bad.nii.gz")
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "missing.png")


def test_window_helpers():
    assert parse_window("lung") == "lung"
    assert parse_window("40,400") == Window(40.0, 400.0)
    with pytest.raises(ValueError):
        parse_window("nonsense")
    with pytest.raises(ValueError):
        Window(0.0, 0.0)
    np.testing.assert_array_equal(
        apply_window(np.array([-1000.0, 40.0, 1000.0]), Window(40, 400)), [0, 128, 255]
    )
