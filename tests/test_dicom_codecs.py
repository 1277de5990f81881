"""Compressed DICOM through the one reader: every transfer syntax that the declared pylibjpeg plugins decode.

Lossless files must read pixel-equal to their uncompressed twin, lossy ones close to theirs. Twins are the
uncompressed files of the pydicom wheel where it ships them (``MR_small.dcm``), else the same pixels decoded by an
independent decoder (imagecodecs: CharLS, libjpeg-turbo, OpenJPEG) and stored uncompressed. Files that the wheel
lacks (JPEG lossless process 14, JPEG-LS near-lossless with a known bound, 12-bit JPEG, HTJ2K) are encoded here
from ``MR_small.dcm`` with imagecodecs or pydicom's own encoders. Nothing is downloaded. A transfer syntax that no
installed decoder reads gives an error naming the file, the syntax and what would decode it.
"""

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import generate_frames
from pydicom.uid import (
    JPEG2000,
    MPEG2MPML,
    UID,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pydicom.uid import JPEGLossless as JPEGLosslessP14

from anomalib_salad.data.reader import ImageReadError, list_items, read_image, read_images

from .medical_files import encapsulated_copy, uncompressed_copy, wheel_file

# Pixel Representation 1, 16 bits stored, values 127..2145, its own window (600, 1600): the twin of several files.
MR = "MR_small.dcm"


def _imagecodecs(codec: str) -> object:
    """imagecodecs (anomalib installs it) with ``codec`` built in, or skip: the reader does not need it."""
    imagecodecs = pytest.importorskip("imagecodecs", reason="imagecodecs encodes the files the wheel lacks")
    if not getattr(imagecodecs, codec.upper()).available:
        pytest.skip(f"this imagecodecs build has no {codec} codec")
    return imagecodecs


def _syntax(path: str | Path) -> UID:
    return pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID


def _mr_values() -> np.ndarray:
    values = pydicom.dcmread(wheel_file(MR)).pixel_array
    assert values.min() >= 0  # so that the unsigned codestreams below hold the same numbers
    return values.astype(np.uint16)


def _assert_close(image: np.ndarray, reference: np.ndarray, mean: float, most: float) -> None:
    """Lossy: mean and maximum absolute difference of reader images (in [0, 1]) within bounds."""
    difference = np.abs(image.astype(np.float64) - reference)
    assert difference.mean() <= mean, difference.mean()
    assert difference.max() <= most, difference.max()


# --------------------------------------------------------------------------------------------------------------
# Files of the pydicom wheel
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "syntax", "twin"),
    [
        ("MR_small_RLE.dcm", RLELossless, MR),
        ("MR_small_jpeg_ls_lossless.dcm", JPEGLSLossless, MR),
        ("MR_small_jp2klossless.dcm", JPEG2000Lossless, MR),
        ("SC_rgb_jpeg_gdcm.dcm", JPEGLosslessSV1, "SC_rgb_rle.dcm"),  # 8-bit RGB; no uncompressed twin ships
        ("SC_rgb_rle_16bit.dcm", RLELossless, "SC_rgb_rle.dcm"),
    ],
)
def test_lossless_wheel_files_are_pixel_equal_to_their_twin(name: str, syntax: str, twin: str) -> None:
    path = wheel_file(name)
    assert _syntax(path) == syntax
    reference = read_image(wheel_file(twin))
    np.testing.assert_array_equal(read_image(path), reference)
    np.testing.assert_array_equal(read_images(path)[0][1], reference)


@pytest.mark.parametrize(
    ("name", "syntax", "codec"),
    [
        ("JPEGLSNearLossless_08.dcm", JPEGLSNearLossless, "jpegls"),
        ("JPEGLSNearLossless_16.dcm", JPEGLSNearLossless, "jpegls"),
        ("JPGExtended.dcm", JPEGExtended12Bit, "jpeg8"),  # 12-bit
        ("JPEG2000.dcm", JPEG2000, "jpeg2k"),  # signed 16-bit
        ("693_J2KI.dcm", JPEG2000, "jpeg2k"),  # signed, 14 bits stored, rescale and window
    ],
)
def test_lossy_wheel_files_read_as_an_independent_decoder_decodes_them(
    name: str, syntax: str, codec: str, tmp_path: Path
) -> None:
    path = wheel_file(name)
    assert _syntax(path) == syntax
    decode = getattr(_imagecodecs(codec), f"{codec}_decode")
    ds = pydicom.dcmread(path)
    pixels = decode(next(generate_frames(ds.PixelData, number_of_frames=1)))
    twin = uncompressed_copy(path, tmp_path / "twin.dcm", pixels.astype(ds.pixel_array.dtype))
    image, reference = read_image(path), read_image(twin)
    # libjpeg and libjpeg-turbo round the 12-bit inverse DCT differently: at most one step of 4095 apart.
    _assert_close(image, reference, mean=1e-4, most=1.0 / 4095 + 1e-6 if codec == "jpeg8" else 1e-6)


