"""Helpers for the reader and scoring tests: DICOM and NIfTI files written with pydicom and nibabel themselves.

Nothing here downloads: pydicom's example files are taken only from the installed wheel
(``get_testdata_file(..., download=False)``) and tests skip when one is missing.
"""

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RLELossless, generate_uid


def wheel_file(name: str) -> str:
    """A pydicom example file that ships inside the installed wheel, or skip the test."""
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not in the installed pydicom wheel (and nothing may be downloaded)")
    return str(path)


def nibabel_file(name: str) -> str:
    """An example volume inside the installed nibabel package, or skip the test."""
    path = Path(nib.__file__).parent / "tests" / "data" / name
    if not path.is_file():
        pytest.skip(f"{name} is not in the installed nibabel package")
    return str(path)


def decoder_available(path: str) -> bool:
    """Whether an installed pydicom plugin decodes this file's transfer syntax."""
    syntax = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    return not syntax.is_compressed or pydicom.pixels.get_decoder(syntax).is_available


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    **elements: object,
) -> Path:
    """A CT image (``(rows, cols)``) or multi-frame object (``(frames, rows, cols)``), explicit VR little endian."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.set_pixel_data(pixels, photometric_interpretation=photometric, bits_stored=bits_stored or pixels.itemsize * 8)
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _set_elements(ds: Dataset, elements: dict[str, object]) -> None:
    for keyword, value in elements.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)


def encapsulated_copy(source: str | Path, target: Path, syntax: str, frames: list[bytes], **elements: object) -> Path:
    """A copy of the DICOM file ``source`` with the codestreams ``frames`` as pixel data, in transfer syntax ``syntax``.

    Elements given as ``None`` are removed, others set.
    """
    ds = pydicom.dcmread(source)
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = syntax
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)
    _set_elements(ds, elements)
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target)
    return target


def uncompressed_copy(
    source: str | Path, target: Path, pixels: np.ndarray, bits_stored: int | None = None, **elements: object
) -> Path:
    """A copy of ``source`` holding ``pixels`` (``(rows, cols)`` or ``(frames, rows, cols)``) uncompressed.

    ``bits_stored`` defaults to the source's; Pixel Representation follows the dtype. Elements given as ``None`` are
    removed, others set.
    """
    ds = pydicom.dcmread(source)
    photometric = str(ds.PhotometricInterpretation)
    ds.set_pixel_data(pixels, photometric_interpretation=photometric, bits_stored=bits_stored or int(ds.BitsStored))
    _set_elements(ds, elements)
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target, enforce_file_format=True)
    return target


def write_nifti(path: Path, volume: np.ndarray, **header: float) -> Path:
    """A NIfTI-1 volume with an identity affine (``scl_slope``/``scl_inter`` from ``header`` if given)."""
    image = nib.Nifti1Image(volume, np.eye(4))
    if header:
        image.header.set_slope_inter(header.get("slope", 1.0), header.get("inter", 0.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)
    return path


# Identifying elements filled with strings that occur nowhere else: no output of salad-score may hold one of them.
PATIENT = {
    "PatientName": "Xqzvorth^Wilhelmina",
    "PatientID": "PID7Q3X9Z",
    "PatientBirthDate": "19230417",
    "OtherPatientIDs": "OPIDK8J2W",
    "PatientAddress": "17 Quaxleyvale Lane",
    "AccessionNumber": "ACCZ9Y8X7",
    "InstitutionName": "Saint Zebulonqa Clinic",
    "ReferringPhysicianName": "Drqwopz^Fennimorex",
}
PATIENT_STRINGS = ("Xqzvorth", "Wilhelmina", "PID7Q3X9Z", "19230417", "OPIDK8J2W", "Quaxleyvale", "ACCZ9Y8X7")
PATIENT_STRINGS += ("Zebulonqa", "Drqwopz", "Fennimorex")


def write_series(
    folder: Path,
    count: int,
    series_uid: str | None,
    study_uid: str,
    modality: str = "CT",
    seed: int = 0,
    **elements: object,
) -> list[Path]:
    """``count`` 12-bit slices ``IM0001.dcm``... of one series (``None``: files without a Series Instance UID).

    Every second file is RLE-compressed (``ds.compress``), as archives mix transfer syntaxes.
    """
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        uids = {"StudyInstanceUID": study_uid, "InstanceNumber": index + 1}
        if series_uid is not None:
            uids["SeriesInstanceUID"] = series_uid
        path = write_dicom(
            folder / f"IM{index + 1:04d}.dcm",
            rng.integers(0, 4096, (24, 20), dtype=np.uint16),
            bits_stored=12,
            Modality=modality,
            **uids,
            **elements,
        )
        if index % 2:
            ds = pydicom.dcmread(path)
            ds.compress(RLELossless)
            ds.save_as(path)
        paths.append(path)
    return paths


def scan_volume(depth: int = 12, empty: int = 2, size: int = 32, seed: int = 0) -> np.ndarray:
    """A ``(size, size, depth)`` volume: a bright textured ellipse on ``depth - 2 * empty`` slices, zeros around."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size]
    head = ((rows - size / 2) / (0.4 * size)) ** 2 + ((cols - size / 2) / (0.3 * size)) ** 2 < 1
    volume = np.zeros((size, size, depth), np.float32)
    for k in range(empty, depth - empty):
        volume[..., k] = head * (200 + 50 * rng.random((size, size)))
    return volume
