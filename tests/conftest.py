"""Shared fixtures: a tiny SALAD configuration and a tiny generated Folder dataset."""

from pathlib import Path

import pytest
import torch

from anomalib_salad.data import make_synthetic_scans

# Small enough that a training epoch on 40 images takes about a second on 2 CPU cores.
TINY = {
    "image_size": 32,
    "base_channels": 8,
    "max_channels": 32,
    "latent_dim": 16,
    "disc_channels": 8,
    "feature_disc_hidden": (32, 16),
}
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_scans(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 normal training scans, 20 normal and 20 abnormal test scans, 32x32."""
    return make_synthetic_scans(tmp_path_factory.mktemp("scans"), image_size=32, num_train=40, num_test=20)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
