"""SALAD's pre-processor: anomalib's, with an antialiased resize that exports as the pixels training saw.

anomalib exports every ``Resize`` without antialiasing (``get_exportable_transform``), and OpenVINO 2026.4 computes
ONNX's own antialiased ``Resize`` wrongly, so a model trained on antialiased inputs would be deployed on other
pixels. :class:`AntialiasedResize` computes torchvision's antialiased bicubic resize as two matrix products whose
weights follow from the input's height and width at run time: the exported graph (dynamic sizes included) gives
the same values as training to float32 rounding, in torch, ONNX and OpenVINO.

Example:
    >>> import torch
    >>> from torchvision.transforms.v2.functional import InterpolationMode, resize
    >>> images = torch.rand(2, 3, 96, 80)
    >>> ours = AntialiasedResize((32, 32))(images)
    >>> theirs = resize(images, [32, 32], InterpolationMode.BICUBIC, antialias=True)
    >>> bool((ours - theirs).abs().max() < 1e-5)
    True
"""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from anomalib.pre_processing import PreProcessor
from anomalib.pre_processing.utils.transform import get_exportable_transform
from torch import Tensor, nn
from torchvision.transforms.v2 import Compose, InterpolationMode, Resize, Transform

logger = logging.getLogger(__name__)


def _cubic(distance: Tensor, a: float = -0.5) -> Tensor:
    """The bicubic convolution kernel with ``a = -0.5``, the one of torchvision's (and Pillow's) antialiased resize."""
    x = distance.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    # Masks as numbers rather than torch.where: the graph keeps no Select (post-processing is checked to have none).
    return near * (x < 1).to(x.dtype) + far * ((x >= 1) & (x < 2)).to(x.dtype)


def _triangle(distance: Tensor) -> Tensor:
    """The bilinear kernel."""
    return (1 - distance.abs()).clamp(min=0)


KERNELS = {InterpolationMode.BICUBIC: _cubic, InterpolationMode.BILINEAR: _triangle}


