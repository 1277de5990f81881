"""The one reader (anomalib_salad.data.reader) on real files: PNG/TIFF, DICOM and NIfTI, and the datasets built on it.

DICOM values are checked against pydicom's own decoding and LUT functions (and the LINEAR window formula of
PS3.3 C.11.2.1.2.1 written out here), NIfTI values against nibabel's ``get_fdata``. Files come from the
installed pydicom wheel and nibabel package (never downloaded; tests skip when one is missing) or are written
here with pydicom / nibabel. The datamodule tests check that training, deployment and figures read alike, that
splits are drawn per file before volumes are cut into slices, and (slow) that ``anomalib train`` runs on a
folder of DICOM and NIfTI files. Every compressed transfer syntax, and the errors for those that no installed
decoder reads, are checked in test_dicom_codecs.py.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi, apply_voi_lut, apply_windowing
from pydicom.uid import RLELossless

from anomalib_salad import deploy
from anomalib_salad.data import (
    CheckedPredictDataset,
    ImageFileError,
    MedicalFolder,
    make_synthetic_scans,
    read_image_tensor,
)
from anomalib_salad.data.reader import (
    WINDOW_PRESETS,
    ImageReadError,
    ImageRef,
    ReaderConfig,
    file_format,
    list_files,
    list_items,
    read_image,
    read_images,
)

from .conftest import TINY
from .medical_files import decoder_available, nibabel_file, scan_volume, wheel_file, write_dicom, write_nifti

ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(14)


def _gray(image: np.ndarray) -> np.ndarray:
    """The one channel of a reader image, after checking that all three are equal."""
    assert image.dtype == np.float32
    assert image.ndim == 3
    assert image.shape[-1] == 3
    np.testing.assert_array_equal(image[..., 0], image[..., 1])
    np.testing.assert_array_equal(image[..., 0], image[..., 2])
    return image[..., 0]


def _linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 (LINEAR), onto [0, 1]."""
    low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    inside = ((values - (center - 0.5)) / (width - 1) + 0.5).clip(0, 1)
    return np.where(values <= low, 0.0, np.where(values > high, 1.0, inside))


def _stored_range(ds: Dataset) -> tuple[int, int]:
    bits = int(ds.BitsStored)
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if ds.PixelRepresentation else (0, 2**bits - 1)


def _pydicom_windowed(path: str, center: float | None = None, width: float | None = None) -> np.ndarray:
    """pydicom's modality LUT and windowing, scaled by the output range it documents (PS3.3 C.11.2.1.2)."""
    ds = pydicom.dcmread(path)
    values = apply_modality_lut(ds.pixel_array, ds)
    if center is not None:
        ds.WindowCenter, ds.WindowWidth = center, width
    out = apply_windowing(values, ds)
    y_min, y_max = _stored_range(ds)
    slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
    y_min, y_max = y_min * slope + intercept, y_max * slope + intercept
    return (out - y_min) / (y_max - y_min)


# --------------------------------------------------------------------------------------------------------------
# PNG / TIFF: one bit-depth rule
# --------------------------------------------------------------------------------------------------------------


def test_8bit_files_are_uint8_times_one_255th(tmp_path: Path) -> None:
    gray = RNG.integers(0, 256, (9, 7), dtype=np.uint8)
    rgb = RNG.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    Image.fromarray(rgb).save(tmp_path / "rgb.jpg", quality=100)
    expected = gray.astype(np.float32) * np.float32(1 / 255)  # what torchvision's to_dtype(scale=True) computes
    np.testing.assert_array_equal(_gray(read_image(tmp_path / "gray.png")), expected)
    decoded = np.asarray(Image.open(tmp_path / "rgb.jpg").convert("RGB"))
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.jpg"), decoded.astype(np.float32) * np.float32(1 / 255))


def test_16bit_files_follow_the_bit_depth_and_deployment_asks_for_it(tmp_path: Path) -> None:
    values = RNG.integers(0, 4096, (8, 8), dtype=np.uint16)
    path = tmp_path / "ct12.png"
    Image.fromarray(values).save(path)
    np.testing.assert_array_equal(_gray(read_image(path, ReaderConfig(bit_depth=12))), values / np.float32(4095))
    np.testing.assert_array_equal(_gray(read_image(path)), values / np.float32(65535))
    with pytest.raises(ImageReadError, match=r"ct12\.png: 16/32-bit grayscale image .* no bit depth given"):
        read_image(path, ReaderConfig(require_bit_depth=True))
    with pytest.raises(ImageReadError, match=r"ct12\.png: pixel values in \[\d+, \d+\] do not fit bit_depth=10"):
        read_image(path, ReaderConfig(bit_depth=10))


