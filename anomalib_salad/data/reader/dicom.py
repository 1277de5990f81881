"""DICOM files (pydicom, imported on the first file): modality LUT, VOI window, MONOCHROME1, colour, frames.

The stored values of any transfer syntax that an installed pydicom plugin decodes go through the modality LUT, then
one VOI step chosen by ``ReaderConfig.window``, scaled to ``[0, 1]`` over that step's output range; the rules are in
:mod:`anomalib_salad.data.reader`. Of the header only the pixel description, the LUT elements, the UIDs and the
Modality are read (no patient data).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from .common import ImageReadError, ImageRef, ReaderConfig, ScanInfo, gray_to_rgb

__all__ = ["dicom_frame_count", "open_dicom", "read_dicom"]

# The only DICOM elements a scan is told by: UIDs and the modality, never a patient's name, ID or dates.
_SCAN_ELEMENTS = ("SeriesInstanceUID", "StudyInstanceUID", "Modality")

# Elements of the Modality LUT and VOI LUT modules that pydicom's processing functions read.
_LUT_ELEMENTS = (
    "PhotometricInterpretation",
    "BitsStored",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "ModalityLUTSequence",
    "VOILUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
)
# Where enhanced multi-frame objects keep them per frame (PS3.3 C.7.6.16.2.9 and C.7.6.16.2.10).
_FUNCTIONAL_GROUPS = {
    "PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept"),
    "FrameVOILUTSequence": ("WindowCenter", "WindowWidth", "VOILUTFunction"),
}


def _pydicom() -> Any:
    try:
        import pydicom  # noqa: PLC0415  (only DICOM users pay for the import)
    except ImportError as error:  # pragma: no cover - a declared dependency
        msg = "Reading DICOM needs pydicom: pip install pydicom"
        raise ImportError(msg) from error
    return pydicom


def _dcmread(path: str, **kwargs: Any) -> Any:
    pydicom = _pydicom()
    try:
        return pydicom.dcmread(path, **kwargs)
    except pydicom.errors.InvalidDicomError as error:
        raise ImageReadError(path, f"not a DICOM file ({error})") from error
    except Exception as error:  # truncated files raise EOFError, struct.error, ValueError, ...
        raise ImageReadError(path, f"cannot be read as DICOM ({type(error).__name__}: {error})") from error


def dicom_frame_count(path: str) -> int:
    """The number of frames of a DICOM file, read from its header (no pixel data is decoded)."""
    ds = _dcmread(path, stop_before_pixels=True)
    _check_dicom_image(path, ds)
    return max(1, int(ds.get("NumberOfFrames", 1) or 1))


def _check_dicom_image(path: str, ds: Any) -> None:
    if "Rows" not in ds or "Columns" not in ds or "PhotometricInterpretation" not in ds:
        sop = ds.get("SOPClassUID")
        what = f" ({sop.name})" if sop is not None and hasattr(sop, "name") else ""
        raise ImageReadError(path, f"DICOM object without an image{what}: no Rows/Columns/Photometric Interpretation")


# What anomalib-salad installs for compressed DICOM (its declared dependencies); named when a decoder is missing.
_PLUGINS_HINT = "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle"
# For transfer syntaxes that no pydicom plugin decodes: GDCM reads most of them.
_CONVERT_HINT = (
    "convert the file to an uncompressed transfer syntax (Explicit VR Little Endian) with a tool that reads it, "
    "e.g. GDCM's 'gdcmconv --raw IN OUT'"
)


def _decode_failure(path: str, ds: Any, error: Exception) -> ImageReadError:
    """Why pydicom could not decode the pixel data: the transfer syntax and what would decode it."""
    pydicom = _pydicom()
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    detail = " ".join(str(error).split()) or type(error).__name__
    if syntax is None:
        return ImageReadError(path, f"DICOM pixel data cannot be read ({type(error).__name__}: {detail})")
    try:
        compressed = syntax.is_compressed
    except ValueError:  # a UID this pydicom does not know as a transfer syntax, e.g. one added to DICOM later
        return ImageReadError(
            path,
            f"DICOM pixel data in transfer syntax {syntax} cannot be decoded: pydicom {pydicom.__version__} does "
            f"not know this transfer syntax; a newer pydicom may decode it, or {_CONVERT_HINT}",
        )
    if not compressed:
        return ImageReadError(path, f"DICOM pixel data cannot be read ({type(error).__name__}: {detail})")
    name = f"{syntax.name} ({syntax})"
    try:
        decoder = pydicom.pixels.get_decoder(syntax)
    except NotImplementedError:  # e.g. MPEG-2/H.264 video, JPIP references
        return ImageReadError(
            path,
            f"DICOM pixel data in {name} cannot be decoded: pydicom {pydicom.__version__} has no decoder for this "
            f"transfer syntax; {_CONVERT_HINT}",
        )
    missing = "; ".join(decoder.missing_dependencies)
    if not decoder.is_available:
        return ImageReadError(
            path,
            f"DICOM pixel data in {name} cannot be decoded: no decoder plugin for it is "
            f"installed. Install one of: {missing} (anomalib-salad's own: {_PLUGINS_HINT})",
        )
    hint = f"; other plugins that may decode it: {missing}" if missing else ""
    return ImageReadError(
        path,
        f"DICOM pixel data in {name} could not be decoded by the installed plugin(s) "
        f"{list(decoder.available_plugins)} ({type(error).__name__}: {detail}){hint}",
    )


def _lut_view(ds: Any, frame: int) -> Any:
    """A small dataset with the LUT elements that apply to ``frame`` (top level, else functional groups)."""
    pydicom = _pydicom()
    view = pydicom.Dataset()
    if hasattr(ds, "file_meta"):
        view.file_meta = ds.file_meta  # the endianness of OW LUT data
    for keyword in _LUT_ELEMENTS:
        if keyword in ds:
            view[keyword] = ds[keyword]
    groups = [ds.get("SharedFunctionalGroupsSequence")]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and frame < len(per_frame):
        groups.append(per_frame)  # per-frame values override shared ones
    for index, group in enumerate(groups):
        item = group[frame if index == 1 else 0] if group else None
        for sequence, keywords in _FUNCTIONAL_GROUPS.items():
            nested = item.get(sequence) if item is not None else None
            for keyword in keywords if nested else ():
                if keyword in nested[0] and keyword not in ds:
                    view[keyword] = nested[0][keyword]
    return view


def _voi(values: np.ndarray, view: Any, window: str | tuple[float, float]) -> np.ndarray:
    """The modality values after the VOI step, scaled to ``[0, 1]`` over that step's output range."""
    processing = _pydicom().pixels
    from pydicom.valuerep import DSfloat  # noqa: PLC0415

    if isinstance(window, tuple):
        view.WindowCenter, view.WindowWidth = (DSfloat(value, auto_format=True) for value in window)
        if "VOILUTSequence" in view:
            del view.VOILUTSequence  # an explicit window replaces the file's VOI
        if "VOILUTFunction" in view:
            del view.VOILUTFunction
        return _windowed(values, view)
    if window == "file" and view.get("VOILUTSequence"):
        descriptor = view.VOILUTSequence[0].LUTDescriptor
        # A LUT is indexed by integers: modality values from a rescale are rounded (PS3.3 C.11.2.1.1).
        indices = values if np.issubdtype(values.dtype, np.integer) else np.round(values).astype(np.int64)
        out = processing.apply_voi(indices, view)
        return out.astype(np.float64) / float(2 ** int(descriptor[2]) - 1)
    if window == "file" and view.get("WindowCenter") is not None and view.get("WindowWidth") is not None:
        return _windowed(values, view)
    # The full stored range, through the modality LUT: the same value in any file gives the same output.
    bits = int(view.BitsStored)
    signed = int(view.get("PixelRepresentation", 0)) == 1
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    ends = np.asarray(processing.apply_modality_lut(np.array([low, high]), view), dtype=np.float64)
    return (values.astype(np.float64) - ends[0]) / (ends[1] - ends[0])


