"""SALAD's self-supervised proxy tasks, written as kornia augmentations.

Section III-C of the paper perturbs a normal image with one of three transforms and trains a second
decoder to restore it: in-painting, local pixel shuffling and a non-linear (Bezier) intensity map, the
last two taken from Models Genesis (Zhou et al. 2019). Each class here is a
:class:`kornia.augmentation.IntensityAugmentationBase2D`, so it composes with kornia pipelines, runs
batched on the input's device, and is reproducible under ``torch.manual_seed``.

Like every kornia intensity augmentation, they expect images in ``[0, 1]``.

Example:
    >>> import torch
    >>> from anomalib_salad.model.proxy_tasks import RandomProxyTask
    >>> images = torch.rand(8, 1, 64, 64)
    >>> perturbed = RandomProxyTask()(images)
    >>> perturbed.shape
    torch.Size([8, 1, 64, 64])
"""

from collections.abc import Sequence
from typing import Any

import torch
from kornia.augmentation import IntensityAugmentationBase2D
from torch import Tensor

__all__ = ["RandomBezierIntensity", "RandomInPainting", "RandomLocalPixelShuffle", "RandomProxyTask"]


class _ProxyTask(IntensityAugmentationBase2D):
    """Base of the proxy tasks: kornia's input validation, plus a refusal of NaN/Inf images (nothing restores them)."""

    def validate_tensor(self, input: Tensor) -> None:  # noqa: A002  (kornia's name)
        """Check the dtype and ``(B, C, H, W)`` shape as kornia does, then that every value is finite."""
        super().validate_tensor(input)
        if not torch.isfinite(input).all():
            msg = f"{type(self).__name__} expects images in [0, 1]; got NaN or Inf values in shape {tuple(input.shape)}"
            raise ValueError(msg)


def _random_boxes(
    batch_size: int,
    num_tiles: int,
    height: int,
    width: int,
    side_fraction: tuple[float, float],
    device: torch.device,
) -> Tensor:
    """Draw axis-aligned tiles that fit inside the image.

    Args:
        batch_size: Number of images.
        num_tiles: Tiles per image.
        height: Image height.
        width: Image width.
        side_fraction: Range of each side as a fraction of the image side, ``(low, high)``.
        device: Where to draw the numbers.

    Returns:
        Tensor: ``(B, T, 4)`` long tensor of ``(top, left, tile_height, tile_width)``.
    """
    low, high = side_fraction
    sides = torch.tensor([height, width], device=device)
    lo = (sides * low).ceil().clamp(min=1)
    hi = (sides * high).floor().clamp(min=1)
    hi = torch.maximum(hi, lo)
    # Integer sides uniform in [lo, hi], each dimension drawn independently.
    size = lo + (torch.rand(batch_size, num_tiles, 2, device=device) * (hi - lo + 1)).floor().clamp(max=hi - lo)
    size = size.long()
    corner = (torch.rand(batch_size, num_tiles, 2, device=device) * (sides - size + 1)).floor().long()
    return torch.cat([corner, size], dim=-1)


def _box_masks(boxes: Tensor, height: int, width: int) -> Tensor:
    """Rasterise ``(B, T, 4)`` boxes to a ``(B, T, H, W)`` boolean mask."""
    rows = torch.arange(height, device=boxes.device).view(1, 1, height, 1)
    cols = torch.arange(width, device=boxes.device).view(1, 1, 1, width)
    top, left, tile_h, tile_w = (boxes[..., i, None, None] for i in range(4))
    return (rows >= top) & (rows < top + tile_h) & (cols >= left) & (cols < left + tile_w)