# --------------------------------------------------------------------------------------------------------------
# DICOM files of the pydicom wheel
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("window", [(40.0, 400.0), "lung", "brain", "-600,1500"])
def test_ct_window_matches_pydicom_and_the_standard(window: object) -> None:
    path = wheel_file("CT_small.dcm")
    center, width = ReaderConfig(window=window).window
    image = _gray(read_image(path, ReaderConfig(window=window)))
    np.testing.assert_allclose(image, _pydicom_windowed(path, center, width), rtol=0, atol=1e-6)
    ds = pydicom.dcmread(path)
    hounsfield = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(image, _linear_window(hounsfield, center, width), rtol=0, atol=1e-6)
    assert 0 < image.mean() < 1


def test_ct_without_window_uses_the_stored_range() -> None:
    path = wheel_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    assert "WindowCenter" not in ds
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    low, high = (value * slope + intercept for value in _stored_range(ds))
    expected = (ds.pixel_array * slope + intercept - low) / (high - low)
    for window in ("file", "range"):
        np.testing.assert_allclose(_gray(read_image(path, ReaderConfig(window=window))), expected, atol=1e-6)


def test_mr_uses_its_own_window() -> None:
    path = wheel_file("MR_small.dcm")
    ds = pydicom.dcmread(path)
    image = _gray(read_image(path))
    np.testing.assert_allclose(image, _pydicom_windowed(path), atol=1e-6)
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    np.testing.assert_allclose(image, _linear_window(ds.pixel_array.astype(float), center, width), atol=1e-6)
    assert not np.allclose(image, _gray(read_image(path, ReaderConfig(window="range"))))


@pytest.mark.parametrize(
    "name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm"]
)
def test_lossless_encodings_read_like_the_uncompressed_file(name: str) -> None:
    path = wheel_file(name)
    if not decoder_available(path):
        pytest.skip(f"no installed pydicom plugin decodes {name}")
    reference = read_image(wheel_file("MR_small.dcm"))
    np.testing.assert_array_equal(read_image(path), reference)
    np.testing.assert_array_equal(read_images(path)[0][1], reference)


def test_multiframe_file_gives_one_image_per_frame() -> None:
    path = wheel_file("examples_ybr_color.dcm")
    if not decoder_available(path):
        pytest.skip("no JPEG plugin")
    ds = pydicom.dcmread(path)
    frames = int(ds.NumberOfFrames)
    expected = ds.pixel_array.astype(np.float64) / 255  # pydicom converts YBR to RGB
    assert list_items(path) == [f"{path}:frame:{k}" for k in range(frames)]
    images = read_images(path)
    assert [item for item, _ in images] == list_items(path)
    for k in (0, 7, frames - 1):
        np.testing.assert_allclose(images[k][1], expected[k], atol=1e-6)
        np.testing.assert_array_equal(read_image(f"{path}:frame:{k}"), images[k][1])
    with pytest.raises(ImageReadError, match="has 30 frames: read one as"):
        read_image(path)
    with pytest.raises(ImageReadError, match="frame index out of range: the file has 30 frame"):
        read_image(f"{path}:frame:30")


def test_wheel_files_that_are_not_images_are_named() -> None:
    truncated = wheel_file("MR_truncated.dcm")
    with pytest.raises(ImageReadError, match=r"MR_truncated\.dcm: DICOM pixel data cannot be read \(ValueError"):
        read_image(truncated)
    no_image = wheel_file("nested_priv_SQ.dcm")
    with pytest.raises(ImageReadError, match="DICOM object without an image"):
        read_images(no_image)


# --------------------------------------------------------------------------------------------------------------
# DICOM files written here
# --------------------------------------------------------------------------------------------------------------


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    values = RNG.integers(0, 4096, (16, 16), dtype=np.uint16)
    settings = {"bits_stored": 12, "WindowCenter": 1500, "WindowWidth": 2000}
    mono2 = write_dicom(tmp_path / "mono2.dcm", values, "MONOCHROME2", **settings)
    mono1 = write_dicom(tmp_path / "mono1.dcm", values, "MONOCHROME1", **settings)
    np.testing.assert_allclose(read_image(mono1), 1 - read_image(mono2), atol=1e-6)
    np.testing.assert_allclose(_gray(read_image(mono2)), _linear_window(values.astype(float), 1500, 2000), atol=1e-6)