def _windowed(values: np.ndarray, view: Any) -> np.ndarray:
    """Windowing by pydicom, scaled to ``[0, 1]`` by what it gives for -inf and +inf (its output range)."""
    processing = _pydicom().pixels
    try:
        out = processing.apply_windowing(values, view)
        ends = processing.apply_windowing(np.array([-np.inf, np.inf]), view)
    except ValueError as error:  # e.g. width < 1 for LINEAR, an unknown VOI LUT Function
        msg = f"invalid window ({error})"
        raise ValueError(msg) from error
    return (out - ends[0]) / (ends[1] - ends[0])


def read_dicom(ref: ImageRef, config: ReaderConfig, all_frames: bool = False) -> Iterator[tuple[str, np.ndarray]]:
    """The images of ``ref`` (one frame, or with ``all_frames`` every frame) as ``(id, image)`` pairs."""
    return open_dicom(ref, config, all_frames)[1]


def _dicom_scan(path: str, ds: Any) -> ScanInfo:
    """The series of a DICOM file from its UIDs and Modality alone: no other element (no patient data) is read."""
    series, study, modality = (str(ds.get(keyword) or "").strip() for keyword in _SCAN_ELEMENTS)
    if series:
        return ScanInfo("dicom_series", series, study, modality)
    return ScanInfo("dicom_file", path, study, modality)  # Series Instance UID is Type 1, but not every file has it


