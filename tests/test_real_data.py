"""A short CPU training on real chest X-rays (PneumoniaMNIST from ../shared/data); skipped when absent."""

import sys
from pathlib import Path

import pytest
from anomalib.data import Folder
from anomalib.engine import Engine
from lightning.pytorch import seed_everything

from anomalib_salad import Salad

from .conftest import SHARED_DATA

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from medmnist_to_folder import convert

NPZ = SHARED_DATA / "pneumoniamnist" / "pneumoniamnist.npz"
# Scored with A_C = |E(x) - C| (Table V), the score that is stable after 3 epochs. Measured (docs/results.md):
# on the AMX machine A_C 0.833 / 0.844 / 0.846 on the test half for seeds 0 / 1 / 2, while the paper's
# default A_F gave 0.49 / 0.42 / 0.83 there, and 0.57 for seed 0 on the AVX2 machine (other CPU kernels).
# The floor says "the encoder learned to separate pneumonia from normal", with room for other CPUs and seeds.
AUROC_FLOOR = 0.7


@pytest.mark.slow
@pytest.mark.skipif(not NPZ.is_file(), reason=f"real data not found at {NPZ}")
def test_pneumoniamnist_short_training(tmp_path: Path) -> None:
    counts = convert(NPZ, tmp_path / "pneumoniamnist")
    assert counts == {"train/normal": 1214, "test/normal": 234, "test/abnormal": 390}
    seed_everything(0)
    datamodule = Folder(
        name="pneumoniamnist",
        root=tmp_path / "pneumoniamnist",
        normal_dir="train/normal",
        abnormal_dir="test/abnormal",
        normal_test_dir="test/normal",
        train_batch_size=64,
        eval_batch_size=128,
        num_workers=0,
        seed=0,
    )
    model = Salad(image_size=32, base_channels=32, max_channels=128, latent_dim=64, score="center")
    engine = Engine(max_epochs=3, default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    engine.fit(model, datamodule=datamodule)
    (metrics,) = engine.test(model, datamodule=datamodule)
    print(f"PneumoniaMNIST test image AUROC (A_C): {metrics['image_AUROC']:.4f}")
    assert metrics["image_AUROC"] > AUROC_FLOOR