@pytest.mark.parametrize(
    ("bits", "dtype"),
    [(8, np.uint8), (10, np.uint16), (12, np.uint16), (16, np.uint16), (12, np.int16), (16, np.int16)],
)
def test_stored_bits_8_to_16(bits: int, dtype: type, tmp_path: Path) -> None:
    signed = np.issubdtype(dtype, np.signedinteger)
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    values = RNG.integers(low, high + 1, (12, 10)).astype(dtype)
    path = write_dicom(tmp_path / "scan.dcm", values, bits_stored=bits, RescaleSlope=2, RescaleIntercept=-100)
    expected = (values.astype(float) - low) / (high - low)  # the full stored range, through slope and intercept
    np.testing.assert_allclose(_gray(read_image(path)), expected, atol=1e-6)
    np.testing.assert_array_equal(pydicom.dcmread(path).pixel_array, values)


def test_voi_lut_sequence_is_applied(tmp_path: Path) -> None:
    values = RNG.integers(0, 4096, (16, 16), dtype=np.uint16)
    lut = (4095 * (np.arange(2048) / 2047) ** 0.5).round().astype(np.uint16)  # a gamma curve over 100..2147
    item = Dataset()
    item.LUTDescriptor = [2048, 100, 12]
    item.LUTData = lut.astype("<u2").tobytes()  # OW, as most writers store it
    path = write_dicom(
        tmp_path / "lut.dcm", values, bits_stored=12, VOILUTSequence=[item], WindowCenter=40, WindowWidth=80
    )
    ds = pydicom.dcmread(path)
    expected = lut[np.clip(values.astype(int) - 100, 0, 2047)] / 4095
    image = _gray(read_image(path))
    np.testing.assert_allclose(image, expected, atol=1e-6)
    np.testing.assert_allclose(image, apply_voi(values, ds) / 4095, atol=1e-6)
    np.testing.assert_allclose(image, apply_voi_lut(values, ds, prefer_lut=True) / 4095, atol=1e-6)
    # An explicit window replaces the file's VOI LUT.
    np.testing.assert_allclose(
        _gray(read_image(path, ReaderConfig(window="40,80"))), _linear_window(values.astype(float), 40, 80), atol=1e-6
    )


def test_rle_written_by_pydicom_reads_like_the_original(tmp_path: Path) -> None:
    values = RNG.integers(0, 4096, (20, 18), dtype=np.uint16)
    plain = write_dicom(tmp_path / "plain.dcm", values, bits_stored=12)
    ds = pydicom.dcmread(plain)
    ds.compress(RLELossless)
    ds.save_as(tmp_path / "rle.dcm")
    assert pydicom.dcmread(tmp_path / "rle.dcm").file_meta.TransferSyntaxUID == RLELossless
    np.testing.assert_array_equal(read_image(tmp_path / "rle.dcm"), read_image(plain))


def test_enhanced_multiframe_takes_rescale_and_window_per_frame(tmp_path: Path) -> None:
    values = RNG.integers(0, 4096, (3, 8, 8), dtype=np.uint16)
    slopes = [1.0, 2.0, 0.5]
    per_frame = []
    for slope in slopes:
        transform, group = Dataset(), Dataset()
        transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = slope, -1000, "HU"
        group.PixelValueTransformationSequence = [transform]
        per_frame.append(group)
    window, shared = Dataset(), Dataset()
    window.WindowCenter, window.WindowWidth = 100, 1200
    shared.FrameVOILUTSequence = [window]
    path = write_dicom(
        tmp_path / "enhanced.dcm",
        values,
        bits_stored=12,
        PerFrameFunctionalGroupsSequence=per_frame,
        SharedFunctionalGroupsSequence=[shared],
    )
    images = read_images(path)
    assert [item for item, _ in images] == [f"{path}:frame:{k}" for k in range(3)]
    for k, (item, image) in enumerate(images):
        expected = _linear_window(values[k] * slopes[k] - 1000.0, 100, 1200)
        np.testing.assert_allclose(_gray(image), expected, atol=1e-6)
        np.testing.assert_array_equal(read_image(item), image)


