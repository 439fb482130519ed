"""A held-out patient's whole CT as a DICOM series, asked one question on every slice.

    python benchmarks/experiments/volume_series.py --model medisee-lite --case lung2 \\
        --question "Where are the lungs?" --labels "left lung,right lung" \\
        --json benchmarks/experiments/volume_series.json

The case's CT (pyradiomics' sdist, in Hounsfield units) is written as one single-slice
DICOM file per axial slice, as a scanner stores a series (LPS, rows from anterior,
columns from the patient's right), read back by ``medisee.data.dicom_series`` and
predicted slice by slice (``medisee.inference.predict_volume``, the ``auto`` window). The
label volume is scored against the union of ``--labels`` of the case's derived masks
(``medisee.data.sources.radiomics.derive_ct_masks``) in 3-D, per slice where the
structure is, and by the voxels painted on slices where it is not.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from medisee.data.io import load_volume
from medisee.data.sources.radiomics import derive_ct_masks, find_sdist, read_volumes
from medisee.inference.predictor import Predictor
from medisee.inference.volume import predict_volume


def write_series(folder: Path, hu: np.ndarray, spacing: tuple[float, float, float]) -> None:
    """``hu`` (RAS+ ``X x Y x Z``) as axial CT files, int16 with intercept -1024."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    series = generate_uid()
    for k in range(hu.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"{k:04d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.InstanceNumber = "CT", series, k + 1
        pixels = np.ascontiguousarray(hu[::-1, ::-1, k].T)  # LPS: rows P, columns L
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelSpacing = [spacing[1], spacing[0]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, k * spacing[2]]
        ds.PixelData = (pixels + 1024).astype(np.int16).tobytes()
        ds.save_as(str(folder / f"{k:04d}.dcm"), enforce_file_format=True)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(1.0, float(a.sum() + b.sum()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="medisee-lite")
    parser.add_argument("--case", default="lung2")
    parser.add_argument("--question", default="Where are the lungs?")
    parser.add_argument("--labels", default="left lung,right lung")
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    volume = read_volumes(find_sdist(), [args.case])[args.case]
    derived = derive_ct_masks(volume.image, volume.spacing)
    truth = np.logical_or.reduce([derived[label] for label in args.labels.split(",")])
    predictor = Predictor.from_pretrained(args.model)
    with tempfile.TemporaryDirectory() as folder:
        write_series(Path(folder), volume.image, volume.spacing)
        start = time.perf_counter()
        result = predict_volume(predictor, folder, args.question)
        seconds = time.perf_counter() - start
        labels = Path(folder) / "labels.nii.gz"
        result.save_nifti(labels)
        predicted = load_volume(labels, labels=True).data > 0  # back to RAS+, as truth
    present = np.flatnonzero(truth.any(axis=(0, 1)))
    absent = [z for z in range(truth.shape[2]) if z not in set(present.tolist())]
    report = {
        "command": shlex.join(["python", "benchmarks/experiments/volume_series.py", *sys.argv[1:]]),
        "case": args.case,
        "question": args.question,
        "slices": int(truth.shape[2]),
        "seconds": round(seconds, 1),
        "dice_3d": round(_dice(predicted, truth), 4),
        "slices_with_structure": len(present),
        "mean_slice_dice": round(
            float(np.mean([_dice(predicted[..., z], truth[..., z]) for z in present])), 4
        ),
        "slices_without_structure": len(absent),
        "voxels_painted_without_structure": int(predicted[..., absent].sum()),
        "voxels_of_structure": int(truth.sum()),
    }
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