class RandomInPainting(_ProxyTask):
    """Fill random tiles with uniform noise (SALAD Sec. III-C a).

    The paper crops five tiles whose area lies in ``[WH/64, WH/25]``. Drawing each side uniformly from
    ``[1/8, 1/5]`` of the image side keeps every tile's area inside that range.

    Args:
        num_tiles: Tiles per image. Defaults to ``5``, the paper's value.
        side_fraction: Range of each tile side as a fraction of the image side. Defaults to ``(1/8, 1/5)``.
        noise_range: Range of the uniform noise written into the tiles. Defaults to ``(0, 1)``, the full
            unit intensity range.
        p: Probability of perturbing each image. Defaults to ``1.0``.
    """

    def __init__(
        self,
        num_tiles: int = 5,
        side_fraction: tuple[float, float] = (1 / 8, 1 / 5),
        noise_range: tuple[float, float] = (0.0, 1.0),
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        if num_tiles < 1:
            msg = f"num_tiles must be at least 1, got {num_tiles}"
            raise ValueError(msg)
        if not 0 < side_fraction[0] <= side_fraction[1] <= 1:
            msg = f"side_fraction must satisfy 0 < low <= high <= 1, got {side_fraction}"
            raise ValueError(msg)
        self.num_tiles = num_tiles
        self.side_fraction = tuple(side_fraction)
        self.noise_range = tuple(noise_range)

    def generate_parameters(self, batch_shape: tuple[int, ...]) -> dict[str, Tensor]:
        """Draw ``num_tiles`` boxes per image."""
        batch_size, _, height, width = batch_shape
        boxes = _random_boxes(batch_size, self.num_tiles, height, width, self.side_fraction, self.device)
        return {"boxes": boxes}

    def apply_transform(
        self,
        input: Tensor,  # noqa: A002  (kornia's signature)
        params: dict[str, Tensor],
        flags: dict[str, Any],
        transform: Tensor | None = None,
    ) -> Tensor:
        """Write uniform noise inside the tiles; leave every other pixel untouched."""
        del flags, transform
        height, width = input.shape[-2:]
        mask = _box_masks(params["boxes"].to(input.device), height, width).any(dim=1, keepdim=True)
        low, high = self.noise_range
        noise = torch.rand_like(input) * (high - low) + low
        return torch.where(mask, noise, input)


class RandomLocalPixelShuffle(_ProxyTask):
    """Shuffle pixels inside many small tiles (SALAD Sec. III-C b, after Models Genesis).

    The paper samples 300 tiles of 1 to ``WH/100`` pixels. Each side is drawn from ``[1, side/10]``, so the
    area stays within that bound. As in Models Genesis, every tile reads from the original image; where tiles
    overlap the later tile wins, so each pixel is written at most once.

    Args:
        num_tiles: Tiles per image. Defaults to ``300``, the paper's value.
        max_side_fraction: Largest tile side as a fraction of the image side. Defaults to ``0.1``.
        p: Probability of perturbing each image. Defaults to ``1.0``.
    """

    def __init__(self, num_tiles: int = 300, max_side_fraction: float = 0.1, p: float = 1.0) -> None:
        super().__init__(p=p)
        if num_tiles < 1:
            msg = f"num_tiles must be at least 1, got {num_tiles}"
            raise ValueError(msg)
        if not 0 < max_side_fraction <= 1:
            msg = f"max_side_fraction must be in (0, 1], got {max_side_fraction}"
            raise ValueError(msg)
        self.num_tiles = num_tiles
        self.max_side_fraction = max_side_fraction

    def generate_parameters(self, batch_shape: tuple[int, ...]) -> dict[str, Tensor]:
        """Draw ``num_tiles`` boxes per image."""
        batch_size, _, height, width = batch_shape
        fraction = (0.0, self.max_side_fraction)
        boxes = _random_boxes(batch_size, self.num_tiles, height, width, fraction, self.device)
        return {"boxes": boxes}

    def apply_transform(
        self,
        input: Tensor,  # noqa: A002
        params: dict[str, Tensor],
        flags: dict[str, Any],
        transform: Tensor | None = None,
    ) -> Tensor:
        """Permute the pixels of every tile with one scatter over the whole batch."""
        del flags, transform
        if input.numel() == 0:  # empty batch or no channels: nothing to shuffle
            return input.clone()
        batch, channels, height, width = input.shape
        boxes = params["boxes"].to(input.device)
        num_tiles = boxes.shape[1]
        side = int(max(boxes[..., 2].max(), boxes[..., 3].max()))
        # Each tile lives in a side x side scratch grid; slots outside the tile are invalid.
        local = torch.arange(side * side, device=input.device)
        local_row, local_col = local // side, local % side
        top, left, tile_h, tile_w = (boxes[..., i, None] for i in range(4))
        valid = (local_row < tile_h) & (local_col < tile_w)  # (B, T, S*S)
        # Valid slots in row-major order are the destinations; a random order of them are the sources.
        invalid = (~valid).long() * (side * side)
        dest_slot = torch.argsort(invalid + local, dim=-1)
        src_slot = torch.argsort(torch.rand(valid.shape, device=input.device) + invalid, dim=-1)
        used = local < (tile_h * tile_w)  # the first h*w entries of each ordering are the valid slots

        def to_pixel(slot: Tensor) -> Tensor:
            return (top + slot // side) * width + left + slot % side

        dest = torch.where(used, to_pixel(dest_slot), 0)
        src = torch.where(used, to_pixel(src_slot), 0)
        tile_id = torch.arange(num_tiles, device=input.device).view(1, num_tiles, 1).expand_as(dest)
        # Resolve overlaps deterministically: the highest tile index writing a pixel wins.
        owner = torch.full((batch, height * width), -1, device=input.device, dtype=torch.long)
        owner = owner.scatter_reduce(1, dest.flatten(1), torch.where(used, tile_id, -1).flatten(1), reduce="amax")
        keep = used & (owner.gather(1, dest.flatten(1)).view_as(dest) == tile_id)
        dest = torch.where(keep, dest, height * width)  # dropped writes go to a spare column
        flat = input.reshape(batch, channels, height * width)
        values = flat.gather(2, src.flatten(1).unsqueeze(1).expand(-1, channels, -1))
        out = torch.cat([flat, flat.new_zeros(batch, channels, 1)], dim=2)
        out = out.scatter(2, dest.flatten(1).unsqueeze(1).expand(-1, channels, -1), values)
        return out[..., : height * width].reshape_as(input)


class RandomBezierIntensity(_ProxyTask):
    """Map intensities through a random cubic Bezier curve (SALAD Sec. III-C c, after Models Genesis).

    The curve runs from ``(0, 0)`` to ``(1, 1)`` through two random control points, as in Models Genesis'
    ``nonlinear_transformation`` that the paper follows; with probability ``flip_prob`` the curve is read
    backwards, which inverts the intensities. The map keeps values in ``[0, 1]``.

    Args:
        num_samples: Points sampled along the curve for the piecewise-linear lookup. Defaults to ``256``.
        flip_prob: Probability of reading the curve backwards (intensity inversion). Defaults to ``0.5``.
        p: Probability of perturbing each image. Defaults to ``1.0``.
    """

    def __init__(self, num_samples: int = 256, flip_prob: float = 0.5, p: float = 1.0) -> None:
        super().__init__(p=p)
        if num_samples < 2:
            msg = f"num_samples must be at least 2, got {num_samples}"
            raise ValueError(msg)
        self.num_samples = num_samples
        self.flip_prob = flip_prob

    def generate_parameters(self, batch_shape: tuple[int, ...]) -> dict[str, Tensor]:
        """Draw the two inner control points and the flip flag of each image."""
        batch_size = batch_shape[0]
        return {
            "control_points": torch.rand(batch_size, 2, 2, device=self.device),
            "flip": torch.rand(batch_size, device=self.device) < self.flip_prob,
        }

    def curves(self, params: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Sample each image's curve as a lookup table.

        Returns:
            tuple[Tensor, Tensor]: ``(x, y)`` of shape ``(B, num_samples)``, ``x`` ascending in ``[0, 1]``.
        """
        inner = params["control_points"]
        t = torch.linspace(0, 1, self.num_samples, device=inner.device).view(1, -1, 1)
        p1, p2 = inner[:, None, 0], inner[:, None, 1]
        curve = 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3  # P0 = (0, 0), P3 = (1, 1)
        x, y = curve[..., 0], curve[..., 1]
        y = torch.where(params["flip"].view(-1, 1), y.flip(-1), y)
        order = torch.argsort(x, dim=-1)
        return x.gather(1, order), y.gather(1, order)

    def apply_transform(
        self,
        input: Tensor,  # noqa: A002
        params: dict[str, Tensor],
        flags: dict[str, Any],
        transform: Tensor | None = None,
    ) -> Tensor:
        """Interpolate every pixel on its image's curve."""
        del flags, transform
        if input.numel() == 0:  # empty batch or no channels: no pixel to map
            return input.clone()
        params = {key: value.to(input.device) for key, value in params.items()}
        x, y = self.curves(params)
        x, y = x.to(input.dtype), y.to(input.dtype)
        values = input.clamp(0, 1).reshape(input.shape[0], -1).contiguous()
        right = torch.searchsorted(x.contiguous(), values).clamp(1, self.num_samples - 1)
        x0, x1 = x.gather(1, right - 1), x.gather(1, right)
        y0, y1 = y.gather(1, right - 1), y.gather(1, right)
        weight = ((values - x0) / (x1 - x0).clamp(min=1e-12)).clamp(0, 1)
        return (y0 + weight * (y1 - y0)).reshape_as(input)


class RandomProxyTask(_ProxyTask):
    """Perturb each image with one proxy task chosen at random (SALAD Sec. III-C).

    Args:
        tasks: The candidate augmentations. Defaults to in-painting, local pixel shuffling and the Bezier
            intensity map with the paper's settings.
        weights: Relative probability of each task. Defaults to equal weights. A zero weight drops a task.
        p: Probability of perturbing each image. Defaults to ``1.0``.
    """

    def __init__(
        self,
        tasks: Sequence[IntensityAugmentationBase2D] | None = None,
        weights: Sequence[float] | None = None,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        tasks = (
            list(tasks)
            if tasks is not None
            else [
                RandomInPainting(),
                RandomLocalPixelShuffle(),
                RandomBezierIntensity(),
            ]
        )
        weights = list(weights) if weights is not None else [1.0] * len(tasks)
        if len(weights) != len(tasks) or not tasks:
            msg = f"Need one weight per task: got {len(weights)} weights for {len(tasks)} tasks"
            raise ValueError(msg)
        if min(weights) < 0 or sum(weights) <= 0:
            msg = f"Task weights must be non-negative with a positive sum, got {weights}"
            raise ValueError(msg)
        self.tasks = torch.nn.ModuleList(tasks)
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float), persistent=False)

    def generate_parameters(self, batch_shape: tuple[int, ...]) -> dict[str, Tensor]:
        """Choose a task index per image."""
        if batch_shape[0] == 0:  # multinomial cannot draw zero samples
            return {"task": torch.zeros(0, dtype=torch.long, device=self.device)}
        choice = torch.multinomial(self.weights.to(self.device), batch_shape[0], replacement=True)
        return {"task": choice}

    def apply_transform(
        self,
        input: Tensor,  # noqa: A002
        params: dict[str, Tensor],
        flags: dict[str, Any],
        transform: Tensor | None = None,
    ) -> Tensor:
        """Run each task once, on the images that drew it."""
        del flags, transform
        choice = params["task"].to(input.device)
        out = input.clone()
        for index, task in enumerate(self.tasks):
            selected = torch.nonzero(choice == index).flatten()
            if selected.numel():
                out[selected] = task(input[selected])
        return out