def test_bad_dicom_files_are_named(tmp_path: Path) -> None:
    fake = tmp_path / "fake.dcm"
    fake.write_text("patient list, not DICOM")
    with pytest.raises(ImageReadError, match=r"fake\.dcm: not a DICOM file"):
        read_image(fake)
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.dcm: empty file \(0 bytes\)"):
        read_image(empty)
    with pytest.raises(ImageReadError, match=r"gone\.dcm: file not found"):
        read_image(tmp_path / "gone.dcm")
    ds = pydicom.dcmread(write_dicom(tmp_path / "scan.dcm", np.zeros((4, 4), np.uint16)))
    del ds.PixelData
    ds.save_as(tmp_path / "no_pixels.dcm")
    with pytest.raises(ImageReadError, match=r"no_pixels\.dcm: DICOM file without pixel data"):
        read_image(tmp_path / "no_pixels.dcm")


def test_files_are_found_by_suffix_or_dicom_preamble(tmp_path: Path) -> None:
    write_dicom(tmp_path / "series" / "IM0001", np.zeros((4, 4), np.uint16))  # no suffix, as PACS exports often are
    write_nifti(tmp_path / "vol.nii.gz", scan_volume())
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "notes").write_text("no image")
    (tmp_path / "table.csv.gz").write_bytes(b"\x1f\x8b")
    (tmp_path / ".hidden").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / ".hidden" / "b.png")
    found = [path.relative_to(tmp_path).as_posix() for path in list_files(tmp_path)]
    assert found == ["a.png", "series/IM0001", "vol.nii.gz"]
    assert file_format(tmp_path / "series" / "IM0001") == "dicom"
    assert file_format(tmp_path / "vol.nii.gz") == "nifti"
    assert file_format(tmp_path / "notes") == "image"


# --------------------------------------------------------------------------------------------------------------
# NIfTI
# --------------------------------------------------------------------------------------------------------------


def _expected_slices(volume: np.ndarray, config: ReaderConfig) -> dict[int, np.ndarray]:
    """The documented rule, written out: foreground percentiles -> [0, 1], tissue rule, rot90 of each slice."""
    finite = volume[np.isfinite(volume)]
    foreground = finite[finite > finite.min()]
    low, high = np.percentile(foreground, config.percentiles)
    normalised = np.clip((np.nan_to_num(volume, nan=low) - low) / (high - low), 0, 1)
    slices = {}
    for index in range(volume.shape[config.axis]):
        plane = np.take(normalised, index, axis=config.axis)
        if (plane > config.tissue_level).mean() >= config.min_tissue:
            slices[index] = np.rot90(plane)
    return slices


def test_nibabel_example_volume() -> None:
    path = nibabel_file("anatomical.nii")
    volume = nib.load(path).get_fdata()
    expected = _expected_slices(volume, ReaderConfig())
    images = read_images(path)
    assert [item for item, _ in images] == [f"{path}:2:{index}" for index in expected]
    assert list_items(path) == [item for item, _ in images]
    for (item, image), (index, plane) in zip(images, expected.items(), strict=True):
        np.testing.assert_allclose(_gray(image), plane, atol=2e-6)
        np.testing.assert_array_equal(read_image(item), image)  # one slice alone reads the same
        assert ImageRef.parse(item) == ImageRef(path, "2", index)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slices_along_any_axis_skip_empty_ones_and_trace_back(axis: int, tmp_path: Path) -> None:
    volume = np.moveaxis(scan_volume(depth=12, empty=3), 2, axis)  # 3 empty slices at both ends along `axis`
    path = str(write_nifti(tmp_path / "vol.nii.gz", volume, slope=2.0, inter=-10.0))
    scaled = nib.load(path).get_fdata()  # nibabel's decoding, scl_slope / scl_inter applied
    config = ReaderConfig(axis=axis)
    expected = _expected_slices(scaled, config)
    assert list(expected) == list(range(3, 9))
    images = read_images(path, config)
    assert [item for item, _ in images] == [f"{path}:{axis}:{index}" for index in range(3, 9)]
    for (item, image), plane in zip(images, expected.values(), strict=True):
        np.testing.assert_allclose(_gray(image), plane, atol=2e-6)
        np.testing.assert_array_equal(read_image(item, config), image)
    assert len(read_images(path, ReaderConfig(axis=axis, min_tissue=0))) == 12


def test_non_finite_voxels_become_background(tmp_path: Path) -> None:
    volume = scan_volume(depth=4, empty=0)
    volume[0, 0, :] = np.nan
    volume[1, 1, :] = np.inf
    path = write_nifti(tmp_path / "vol.nii", volume)
    images = read_images(path)
    assert all(np.isfinite(image).all() for _, image in images)
    assert all(image[-1, 0, 0] == 0 and image[-2, 1, 0] == 0 for _, image in images)  # rot90: (0, 0) -> (-1, 0)