def test_lossy_rgb_wheel_files_are_close_to_the_lossless_ones() -> None:
    reference = read_image(wheel_file("SC_rgb_rle.dcm"))
    for name in ("SC_rgb_jls_lossy_line.dcm", "SC_rgb_jls_lossy_sample.dcm"):  # JPEG-LS, NEAR = 2
        assert _syntax(wheel_file(name)) == JPEGLSNearLossless
        _assert_close(read_image(wheel_file(name)), reference, mean=1 / 255, most=2 / 255 + 1e-6)
    for name in ("SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_dcmtk_+eb+cy+s4.dcm", "SC_rgb_dcmtk_+eb+cr.dcm"):  # baseline
        assert _syntax(wheel_file(name)) == JPEGBaseline8Bit
        _assert_close(read_image(wheel_file(name)), reference, mean=1 / 255, most=8 / 255)
    odd, twin = wheel_file("SC_rgb_small_odd_jpeg.dcm"), wheel_file("SC_rgb_small_odd.dcm")
    _assert_close(read_image(odd), read_image(twin), mean=2 / 255, most=5 / 255)


def test_the_malformed_12bit_jpeg_of_the_wheel_is_decoded_or_named() -> None:
    # JPEG-lossy.dcm has a misplaced marker (JPGExtended.dcm is its repaired copy); libjpeg refuses it.
    path = wheel_file("JPEG-lossy.dcm")
    try:
        image = read_image(path)
    except ImageReadError as error:
        message = str(error)
        assert message.startswith(f"{path}: DICOM pixel data in JPEG Extended (Process 2 and 4) ({JPEGExtended12Bit})")
        assert "could not be decoded by the installed plugin(s)" in message
    else:
        _assert_close(image, read_image(wheel_file("JPGExtended.dcm")), mean=1e-4, most=2 / 4095)


# --------------------------------------------------------------------------------------------------------------
# Files encoded here from MR_small.dcm
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("syntax", "predictor"), [(JPEGLosslessP14, 6), (JPEGLosslessSV1, 1)])
def test_jpeg_lossless_process_14_is_pixel_equal(syntax: str, predictor: int, tmp_path: Path) -> None:
    imagecodecs = _imagecodecs("jpeg8")
    try:  # libjpeg-turbo >= 3 writes process 14 (lossless) streams
        stream = imagecodecs.jpeg8_encode(_mr_values(), lossless=True, predictor=predictor, bitspersample=16)
    except Exception as error:  # imagecodecs raises its own error types per build
        pytest.skip(f"this imagecodecs build cannot write lossless JPEG ({error})")
    path = encapsulated_copy(wheel_file(MR), tmp_path / "ljpeg.dcm", syntax, [stream])
    assert _syntax(path) == syntax
    np.testing.assert_array_equal(read_image(path), read_image(wheel_file(MR)))


def test_htj2k_lossless_is_pixel_equal(tmp_path: Path) -> None:
    stream = _imagecodecs("htj2k").htj2k_encode(_mr_values())
    path = encapsulated_copy(wheel_file(MR), tmp_path / "htj2k.dcm", HTJ2KLossless, [stream])
    np.testing.assert_array_equal(read_image(path), read_image(wheel_file(MR)))


def test_jpeg_ls_near_lossless_stays_within_its_bound(tmp_path: Path) -> None:
    near = 3
    values = _mr_values()
    stream = _imagecodecs("jpegls").jpegls_encode(values, level=near)
    path = encapsulated_copy(wheel_file(MR), tmp_path / "near.dcm", JPEGLSNearLossless, [stream])
    decoded = pydicom.dcmread(path).pixel_array.astype(np.int64)
    assert 0 < np.abs(decoded - values).max() <= near  # lossy, and by at most NEAR stored values
    # Through the file's linear window of width 1600: at most NEAR / 1599 apart.
    _assert_close(read_image(path), read_image(wheel_file(MR)), mean=near / 1599, most=near / 1599 + 1e-6)


def test_jpeg_2000_lossy_written_by_pydicom_is_close(tmp_path: Path) -> None:
    ds = pydicom.dcmread(wheel_file(MR))
    ds.compress(JPEG2000, j2k_cr=[10])  # pylibjpeg-openjpeg's encoder, 10:1
    ds.save_as(tmp_path / "j2k.dcm")
    assert _syntax(tmp_path / "j2k.dcm") == JPEG2000
    _assert_close(read_image(tmp_path / "j2k.dcm"), read_image(wheel_file(MR)), mean=0.02, most=0.15)


def _mr_at(bits: int, tmp_path: Path) -> tuple[Path, np.ndarray]:
    """MR_small with ``bits`` stored (8 or 12), unsigned, without its window: the twin of a lossy file."""
    values = _mr_values().astype(np.float64)
    scaled = np.round((values - values.min()) / np.ptp(values) * (2**bits - 1))
    pixels = scaled.astype(np.uint8 if bits == 8 else np.uint16)
    twin = uncompressed_copy(
        wheel_file(MR), tmp_path / f"mr{bits}.dcm", pixels, bits_stored=bits, WindowCenter=None, WindowWidth=None
    )
    ds = pydicom.dcmread(twin)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (int(ds.BitsStored), int(ds.PixelRepresentation), "WindowCenter" in ds) == (bits, 0, False)
    return twin, pixels


