"""Running an exported SALAD model with OpenVINO, NumPy and Pillow only: no torch, no anomalib, no model code.

:func:`read_image`, :func:`prepare_input`, :func:`to_model_input` and :class:`SaladInferencer` need only NumPy,
Pillow and OpenVINO (plus pydicom / nibabel for DICOM / NIfTI files), so an edge machine scores images with an
exported IR and no torch. Files are read by :mod:`anomalib_salad.data.reader`, the reader that training uses too.

The exported graph expects ``(N, 3, H, W)`` float32 RGB in ``[0, 1]`` of any size; it resizes (antialiased bicubic),
scales to ``[-1, 1]``, converts to grayscale, scores, and min-max normalises with the threshold fitted on
the validation set, so ``pred_score`` lies in ``[0, 1]`` with the decision threshold at ``0.5``.
:class:`SaladInferencer` also takes channels-last and uint8 batches as they are read: OpenVINO's
``PrePostProcessor`` adds the transposition and the scaling to the compiled graph (the layout of an array is
given by the caller, or read by one documented rule).

Example:
    >>> from anomalib_salad.deploy import SaladInferencer
    >>> inferencer = SaladInferencer("weights/openvino/model.xml", precision_hint="f32")  # doctest: +SKIP
    >>> prediction = inferencer.predict("scan.png")  # doctest: +SKIP
    >>> prediction.pred_score, prediction.pred_label  # doctest: +SKIP
    (array([0.73], dtype=float32), array([ True]))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from ..data import reader
from ..data.reader import ImageReadError, ImageRef, ReaderConfig

__all__ = [
    "CheckpointError",
    "InputImageError",
    "SaladInferencer",
    "SaladPrediction",
    "list_images",
    "precision_name",
    "prepare_input",
    "read_image",
    "to_model_input",
]

IMAGE_EXTENSIONS = reader.SUPPORTED_SUFFIXES
PrecisionHint = Literal["f32", "bf16", "f16"]
InputLayout = Literal["HW", "HWC", "CHW", "NHWC", "NCHW"]
BatchLayout = Literal["NHWC", "NCHW"]
INPUT_LAYOUTS: tuple[str, ...] = ("HW", "HWC", "CHW", "NHWC", "NCHW")
# The deployment default: 16-bit PNG/TIFF files need the bit depth the model was trained with (the graph cannot
# tell 12-bit data read as 16-bit from a darker image). DICOM and NIfTI files carry their own scaling.
DEPLOY_READER = ReaderConfig(require_bit_depth=True)


#: Metadata of exports written on 2026-12-01 only, whose graph resized without the antialiasing they were trained with.
_RESIZE_IN_FRONT_KEY = "salad_antialias_resize"


class CheckpointError(ValueError):
    """A file is not a usable Salad checkpoint or exported SALAD model (also raised by the model's checks)."""


class InputImageError(ValueError):
    """An image cannot be turned into the exported model's ``(N, 3, H, W)`` input."""


def read_image(path: str | Path, config: ReaderConfig | None = None) -> np.ndarray:
    """Read an image as training does: RGB, float32 in ``[0, 1]``, shape ``(H, W, 3)``.

    Uses :func:`anomalib_salad.data.reader.read_image`, the reader of the training datasets (``CheckedFolder``,
    ``MedicalFolder``): 8-bit files as anomalib reads them, 16-bit grayscale divided by ``2**bit_depth - 1``,
    DICOM through its modality LUT and VOI window, NIfTI slices (``path:axis:index``) normalised per volume.
    Grayscale becomes three equal channels; the exported graph turns them back into one with weights that sum
    to 1, as in training.

    Args:
        path: An image file, or a frame / slice id (``path:frame:k``, ``path:axis:index``).
        config: Reader settings; pass those of training (``bit_depth``, ``window``, ``axis``, ...). Defaults to
            :data:`DEPLOY_READER`, which refuses 16-bit PNG/TIFF files until ``bit_depth`` is given.

    Returns:
        np.ndarray: ``(H, W, 3)`` float32.

    Raises:
        FileNotFoundError: If the file does not exist.
        InputImageError: If it cannot be decoded, or does not fit the settings (e.g. 16-bit without a bit depth).
    """
    file = Path(ImageRef.parse(path).path)
    if not file.is_file():
        msg = f"Image not found: {path}"
        raise FileNotFoundError(msg)
    try:
        return reader.read_image(path, config or DEPLOY_READER)
    except ImageReadError as error:
        msg = f"Cannot read {error}"
        raise InputImageError(msg) from error


def _checked_values(array: np.ndarray, what: str) -> np.ndarray:
    """``array`` as uint8 (kept: the graph scales it) or float32 in ``[0, 1]``; no scaling guessed from values."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if not np.issubdtype(array.dtype, np.floating):
        msg = f"{what} has dtype {array.dtype}; pass uint8 (0-255) or float in [0, 1]"
        raise InputImageError(msg)
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        msg = f"{what} holds NaN or Inf values"
        raise InputImageError(msg)
    low, high = float(array.min(initial=0.0)), float(array.max(initial=0.0))
    # No guessing from the value range (anomalib's inferencer divides by 255 when max > 1): say so instead.
    if low < 0.0 or high > 1.0:
        msg = f"{what} is float with values in [{low:g}, {high:g}]; float images must be in [0, 1] (divide by 255?)"
        raise InputImageError(msg)
    return array


def _channels_hint(channels: int) -> str:
    hints = {2: " (grayscale + alpha? use image[..., 0])", 4: " (RGBA? use image[..., :3])"}
    return hints.get(channels, "")


def _default_layout(shape: tuple[int, ...], what: str) -> str:
    """The documented rule for an array given without a layout: channels last if the last side is 1 or 3."""
    if len(shape) == 2:
        return "HW"
    if len(shape) in {3, 4}:
        channels_first = shape[len(shape) - 3]
        if shape[-1] in {1, 3}:
            return "HWC" if len(shape) == 3 else "NHWC"
        if channels_first in {1, 3}:
            return "CHW" if len(shape) == 3 else "NCHW"
        channels = min(shape[-1], channels_first)
        expected = "(H, W), (H, W, C) or (C, H, W)" if len(shape) == 3 else "a batch (N, H, W, C) or (N, C, H, W)"
        msg = (
            f"{what} has shape {shape}: expected {expected} with C = 1 (grayscale) or 3 (RGB), "
            f"got {channels} channels{_channels_hint(channels)}"
        )
        raise InputImageError(msg)
    msg = f"{what} has {len(shape)} dimensions (shape {shape}); expected an image (2 or 3) or a batch (4)"
    raise InputImageError(msg)


def _as_batch(array: np.ndarray, layout: InputLayout | None, what: str) -> tuple[np.ndarray, BatchLayout]:
    """A view of ``array`` with batch and channel axes, and whether it is ``NHWC`` or ``NCHW`` (no pixel copied)."""
    layout = layout or _default_layout(array.shape, what)
    if layout not in INPUT_LAYOUTS:
        msg = f"layout {layout!r} is not one of {', '.join(INPUT_LAYOUTS)}"
        raise InputImageError(msg)
    if array.ndim != len(layout):
        msg = f"{what} has {array.ndim} dimensions (shape {array.shape}); layout {layout} needs {len(layout)}"
        raise InputImageError(msg)
    batch = array[None, ..., None] if layout == "HW" else array if layout.startswith("N") else array[None]
    batch_layout: BatchLayout = "NCHW" if layout.endswith("CHW") else "NHWC"
    channels = batch.shape[batch_layout.index("C")]
    if channels not in {1, 3}:
        msg = f"{what} has shape {array.shape}: layout {layout} gives {channels} channels, expected 1 or 3"
        raise InputImageError(msg + _channels_hint(channels))
    return batch, batch_layout


def prepare_input(
    image: str | Path | Image.Image | np.ndarray | Any, layout: InputLayout | None = None
) -> tuple[np.ndarray, BatchLayout]:
    """One image or a batch as a contiguous 3-channel uint8 or float32 batch, in the layout it came in.

    The transposition to the graph's ``NCHW`` and the uint8 scaling are left to OpenVINO's
    ``PrePostProcessor`` (:meth:`SaladInferencer.compiled_for`), so pixels are copied at most once here (grayscale
    is repeated to three channels, which the graph turns back into one with weights that sum to 1).

    Args:
        image: A file path (read by :func:`read_image` with its default settings); a PIL image (by the same
            bit-depth rule); an array (or anything ``np.asarray`` accepts, e.g. a CPU tensor) as uint8 (0-255)
            or float in ``[0, 1]``.
        layout: The array's axes: ``"HW"``, ``"HWC"``, ``"CHW"``, ``"NHWC"`` or ``"NCHW"``, with ``C`` 1 or 3.
            ``None`` applies the documented rule: 2 axes are ``HW``; 3 or 4 axes are channels last when the last
            side is 1 or 3, else channels first. Give it when that rule could misread an array (e.g. ``(3, 3, 3)``
            channels first). Files and PIL images are always ``HWC``.

    Returns:
        tuple[np.ndarray, str]: The ``(N, H, W, 3)`` or ``(N, 3, H, W)`` batch (uint8, or float32 in ``[0, 1]``)
        and its layout, ``"NHWC"`` or ``"NCHW"``.

    Raises:
        InputImageError: On a wrong channel count, rank, layout, dtype or value range, or an unreadable file.
        FileNotFoundError: If a path does not exist.
    """
    if isinstance(image, str | Path):
        array, what, layout = read_image(image), str(image), "HWC"
    elif isinstance(image, Image.Image):
        try:
            array, what, layout = reader.pil_to_array(image, DEPLOY_READER), "PIL image", "HWC"
        except ImageReadError as error:
            raise InputImageError(str(error)) from error
    else:
        array, what = np.asarray(image), f"array of shape {np.shape(image)}"
    batch, batch_layout = _as_batch(np.asarray(array), layout, what)
    batch = _checked_values(batch, what)
    if 0 in batch.shape:
        msg = f"{what} is empty"
        raise InputImageError(msg)
    channel_axis = batch_layout.index("C")
    if batch.shape[channel_axis] == 1:
        batch = np.repeat(batch, 3, axis=channel_axis)
    return np.ascontiguousarray(batch), batch_layout


def to_model_input(image: str | Path | Image.Image | np.ndarray | Any, layout: InputLayout | None = None) -> np.ndarray:
    """Turn one image or a batch into the exported graph's own input ``(N, 3, H, W)`` float32 in ``[0, 1]``.

    For torch and anomalib's inferencer; :class:`SaladInferencer` takes :func:`prepare_input`'s batch as it is.

    Args:
        image: What :func:`prepare_input` takes.
        layout: The array's axes, as for :func:`prepare_input`. Defaults to its documented rule.

    Returns:
        np.ndarray: Contiguous ``(N, 3, H, W)`` float32.

    Raises:
        InputImageError: On a wrong channel count, rank, layout, dtype or value range, or an unreadable file.
        FileNotFoundError: If a path does not exist.
    """
    batch, batch_layout = prepare_input(image, layout)
    if batch.dtype == np.uint8:
        batch = reader.uint8_to_float(batch)
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2) if batch_layout == "NHWC" else batch)


@dataclass
class SaladPrediction:
    """Outputs of the exported graph for a batch of ``N`` images.

    Attributes:
        pred_score: ``(N,)`` normalised anomaly score in ``[0, 1]``; ``> 0.5`` is anomalous.
        pred_label: ``(N,)`` bool, ``True`` for anomalous.
        anomaly_map: ``(N, S, S)`` normalised ``|x - D(E(x))|`` at network resolution ``S``.
        pred_mask: ``(N, S, S)`` bool, the map above its threshold, or ``None``.
    """

    pred_score: np.ndarray
    pred_label: np.ndarray
    anomaly_map: np.ndarray
    pred_mask: np.ndarray | None = None


def precision_name(precision: Any) -> str:
    """``"f32"``, ``"bf16"`` or ``"f16"`` from an ``INFERENCE_PRECISION_HINT`` property (an ``ov.Type`` or a string).

    Args:
        precision: What ``get_property("INFERENCE_PRECISION_HINT")`` returned for a core or a compiled model.

    Returns:
        str: The precision's short name.
    """
    return precision.get_type_name() if hasattr(precision, "get_type_name") else str(precision)


class SaladInferencer:
    """Run an exported SALAD model (OpenVINO IR or ONNX) with OpenVINO, NumPy and Pillow only.

    Unlike ``anomalib.deploy.OpenVINOInferencer`` it imports no torch or anomalib, validates inputs with clear
    messages (channel count, dtype, range, unreadable files), accepts grayscale arrays, never rescales by
    guessing from pixel values, and does not create an ``openvino_cache`` folder in the working directory.

    Args:
        path: ``model.xml`` (with ``model.bin`` next to it) or ``model.onnx``.
        device: OpenVINO device. Defaults to ``"CPU"``.
        precision_hint: ``INFERENCE_PRECISION_HINT``: ``"f32"`` reproduces the torch model to ~1e-6; ``None``
            keeps OpenVINO's default, which is ``bf16`` on CPUs with AVX512-BF16 or AMX even for an FP32 IR
            (faster, scores drift by ~1e-2 relative). Defaults to ``"f32"``.
        config: Further OpenVINO properties (e.g. ``{"PERFORMANCE_HINT": "THROUGHPUT"}``). Defaults to ``None``.

    Raises:
        FileNotFoundError: If the model file (or the ``.bin`` of an ``.xml``) is missing.
        CheckpointError: If the file is not a model OpenVINO reads, or not a SALAD / anomalib export.
    """

    def __init__(
        self,
        path: str | Path,
        device: str = "CPU",
        precision_hint: PrecisionHint | None = "f32",
        config: Mapping[str, Any] | None = None,
    ) -> None:
        import openvino as ov  # noqa: PLC0415  (importing this module must stay cheap)

        path = Path(path)
        if path.suffix not in {".xml", ".onnx"}:
            msg = f"{path}: expected an OpenVINO IR (.xml) or ONNX (.onnx) file"
            raise CheckpointError(msg)
        for required in (path, path.with_suffix(".bin")) if path.suffix == ".xml" else (path,):
            if not required.is_file():
                msg = f"Exported model file not found: {required}"
                raise FileNotFoundError(msg)
        core = ov.Core()
        try:
            model = core.read_model(path)
        except RuntimeError as error:
            msg = f"OpenVINO cannot read {path}: {str(error).strip().splitlines()[0]}"
            raise CheckpointError(msg) from error
        outputs = {name for output in model.outputs for name in output.get_names()}
        if len(model.inputs) != 1 or not {"pred_score", "anomaly_map"} <= outputs:
            msg = (
                f"{path} is not an anomalib export of SALAD: it has {len(model.inputs)} input(s) and outputs "
                f"{sorted(outputs)}, expected one image input and 'pred_score' and 'anomaly_map'"
            )
            raise CheckpointError(msg)
        shape = model.inputs[0].get_partial_shape()
        if shape.rank.is_static and (shape.rank.get_length() != 4 or not shape[1].compatible(ov.Dimension(3))):
            msg = f"{path}: input shape {shape} is not (N, 3, H, W)"
            raise CheckpointError(msg)
        if model.has_rt_info(["framework", _RESIZE_IN_FRONT_KEY]):
            msg = (
                f"{path} was exported by a development version (2026-12-01) that expected its inputs resized before "
                "the graph; export it again from its checkpoint, which now puts that resize into the graph"
            )
            raise CheckpointError(msg)
        properties = dict(config or {})
        if precision_hint is not None:
            properties["INFERENCE_PRECISION_HINT"] = precision_hint
        self.path = path
        self.input_shape = shape
        self.device = device
        self._core, self._model, self._properties = core, model, properties
        # The graph's own input, (N, 3, H, W) float32; compiled_for() adds the other layouts and uint8.
        self.compiled_model = core.compile_model(model, device, properties)
        self._compiled: dict[tuple[str, str], Any] = {("f32", "NCHW"): self.compiled_model}
        # The precision the plugin actually chose, for logs and reports.
        self.precision = precision_name(self.compiled_model.get_property("INFERENCE_PRECISION_HINT"))

    def compiled_for(self, element_type: Literal["f32", "u8"], layout: BatchLayout) -> Any:
        """The model compiled for batches of ``element_type`` in ``layout``, compiled once on first use.

        OpenVINO's ``PrePostProcessor`` puts the transposition to ``NCHW`` and the uint8 scaling (``x * (1/255)``
        in float32, as the reader scales 8-bit files) into the graph, so NumPy does neither.

        Args:
            element_type: ``"f32"`` (values in ``[0, 1]``) or ``"u8"`` (0-255).
            layout: ``"NHWC"`` or ``"NCHW"``, with three channels.

        Returns:
            ov.CompiledModel: What to run (or give an ``AsyncInferQueue``) such batches with.
        """
        key = (element_type, layout)
        if key not in self._compiled:
            import openvino as ov  # noqa: PLC0415
            from openvino import opset13  # noqa: PLC0415
            from openvino.preprocess import PrePostProcessor  # noqa: PLC0415

            processor = PrePostProcessor(self._model.clone())
            tensor_type = {"f32": ov.Type.f32, "u8": ov.Type.u8}[element_type]
            processor.input().tensor().set_element_type(tensor_type).set_layout(ov.Layout(layout))
            processor.input().model().set_layout(ov.Layout("NCHW"))
            if element_type == "u8":
                scale = opset13.constant(np.float32(1.0 / 255.0))
                processor.input().preprocess().convert_element_type(ov.Type.f32).custom(
                    lambda node: opset13.multiply(node, scale).output(0)
                )
            self._compiled[key] = self._core.compile_model(processor.build(), self.device, self._properties)
        return self._compiled[key]

    def _check_size(self, batch: np.ndarray, layout: BatchLayout) -> None:
        shape = self.input_shape
        for axis, name in ((0, "batch size"), (2, "height"), (3, "width")):
            given = batch.shape[layout.index("NCHW"[axis])]
            if shape.rank.is_static and shape[axis].is_static and shape[axis].get_length() != given:
                msg = f"{self.path} was exported for {name} {shape[axis].get_length()}, got {given}"
                raise InputImageError(msg)

    def _infer(self, batch: np.ndarray, layout: BatchLayout) -> dict[str, np.ndarray]:
        self._check_size(batch, layout)
        element_type = "u8" if batch.dtype == np.uint8 else "f32"
        result = self.compiled_for(element_type, layout)(batch)
        return {next(iter(output.get_names())): np.asarray(value) for output, value in result.items()}

    def predict(self, images: Any, layout: InputLayout | None = None) -> SaladPrediction:
        """Score one image, a batch array, or a list of images.

        Args:
            images: Anything :func:`prepare_input` takes, or a list / tuple of such single images. List items
                of one size, type and layout run as one batch; others run one by one (the graph resizes each).
            layout: The axes of array inputs (``"HW"``, ``"HWC"``, ``"CHW"``, ``"NHWC"``, ``"NCHW"``). Defaults
                to :func:`prepare_input`'s documented rule.

        Returns:
            SaladPrediction: One row per image, in input order.
        """
        if isinstance(images, list | tuple):
            if not images:
                msg = "No images to score"
                raise InputImageError(msg)
            batches = [prepare_input(image, layout) for image in images]
            if len({(batch.shape[1:], batch.dtype, order) for batch, order in batches}) == 1:
                outputs = [self._infer(np.concatenate([batch for batch, _ in batches]), batches[0][1])]
            else:
                outputs = [self._infer(batch, order) for batch, order in batches]
            merged = {key: np.concatenate([output[key] for output in outputs]) for key in outputs[0]}
        else:
            merged = self._infer(*prepare_input(images, layout))
        anomaly_map = merged["anomaly_map"]
        pred_mask = merged.get("pred_mask")
        return SaladPrediction(
            pred_score=merged["pred_score"].reshape(-1).astype(np.float32),
            pred_label=merged.get("pred_label", merged["pred_score"] > 0.5).reshape(-1).astype(bool),
            anomaly_map=anomaly_map.reshape(anomaly_map.shape[0], *anomaly_map.shape[-2:]).astype(np.float32),
            pred_mask=None if pred_mask is None else pred_mask.reshape(pred_mask.shape[0], *pred_mask.shape[-2:]) != 0,
        )


def list_images(folder: str | Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files directly in ``folder`` (or ``[folder]`` if it is a file), sorted by name.

    Args:
        folder: A folder or one image file.
        extensions: Name endings to accept, lower case (``.nii.gz`` works). Defaults to every format the reader
            reads (PNG/JPEG/BMP/TIFF/WebP, DICOM, NIfTI).

    Returns:
        list[Path]: The files.

    Raises:
        FileNotFoundError: If ``folder`` does not exist or holds no images.
    """
    folder = Path(folder)
    if folder.is_file():
        return [folder]
    if not folder.is_dir():
        msg = f"Input folder not found: {folder}"
        raise FileNotFoundError(msg)
    suffixes = tuple(extensions)
    files = sorted(path for path in folder.iterdir() if path.is_file() and path.name.lower().endswith(suffixes))
    if not files:
        msg = f"No images with suffix {list(extensions)} in {folder}"
        raise FileNotFoundError(msg)
    return files