def test_nifti_errors_are_named(tmp_path: Path) -> None:
    four_d = nibabel_file("example4d.nii.gz")
    with pytest.raises(ImageReadError, match=r"example4d\.nii\.gz: NIfTI image of shape \(128, 96, 24, 2\): expected"):
        read_images(four_d)
    path = write_nifti(tmp_path / "vol.nii.gz", scan_volume())
    with pytest.raises(ImageReadError, match="is a NIfTI volume: read one slice as"):
        read_image(path)
    with pytest.raises(ImageReadError, match="slice index out of range: the volume has 12 slices along axis 2"):
        read_image(f"{path}:2:12")
    blank = write_nifti(tmp_path / "blank.nii.gz", np.zeros((8, 8, 4), np.float32))
    with pytest.raises(ImageReadError, match=r"no slice along axis 2 has at least 1\.0% of its pixels above 0\.05"):
        read_images(blank)
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ImageReadError, match=r"broken\.nii\.gz: "):
        read_images(broken)


# --------------------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------------------


def test_reader_settings_are_checked_and_saved(tmp_path: Path) -> None:
    assert ReaderConfig(window="LUNG").window == WINDOW_PRESETS["lung"] == (-600, 1500)
    assert ReaderConfig(window="brain").window == (40, 80)
    assert ReaderConfig(window=" 40 , 80 ").window == (40.0, 80.0)
    for bad in ("lungs", "40", "40,0", (1, 2, 3)):
        with pytest.raises(ValueError, match="window must be"):
            ReaderConfig(window=bad)
    with pytest.raises(ValueError, match="axis must be 0, 1 or 2"):
        ReaderConfig(axis=3)
    with pytest.raises(ValueError, match="percentiles must be"):
        ReaderConfig(percentiles=(99, 1))
    config = ReaderConfig(bit_depth=12, window="brain", axis=1, percentiles=(1, 99), min_tissue=0.05)
    (tmp_path / "reader.json").write_text(json.dumps(config.to_dict()))
    assert ReaderConfig.from_json(tmp_path / "reader.json") == config
    (tmp_path / "typo.json").write_text('{"windw": "lung"}')
    with pytest.raises(ValueError, match=r"unknown reader settings \['windw'\]"):
        ReaderConfig.from_json(tmp_path / "typo.json")


# --------------------------------------------------------------------------------------------------------------
# One reader for training, deployment and figures
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mixed_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("mixed")
    Image.fromarray(RNG.integers(0, 256, (16, 16), dtype=np.uint8)).save(folder / "gray8.png")
    Image.fromarray(RNG.integers(0, 4096, (16, 16), dtype=np.uint16)).save(folder / "gray12.png")
    write_dicom(
        folder / "ct.dcm",
        RNG.integers(0, 4096, (16, 16), dtype=np.uint16),
        bits_stored=12,
        RescaleSlope=1,
        RescaleIntercept=-1024,
        WindowCenter=40,
        WindowWidth=400,
    )
    write_nifti(folder / "vol.nii.gz", scan_volume())
    return {
        "png8": str(folder / "gray8.png"),
        "png12": str(folder / "gray12.png"),
        "dicom": str(folder / "ct.dcm"),
        "slice": f"{folder / 'vol.nii.gz'}:2:5",
    }


def _load_figures_module() -> object:
    spec = importlib.util.spec_from_file_location("salad_figures", ROOT / "examples" / "figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kind", ["png8", "png12", "dicom", "slice"])
def test_training_deployment_and_figures_read_alike(kind: str, mixed_files: dict[str, str]) -> None:
    item = mixed_files[kind]
    config = ReaderConfig(bit_depth=12, window="soft_tissue")
    reference = read_image(item, config)
    training = read_image_tensor(item, config=config)
    assert training.shape == (3, *reference.shape[:2])
    np.testing.assert_array_equal(training.permute(1, 2, 0).numpy(), reference)
    np.testing.assert_array_equal(deploy.read_image(item, config), reference)
    np.testing.assert_array_equal(deploy.to_model_input(reference)[0].transpose(1, 2, 0), reference)
    figures = _load_figures_module()
    figures.READER = config
    np.testing.assert_array_equal(figures.load_images([item])[0].permute(1, 2, 0).numpy(), reference)


def test_deployment_refuses_16bit_without_bit_depth(mixed_files: dict[str, str]) -> None:
    with pytest.raises(deploy.InputImageError, match=r"Cannot read .*gray12\.png: 16/32-bit"):
        deploy.read_image(mixed_files["png12"])
    with pytest.raises(deploy.InputImageError, match="16/32-bit"):
        deploy.to_model_input(Image.open(mixed_files["png12"]))