def resize_weights(
    size_in: int,
    size_out: int,
    like: Tensor,
    interpolation: InterpolationMode = InterpolationMode.BICUBIC,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The ``(size_out, size_in)`` matrix of an antialiased resize along one axis, as torchvision computes it.

    Each output pixel ``i`` is centred at ``(i + 0.5) * scale`` in the input; when shrinking, the kernel is stretched
    by the scale (that is the antialiasing), and each row is normalised to sum to one, which handles the borders.

    Args:
        size_in: Input length (may be symbolic in an export).
        size_out: Output length.
        like: A tensor whose device the weights are made on.
        interpolation: ``BICUBIC`` or ``BILINEAR``.
        dtype: Floating type of the weights. Defaults to float32.

    Returns:
        Tensor: The weights.
    """
    source = torch.arange(size_in, device=like.device, dtype=dtype)
    target = torch.arange(size_out, device=like.device, dtype=dtype)
    scale = torch.ones((), device=like.device, dtype=dtype) * size_in / size_out  # a tensor: an export keeps it dynamic
    centre = (target[:, None] + 0.5) * scale
    weights = KERNELS[interpolation]((source[None, :] - centre + 0.5) / scale.clamp(min=1.0))
    return weights / weights.sum(dim=1, keepdim=True)


class AntialiasedResize(nn.Module):
    """Antialiased resize of ``(..., H, W)`` float images to ``size``, as two matrix products (exportable).

    Equals torchvision's ``Resize(size, interpolation, antialias=True)`` on float images to ~1e-6, for shrinking
    and enlarging alike. It computes in float32 (float64 for float64 images) outside any autocast region, so that
    mixed-precision inference resizes as training did; an input already at ``size`` is returned as it is, as
    torchvision does (an exported graph, whose input size is not known, computes the products anyway).

    Args:
        size: ``(height, width)`` of the output.
        interpolation: ``BICUBIC`` (default) or ``BILINEAR``.
    """

    def __init__(self, size: tuple[int, int], interpolation: InterpolationMode = InterpolationMode.BICUBIC) -> None:
        super().__init__()
        interpolation = _mode(interpolation)
        if interpolation not in KERNELS:
            msg = f"AntialiasedResize supports {sorted(mode.value for mode in KERNELS)}, got {interpolation}"
            raise ValueError(msg)
        self.size, self.interpolation = (int(size[0]), int(size[1])), interpolation

    def forward(self, images: Tensor) -> Tensor:
        """Resize ``images`` (floating point)."""
        if not images.is_floating_point():
            msg = f"AntialiasedResize resizes floating-point images, got {images.dtype}; scale them to [0, 1] first"
            raise TypeError(msg)
        if not torch.compiler.is_exporting() and tuple(images.shape[-2:]) == self.size:
            return images
        dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
        with torch.autocast(images.device.type, enabled=False):
            rows = resize_weights(images.shape[-2], self.size[0], images, self.interpolation, dtype)
            columns = resize_weights(images.shape[-1], self.size[1], images, self.interpolation, dtype)
            return (rows @ images.to(dtype) @ columns.T).to(images.dtype)


def unexportable_antialiasing(transform: Any) -> bool:
    """Whether ``transform`` (or a step of it) antialiases in a way :func:`exportable_transform` cannot keep."""
    if isinstance(transform, Compose):
        return any(unexportable_antialiasing(step) for step in transform.transforms)
    if not isinstance(transform, Resize) or not transform.antialias:
        return False
    nearest = _mode(transform.interpolation) in {InterpolationMode.NEAREST, InterpolationMode.NEAREST_EXACT}
    return not nearest and not _exportable_resize(transform)  # torchvision does not antialias nearest modes


def _mode(interpolation: InterpolationMode | str | int) -> InterpolationMode | None:
    """An ``InterpolationMode`` from what ``Resize`` stores (torchvision keeps some as strings)."""
    try:
        return InterpolationMode(interpolation)
    except ValueError:
        return None


def _exportable_resize(transform: Any) -> bool:
    return (
        isinstance(transform, Resize)
        and bool(transform.antialias)
        and _mode(transform.interpolation) in KERNELS
        and transform.max_size is None
        and transform.size is not None
        and len(transform.size) == 2
    )


def exportable_transform(transform: Transform | None) -> Transform | None:
    """The exportable transform anomalib makes, except that an antialiased ``Resize((h, w))`` stays antialiased.

    Args:
        transform: The pre-processor's transform (left unchanged).

    Returns:
        Transform | None: What the exported graph (and the module's ``forward``) applies.
    """
    if _exportable_resize(transform):
        return AntialiasedResize(tuple(transform.size), _mode(transform.interpolation))
    if isinstance(transform, Compose):
        return Compose([exportable_transform(step) for step in transform.transforms])
    return get_exportable_transform(transform)  # a copy, with anomalib's changes


class SaladPreProcessor(PreProcessor):
    """The ``PreProcessor`` of anomalib, with an export that keeps an antialiased resize (see the module docstring).

    Training and validation apply ``transform`` as written, as anomalib's does; ``forward`` (the exported graph and
    the torch module's inference) applies :func:`exportable_transform`, also after the transform is restored from
    a checkpoint.

    Args:
        transform: The transform, e.g. ``Compose([Resize((64, 64), antialias=True), Normalize(...)])``.
    """

    def __init__(self, transform: Transform | None = None) -> None:
        super().__init__(transform)
        self.export_transform = exportable_transform(self.transform)

    def load_checkpoint_config(self, config: dict[str, Any]) -> None:
        """Restore the transform as anomalib does, then rebuild the exportable one."""
        super().load_checkpoint_config(config)
        self.export_transform = exportable_transform(self.transform)


@contextmanager
def antialiased_export(pre_processor: Any) -> Iterator[None]:
    """Export ``pre_processor`` (any anomalib ``PreProcessor``) with :func:`exportable_transform`, then restore it.

    A plain anomalib ``PreProcessor`` (torchvision's ``Resize`` antialiases by default) would otherwise export its
    resize without antialiasing; a resize this module cannot export antialiased is exported as anomalib does, with a
    warning, since the graph then sees other pixels than training for inputs not already at the network size.
    """
    transform = getattr(pre_processor, "transform", None)
    if not isinstance(pre_processor, PreProcessor) or transform is None:
        yield
        return
    if unexportable_antialiasing(transform):
        logger.warning(
            "The pre-processor's %s antialiases in a way the export cannot reproduce (it can for Resize((h, w)), "
            "bicubic or bilinear, without max_size): the exported graph resizes without antialiasing, so give it "
            "images already at the network size.",
            transform,
        )
    saved = pre_processor.export_transform
    pre_processor.export_transform = exportable_transform(transform)
    try:
        yield
    finally:
        pre_processor.export_transform = saved