def open_dicom(
    ref: ImageRef, config: ReaderConfig, all_frames: bool = False
) -> tuple[ScanInfo, Iterator[tuple[str, np.ndarray]]]:
    """The scan of ``ref`` and its frames: decoded now, each converted when it is taken (one header read)."""
    pydicom = _pydicom()
    path = ref.path
    ds = _dcmread(path)
    _check_dicom_image(path, ds)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageReadError(path, "DICOM file without pixel data")
    frames = max(1, int(ds.get("NumberOfFrames", 1) or 1))
    if ref.index is not None and not 0 <= ref.index < frames:
        raise ImageReadError(ref.id, f"frame index out of range: the file has {frames} frame(s)")
    try:
        # The Dataset form: pydicom's path form trips over some valid encapsulated files. With an index, only
        # that frame is decoded.
        pixels = pydicom.pixels.pixel_array(ds, index=None if all_frames else ref.index)
    except Exception as error:  # plugins raise RuntimeError, NotImplementedError, ValueError, OSError, ...
        raise _decode_failure(path, ds, error) from error
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if all_frames:
        stack = pixels if frames > 1 else pixels[None]
        indices = list(range(frames))
    else:
        if ref.index is None and frames > 1:
            raise ImageReadError(
                path, f"has {frames} frames: read one as '{path}:frame:<index>' or all of them with read_images()"
            )
        stack, indices = pixels[None], [ref.index or 0]
    names = [path] if frames == 1 else [f"{path}:frame:{k}" for k in indices]
    return _dicom_scan(path, ds), _dicom_frames(names, stack, indices, ds, photometric, config)


def _dicom_frames(
    names: list[str], stack: np.ndarray, indices: list[int], ds: Any, photometric: str, config: ReaderConfig
) -> Iterator[tuple[str, np.ndarray]]:
    for name, frame, index in zip(names, stack, indices, strict=True):
        try:
            yield name, _dicom_frame(frame, ds, index, photometric, config)
        except ValueError as error:
            raise ImageReadError(name, str(error)) from error


def _dicom_frame(frame: np.ndarray, ds: Any, index: int, photometric: str, config: ReaderConfig) -> np.ndarray:
    processing = _pydicom().pixels
    if photometric in {"MONOCHROME1", "MONOCHROME2"}:
        if frame.ndim != 2:
            msg = f"{photometric} frame of shape {frame.shape}, expected (rows, columns)"
            raise ValueError(msg)
        view = _lut_view(ds, index)
        values = np.asarray(processing.apply_modality_lut(frame, view))
        image = np.clip(_voi(values, view, config.window), 0.0, 1.0)
        if photometric == "MONOCHROME1":
            image = 1.0 - image  # MONOCHROME1 shows low values white; bright means dense here, as in MONOCHROME2
        return gray_to_rgb(image)
    if photometric == "PALETTE COLOR":
        rgb = processing.apply_color_lut(frame, ds)
        return (rgb.astype(np.float64) / float(np.iinfo(rgb.dtype).max)).astype(np.float32)
    if frame.ndim == 3 and frame.shape[-1] == 3:  # RGB, or YBR that pydicom has converted to RGB
        full_scale = float(2 ** int(ds.get("BitsStored", 8)) - 1)
        return np.clip(frame.astype(np.float64) / full_scale, 0.0, 1.0).astype(np.float32)
    msg = f"unsupported Photometric Interpretation {photometric!r} with frame shape {frame.shape}"
    raise ValueError(msg)
