"""The proxy-task augmentations change only what they should."""

import kornia.augmentation as K  # noqa: N812  (kornia's own convention)
import pytest
import torch

from anomalib_salad.model.proxy_tasks import (
    RandomBezierIntensity,
    RandomInPainting,
    RandomLocalPixelShuffle,
    RandomProxyTask,
    _box_masks,
)


def test_inpainting_tiles_and_areas() -> None:
    images = torch.rand(16, 1, 64, 64)
    aug = RandomInPainting()
    out = aug(images)
    boxes = aug._params["boxes"]
    assert boxes.shape == (16, 5, 4)  # five tiles per image
    area = boxes[..., 2] * boxes[..., 3]
    assert (area >= 64 * 64 / 64).all()
    assert (area <= 64 * 64 / 25).all()
    assert (boxes[..., 0] + boxes[..., 2] <= 64).all()
    assert (boxes[..., 1] + boxes[..., 3] <= 64).all()
    inside = _box_masks(boxes, 64, 64).any(1, keepdim=True)
    assert torch.equal(out[~inside], images[~inside])  # pixels outside the tiles untouched
    assert (out[inside] != images[inside]).float().mean() > 0.99  # tiles refilled with noise
    assert out.min() >= 0
    assert out.max() <= 1


def test_local_shuffle_keeps_each_tiles_pixels() -> None:
    images = torch.rand(8, 2, 40, 40)
    aug = RandomLocalPixelShuffle(num_tiles=1, max_side_fraction=0.25)
    out = aug(images)
    boxes = aug._params["boxes"]
    assert (boxes[..., 2] <= 10).all()
    assert (boxes[..., 3] <= 10).all()
    inside = _box_masks(boxes, 40, 40)[:, 0]
    for b in range(8):
        mask = inside[b]
        assert torch.equal(out[b][:, ~mask], images[b][:, ~mask])
        # Same multiset of pixels in the tile, channels moved together.
        before = images[b][:, mask].T.tolist()
        after = out[b][:, mask].T.tolist()
        assert sorted(before) == sorted(after)


def test_local_shuffle_paper_settings_permute_within_tiles() -> None:
    images = torch.arange(64 * 64, dtype=torch.float).view(1, 1, 64, 64).repeat(4, 1, 1, 1) / 4096
    aug = RandomLocalPixelShuffle()
    out = aug(images)
    boxes = aug._params["boxes"]
    assert boxes.shape == (4, 300, 4)
    assert (boxes[..., 2] * boxes[..., 3] <= 64 * 64 / 100).all()
    covered = _box_masks(boxes, 64, 64).any(1, keepdim=True)
    assert torch.equal(out[~covered], images[~covered])
    assert (out != images).any()
    # Every output value comes from the original image (read from the original, as Models Genesis does).
    assert torch.isin(out, images).all()


def test_bezier_map_stays_in_range_and_keeps_endpoints() -> None:
    aug = RandomBezierIntensity()
    images = torch.linspace(0, 1, 64 * 64).view(1, 1, 64, 64).repeat(32, 1, 1, 1)
    out = aug(images)
    assert out.min() >= 0
    assert out.max() <= 1
    flip = aug._params["flip"]
    first, last = out.flatten(1)[:, 0], out.flatten(1)[:, -1]
    torch.testing.assert_close(first, flip.float(), atol=1e-4, rtol=0)  # 0 -> 0, or -> 1 when flipped
    torch.testing.assert_close(last, 1 - flip.float(), atol=1e-4, rtol=0)
    assert not torch.equal(out, images)


def test_bezier_identity_curve() -> None:
    aug = RandomBezierIntensity()
    images = torch.rand(2, 1, 16, 16)
    params = {"control_points": torch.tensor([[[1 / 3, 1 / 3], [2 / 3, 2 / 3]]] * 2), "flip": torch.tensor([0, 1]) > 0}
    out = aug(images, params=params)
    torch.testing.assert_close(out[0], images[0], atol=1e-3, rtol=0)  # collinear points: the identity
    torch.testing.assert_close(out[1], 1 - images[1], atol=1e-3, rtol=0)  # read backwards: inversion


def test_proxy_task_applies_one_task_per_image() -> None:
    images = torch.rand(30, 1, 32, 32)
    aug = RandomProxyTask()
    out = aug(images)
    choice = aug._params["task"]
    assert set(choice.tolist()) == {0, 1, 2}
    changed = (out != images).flatten(1).any(1)
    assert changed.all()


def test_proxy_task_weights_and_errors() -> None:
    aug = RandomProxyTask(weights=[0, 0, 1])
    aug(torch.rand(10, 1, 32, 32))
    assert (aug._params["task"] == 2).all()
    with pytest.raises(ValueError, match="one weight per task"):
        RandomProxyTask(weights=[1, 1])
    with pytest.raises(ValueError, match="positive sum"):
        RandomProxyTask(weights=[0, 0, 0])


def test_reproducible_under_seed_and_composable() -> None:
    images = torch.rand(6, 1, 32, 32)
    pipeline = K.AugmentationSequential(K.RandomHorizontalFlip(p=1.0), RandomProxyTask())
    torch.manual_seed(3)
    first = pipeline(images)
    torch.manual_seed(3)
    second = pipeline(images)
    assert torch.equal(first, second)
    assert first.shape == images.shape
