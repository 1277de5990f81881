"""PNG, JPEG, BMP, WebP and TIFF files (Pillow) by the reader's bit-depth rule.

8-bit files come out bit-identical to ``anomalib.data.utils.read_image``; 16/32-bit grayscale is divided by
``2**bit_depth - 1``, never clipped; float images must already lie in ``[0, 1]``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .common import DEFAULT, HIGH_BIT_DEPTH_MODES, ImageReadError, ReaderConfig, gray_to_rgb

__all__ = ["decode_reason", "pil_to_array", "read_pillow", "uint8_to_float"]

_ONE_OVER_255 = np.float32(1.0 / 255.0)  # torchvision's to_dtype(scale=True) multiplies by this: bit-identical


def pil_to_array(image: Image.Image, config: ReaderConfig | None = None, what: str = "PIL image") -> np.ndarray:
    """A decoded Pillow image by the reader's bit-depth rule (see :mod:`anomalib_salad.data.reader`).

    Args:
        image: A loaded Pillow image.
        config: Reader settings (``bit_depth``, ``require_bit_depth``). Defaults to :class:`ReaderConfig` ``()``.
        what: How to name the image in errors (its file). Defaults to ``"PIL image"``.

    Returns:
        np.ndarray: ``(H, W, 3)`` float32 in ``[0, 1]``.

    Raises:
        ImageReadError: If a 16/32-bit image's values do not fit ``bit_depth``, a float image leaves ``[0, 1]``,
            or a 16-bit image comes without ``bit_depth`` while ``require_bit_depth`` is set.
    """
    config = config or DEFAULT
    mode = image.mode
    if mode == "F":
        values = np.asarray(image, dtype=np.float32)
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if not np.isfinite(values).all() or low < 0 or high > 1:
            raise ImageReadError(
                what,
                f"floating-point image with values in [{low:g}, {high:g}]; only float images "
                "in [0, 1] can be read. Window and rescale it (e.g. to 8 or 16-bit) first.",
            )
        return gray_to_rgb(values)
    if mode in HIGH_BIT_DEPTH_MODES:
        if config.require_bit_depth and config.bit_depth is None:
            raise ImageReadError(
                what,
                f"16/32-bit grayscale image (Pillow mode {mode!r}) and no bit depth given: "
                "pass the bit_depth the model was trained with (e.g. --bit-depth 12 for 12-bit "
                "data, 16 for the full range); it cannot be guessed from the pixels",
            )
        values = np.asarray(image)
        full_scale = float(2 ** (config.bit_depth or 16) - 1)
        low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
        if low < 0 or high > full_scale:
            # Signed (e.g. Hounsfield units) or wider than declared: clipping would silently destroy it.
            bits = f"bit_depth={config.bit_depth}" if config.bit_depth else "16 bits"
            raise ImageReadError(
                what,
                f"pixel values in [{low}, {high}] do not fit {bits} (0..{full_scale:.0f}); "
                "set bit_depth to the bits the file stores, or window and rescale it to unsigned "
                "8/16-bit first.",
            )
        return gray_to_rgb(values.astype(np.float32) / np.float32(full_scale))
    # anomalib's own conversion, so 8-bit files read identically with or without this reader. (Pillow already
    # reduces 16-bit RGB(A) and gray+alpha PNGs to 8 bits, i.e. scales them correctly.)
    return uint8_to_float(np.asarray(image.convert("RGB")))


def uint8_to_float(values: np.ndarray) -> np.ndarray:
    """``uint8`` values as float32 in ``[0, 1]``, bit-identical to torchvision's ``to_dtype(..., scale=True)``.

    Args:
        values: A uint8 array.

    Returns:
        np.ndarray: float32, ``values * float32(1 / 255)``.
    """
    return values.astype(np.float32) * _ONE_OVER_255


def read_pillow(path: str, config: ReaderConfig) -> np.ndarray:
    """Decode ``path`` with Pillow and convert it by :func:`pil_to_array`."""
    try:
        with Image.open(path) as image:
            image.load()
            return pil_to_array(image, config, path)
    except ImageReadError:
        raise
    except Exception as error:  # Pillow's decoders raise many types (OSError, SyntaxError, struct.error, ...)
        raise ImageReadError(path, decode_reason(path, error)) from error


def decode_reason(path: str, error: Exception) -> str:
    """Why Pillow could not decode ``path``: the error's type and message without the repeated path."""
    text = str(error).replace(f"'{path}'", "").strip()
    return f"cannot be decoded as an image ({type(error).__name__}: {text})"