# --------------------------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def medical_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder layout with DICOM files (12-bit, from the synthetic scans) and one NIfTI volume per folder."""
    scans = make_synthetic_scans(tmp_path_factory.mktemp("scans"), image_size=32, num_train=16, num_test=12)
    root = tmp_path_factory.mktemp("medical")
    for split in ("train/normal", "test/normal", "test/abnormal"):
        pngs = sorted((scans / split).glob("*.png"))
        for png in pngs[:8]:
            values = np.asarray(Image.open(png)).astype(np.uint16) * 16
            write_dicom(
                root / split / f"{png.stem}.dcm",
                values,
                bits_stored=12,
                RescaleSlope=1,
                RescaleIntercept=-1024,
                WindowCenter=1024,
                WindowWidth=4096,
            )
        volume = np.zeros((32, 32, 6), np.float32)
        for k, png in enumerate(pngs[8:12]):
            volume[..., k + 1] = np.asarray(Image.open(png), dtype=np.float32)
        write_nifti(root / split / "volume.nii.gz", volume)
    return root


def test_medical_folder_splits_files_then_cuts_volumes(medical_root: Path) -> None:
    datamodule = MedicalFolder(root=medical_root, train_batch_size=4, eval_batch_size=4)
    datamodule.setup()
    splits = {name: list(getattr(datamodule, f"{name}_data").samples.image_path) for name in ("train", "val", "test")}
    assert len(splits["train"]) == 8 + 4  # 8 DICOM files and the 4 kept slices of the volume
    assert len(splits["val"]) + len(splits["test"]) == 2 * (8 + 4)
    files = {name: {ImageRef.parse(item).path for item in items} for name, items in splits.items()}
    assert not files["val"] & files["test"]  # a volume's slices never land in two splits
    for name, items in splits.items():
        volumes = [item for item in items if ".nii.gz:" in item]
        assert all(ImageRef.parse(item).axis == "2" for item in volumes), name
        for volume in {ImageRef.parse(item).path for item in volumes}:
            assert sum(item.startswith(volume) for item in items) == 4  # all kept slices together
    again = MedicalFolder(root=medical_root)
    again.setup()
    assert list(again.val_data.samples.image_path) == splits["val"]  # seeded
    item = datamodule.val_data[0]
    expected = read_image(item.image_path, datamodule.reader_config)
    np.testing.assert_array_equal(item.image.permute(1, 2, 0).numpy(), expected)


def test_unreadable_dicom_is_named_before_training(medical_root: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(medical_root, tmp_path / "copy"))
    (root / "test" / "normal" / "report.dcm").write_text("not an image")
    with pytest.raises(ImageFileError, match=r"1 of 28 images of dataset 'scans' cannot be used:\n.*report\.dcm: not"):
        MedicalFolder(root=root).setup()


def test_predict_dataset_reads_dicom_and_volumes(medical_root: Path) -> None:
    dataset = CheckedPredictDataset(medical_root / "test" / "abnormal", window="range")
    assert len(dataset) == 8 + 4
    assert sum(":2:" in name for name in dataset.image_filenames) == 4
    item = dataset[len(dataset) - 1]
    expected = read_image(item.image_path, ReaderConfig(window="range"))
    np.testing.assert_array_equal(item.image.permute(1, 2, 0).numpy(), expected)


@pytest.mark.slow
def test_cli_trains_on_a_folder_of_dicom_and_nifti(medical_root: Path, tmp_path: Path) -> None:
    model = ["--model", "anomalib_salad.Salad", "--model.visualizer", "anomalib_salad.data.ReaderVisualizer"]
    for key, value in TINY.items():
        model += [f"--model.{key}", str(list(value)) if isinstance(value, tuple) else str(value)]
    anomalib = Path(sys.executable).with_name("anomalib")
    command = [
        str(anomalib),
        "train",
        *model,
        "--data",
        "anomalib_salad.MedicalFolder",
        "--data.root",
        str(medical_root),
        "--trainer.max_epochs",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--default_root_dir",
        str(tmp_path / "results"),
    ]
    result = subprocess.run(
        command,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "image_AUROC" in result.stdout + result.stderr
    overlays = {path.name for path in (tmp_path / "results").rglob("*.png")}
    assert any(name.endswith(".dcm.png") for name in overlays)
    assert any(name.startswith("volume.nii.gz_2_") for name in overlays)