def test_jpeg_baseline_8bit_is_close(tmp_path: Path) -> None:
    twin, pixels = _mr_at(8, tmp_path)
    stream = tmp_path / "baseline.jpg"
    Image.fromarray(pixels).save(stream, quality=95)  # Pillow writes baseline (process 1) JPEG
    path = encapsulated_copy(twin, tmp_path / "baseline.dcm", JPEGBaseline8Bit, [stream.read_bytes()])
    _assert_close(read_image(path), read_image(twin), mean=1.5 / 255, most=24 / 255)


def test_jpeg_extended_12bit_is_close(tmp_path: Path) -> None:
    imagecodecs = _imagecodecs("jpeg8")
    twin, pixels = _mr_at(12, tmp_path)
    try:  # libjpeg-turbo >= 3 writes 12-bit (process 4) streams
        stream = imagecodecs.jpeg8_encode(pixels, level=95, bitspersample=12)
    except Exception as error:
        pytest.skip(f"this imagecodecs build cannot write 12-bit JPEG ({error})")
    path = encapsulated_copy(twin, tmp_path / "extended.dcm", JPEGExtended12Bit, [stream])
    _assert_close(read_image(path), read_image(twin), mean=1.5 / 255, most=24 / 255)


def test_multiframe_rle_reads_frame_by_frame(tmp_path: Path) -> None:
    frames = np.random.default_rng(3).integers(0, 4096, (3, 16, 12), dtype=np.uint16)
    plain = uncompressed_copy(wheel_file(MR), tmp_path / "plain.dcm", frames, bits_stored=12)
    ds = pydicom.dcmread(plain)
    ds.compress(RLELossless)
    ds.save_as(tmp_path / "rle.dcm")
    path = tmp_path / "rle.dcm"
    assert list_items(path) == [f"{path}:frame:{k}" for k in range(3)]
    expected = [image for _, image in read_images(plain)]
    for k, (item, image) in enumerate(read_images(path)):
        np.testing.assert_array_equal(image, expected[k])
        np.testing.assert_array_equal(read_image(item), expected[k])


# --------------------------------------------------------------------------------------------------------------
# No decoder: the file, its transfer syntax and what would decode it
# --------------------------------------------------------------------------------------------------------------


def test_a_missing_plugin_is_named_with_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydicom.pixels.decoders import pylibjpeg  # noqa: PLC0415

    path = wheel_file("MR_small_jpeg_ls_lossless.dcm")
    decoder = pydicom.pixels.get_decoder(JPEGLSLossless)
    # As on a machine without pylibjpeg-libjpeg: pydicom lists the plugin as unavailable, with its requirements.
    unavailable = {**decoder._unavailable, "pylibjpeg": pylibjpeg.DECODER_DEPENDENCIES[JPEGLSLossless]}
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", unavailable)
    for read in (read_image, read_images):
        with pytest.raises(ImageReadError) as caught:
            read(path)
        message = str(caught.value)
        assert message.startswith(
            f"{path}: DICOM pixel data in JPEG-LS Lossless Image Compression ({JPEGLSLossless}) cannot be decoded: "
            "no decoder plugin for it is installed. Install one of:"
        )
        assert "pylibjpeg-libjpeg" in message
        assert "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle" in message
    monkeypatch.undo()
    np.testing.assert_array_equal(read_image(path), read_image(wheel_file(MR)))


def test_a_syntax_without_any_decoder_is_named_with_how_to_convert(tmp_path: Path) -> None:
    path = encapsulated_copy(wheel_file(MR), tmp_path / "video.dcm", MPEG2MPML, [b"\x00\x00\x01\xb3" + bytes(60)])
    with pytest.raises(ImageReadError) as caught:
        read_images(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: DICOM pixel data in MPEG2 Main Profile / Main Level ({MPEG2MPML}) cannot")
    assert f"pydicom {pydicom.__version__} has no decoder for this transfer syntax" in message
    assert "gdcmconv --raw" in message


def test_a_transfer_syntax_unknown_to_pydicom_is_named(tmp_path: Path) -> None:
    # JPEG XL (1.2.840.10008.1.2.4.110) is newer than pydicom 3.0, which cannot even write it: patch the UID in.
    newer = "1.2.840.10008.1.2.4.110"
    path = encapsulated_copy(wheel_file(MR), tmp_path / "jxl.dcm", MPEG2MPML, [b"\xff\x0a" + bytes(60)])
    data = path.read_bytes()
    assert data.count(MPEG2MPML.encode()) == 1
    assert len(MPEG2MPML) == len(newer)  # the same length: the file's element lengths stay right
    path.write_bytes(data.replace(MPEG2MPML.encode(), newer.encode()))
    if UID(newer).is_transfer_syntax:
        pytest.skip(f"pydicom {pydicom.__version__} knows {newer}")
    with pytest.raises(ImageReadError) as caught:
        read_image(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: DICOM pixel data in transfer syntax {newer} cannot be decoded")
    assert "a newer pydicom may decode it" in message
    assert "gdcmconv --raw" in message
