"""The embedded default dataset: synthetic brain-scan-like slices with synthetic lesions.

It lets the README's main command train and test SALAD with nothing to download. Images are drawn
with NumPy and written once, in anomalib's Folder layout, under ``root``:

    root/train/normal/*.png     normal slices
    root/test/normal/*.png      normal slices
    root/test/abnormal/*.png    slices with one lesion (bright core, dark edema ring)

A normal slice is a head-shaped ellipse with a bright skull ring, a textured brain and two dark
ventricles; position, size, rotation, texture and noise vary per image. It is a sanity check of the
pipeline, not a medical benchmark.
"""

import json
import logging
from pathlib import Path

import numpy as np
from anomalib.data import Folder
from PIL import Image

logger = logging.getLogger(__name__)

__all__ = ["SyntheticScans", "make_synthetic_scans", "synthetic_scan"]

GENERATOR_VERSION = 1


def _ellipse(
    rows: np.ndarray,
    cols: np.ndarray,
    center: tuple[float, float],
    axes: tuple[float, float],
    angle: float,
) -> np.ndarray:
    """Normalised radius of each pixel for a rotated ellipse (< 1 inside)."""
    dy, dx = rows - center[0], cols - center[1]
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = dx * cos + dy * sin, -dx * sin + dy * cos
    return np.sqrt((u / axes[1]) ** 2 + (v / axes[0]) ** 2)


def synthetic_scan(rng: np.random.Generator, size: int = 64, lesion: bool = False) -> np.ndarray:
    """Draw one slice.

    Args:
        rng: Random generator.
        size: Image side in pixels.
        lesion: Add one lesion inside the brain.

    Returns:
        np.ndarray: ``(size, size)`` uint8 image.
    """
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    center = (size / 2 + rng.uniform(-0.03, 0.03) * size, size / 2 + rng.uniform(-0.03, 0.03) * size)
    axes = (rng.uniform(0.40, 0.45) * size, rng.uniform(0.33, 0.38) * size)
    angle = rng.uniform(-0.17, 0.17)
    head = _ellipse(rows, cols, center, axes, angle)
    image = np.zeros((size, size))
    image[head < 1] = 0.85  # skull
    brain = head < 0.88
    frequencies = rng.uniform(2, 6, size=(3, 2)) * 2 * np.pi / size
    phases = rng.uniform(0, 2 * np.pi, size=3)
    texture = sum(np.sin(f[0] * rows + f[1] * cols + p) for f, p in zip(frequencies, phases, strict=True)) / 3
    image[brain] = 0.5 + 0.06 * texture[brain]
    spread = rng.uniform(0.10, 0.14) * size
    for side in (-1, 1):
        ventricle_center = (center[0] - 0.05 * size, center[1] + side * spread / 2)
        ventricle = _ellipse(rows, cols, ventricle_center, (0.12 * size, 0.05 * size), angle + side * 0.3)
        image[ventricle < 1] = 0.2
    if lesion:
        radius = rng.uniform(0.06, 0.11) * size
        distance = rng.uniform(0, 0.45) * axes[1]
        direction = rng.uniform(0, 2 * np.pi)
        lesion_center = (center[0] + distance * np.sin(direction), center[1] + distance * np.cos(direction))
        r = _ellipse(rows, cols, lesion_center, (radius, radius), 0.0)
        edema = (r < 1.6) & brain
        image[edema] = 0.3
        image[(r < 1) & brain] = 0.95
    image += rng.normal(0, 0.02, size=image.shape)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def make_synthetic_scans(
    root: str | Path,
    image_size: int = 64,
    num_train: int = 400,
    num_test: int = 100,
    seed: int = 0,
) -> Path:
    """Write the synthetic dataset in Folder layout unless the same one is already there.

    Args:
        root: Target folder.
        image_size: Image side in pixels.
        num_train: Normal training images.
        num_test: Normal and abnormal test images (each).
        seed: Seed of the generator.

    Returns:
        Path: ``root``.
    """
    root = Path(root)
    spec = {
        "version": GENERATOR_VERSION,
        "image_size": image_size,
        "num_train": num_train,
        "num_test": num_test,
        "seed": seed,
    }
    marker = root / "dataset.json"
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return root
    logger.info("Generating the synthetic scan dataset in %s", root)
    rng = np.random.default_rng(seed)
    for folder, count, lesion in (
        ("train/normal", num_train, False),
        ("test/normal", num_test, False),
        ("test/abnormal", num_test, True),
    ):
        target = root / folder
        target.mkdir(parents=True, exist_ok=True)
        for stale in target.glob("*.png"):
            stale.unlink()
        for index in range(count):
            Image.fromarray(synthetic_scan(rng, image_size, lesion)).save(target / f"{index:04d}.png")
    marker.write_text(json.dumps(spec))
    return root


class SyntheticScans(Folder):
    """Folder datamodule over the synthetic scans, generated on first use.

    Args:
        root: Where the images live (created on first use). Defaults to ``./datasets/salad_synthetic``.
        image_size: Image side in pixels. Defaults to ``64``.
        num_train: Normal training images. Defaults to ``400``.
        num_test: Normal and abnormal test images, each. Half of the test set becomes the validation set.
            Defaults to ``100``.
        train_batch_size: Training batch size. Defaults to ``32``.
        eval_batch_size: Evaluation batch size. Defaults to ``32``.
        num_workers: Data loader workers. Defaults to ``0``.
        seed: Seed of the generator and of the validation split. Defaults to ``0``.
    """

    def __init__(
        self,
        root: str | Path = "./datasets/salad_synthetic",
        image_size: int = 64,
        num_train: int = 400,
        num_test: int = 100,
        train_batch_size: int = 32,
        eval_batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(
            name="salad_synthetic",
            root=root,
            normal_dir="train/normal",
            abnormal_dir="test/abnormal",
            normal_test_dir="test/normal",
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            seed=seed,
        )
        self.generator_args = {"image_size": image_size, "num_train": num_train, "num_test": num_test, "seed": seed}

    def prepare_data(self) -> None:
        """Generate the images once (Lightning calls this on one process)."""
        make_synthetic_scans(self.root, **self.generator_args)

    def _setup(self, _stage: str | None = None) -> None:
        # Also here: Engine.predict and direct setup() calls skip prepare_data.
        make_synthetic_scans(self.root, **self.generator_args)
        super()._setup(_stage)
