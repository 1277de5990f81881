"""The label-free recipe (configs/model/salad_robust.yaml): the L1-matched structure weight, the threshold fitted on
held-out normal images, the shipped presets, and that no test-split image or label reaches any of its choices."""

from pathlib import Path

import pytest
import torch
import yaml
from anomalib.data import Folder, ImageBatch, InferenceBatch
from anomalib.engine import Engine

from anomalib_salad import Salad
from anomalib_salad.model.loss import GeneratorLoss
from anomalib_salad.model.post_processing import FittedPostProcessor, RankPreservingPostProcessor, normal_threshold

from .conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
# The recipe's choices; on the tiny data set a 20 % threshold and an average over the whole run (a few steps).
ROBUST = {"structure_weight": "l1_matched", "score": "center", "normal_fpr": 0.2, "weight_averaging": 1.0}


def _batch(scores: list[float], labels: list[int]) -> ImageBatch:
    count = len(scores)
    return ImageBatch(image=torch.zeros(count, 3, 4, 4), pred_score=torch.tensor(scores), gt_label=torch.tensor(labels))


def test_l1_matched_weight_is_ten_times_the_running_ratio() -> None:
    loss = GeneratorLoss(structure_weight="l1_matched", momentum=0.5)
    assert loss.beta == 10.0  # before any step: the paper's weight
    loss.match(torch.tensor(0.2), torch.tensor(0.5))  # the first step sets the ratio: 0.4
    assert float(loss.beta) == pytest.approx(4.0)
    loss.match(torch.tensor(0.1), torch.tensor(0.5))  # 0.5 * 0.4 + 0.5 * 0.2
    assert float(loss.beta) == pytest.approx(3.0)
    loss.match(torch.tensor(float("nan")), torch.tensor(0.5))  # a non-finite or empty step is not folded in
    loss.match(torch.tensor(0.1), torch.tensor(0.0))
    assert float(loss.beta) == pytest.approx(3.0)
    total = loss({"str": torch.tensor(0.5), "fea": torch.tensor(0.1)})
    assert float(total) == pytest.approx(3.0 * 0.5 + 10 * 0.1)


def test_a_fixed_structure_weight_ignores_the_ratio() -> None:
    loss = GeneratorLoss(structure_weight=3.7)
    loss.match(torch.tensor(0.2), torch.tensor(0.5))
    assert loss.beta == 3.7
    assert "l1_ratio" not in loss.state_dict()
    with pytest.raises(ValueError, match="l1_matched"):
        GeneratorLoss(structure_weight="auto")


def test_normal_threshold_keeps_the_false_positive_rate() -> None:
    scores = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    for fpr in (0.01, 0.05, 0.2):
        threshold = normal_threshold(scores, fpr)
        assert int((scores > threshold).sum()) <= fpr * len(scores)
        assert int((scores >= threshold).sum()) > fpr * len(scores)  # the smallest such threshold
    with pytest.raises(ValueError, match="normal_fpr"):
        RankPreservingPostProcessor(normal_fpr=1.5)


def test_the_threshold_uses_only_the_normal_images_of_validation() -> None:
    post_processor = RankPreservingPostProcessor(normal_fpr=0.25)
    post_processor.on_validation_batch_end(None, None, _batch([1.0, 2.0, 100.0], [0, 0, 1]))
    post_processor.on_validation_batch_end(None, None, _batch([3.0, 4.0, 50.0], [0, 0, 1]))
    post_processor.on_validation_epoch_end(None, None)
    assert float(post_processor.image_threshold) == 3.0  # the anomalous 50 and 100 play no part
    # Normalisation statistics are anomalib's (all validation images); the label of the export is score > threshold.
    assert float(post_processor.image_max) == 100.0
    exported = FittedPostProcessor(post_processor)(
        InferenceBatch(pred_score=torch.tensor([2.9, 3.0, 3.1]), anomaly_map=torch.zeros(3, 1, 4, 4))
    )
    assert exported.pred_label.tolist() == [False, False, True]
    # The setting travels with the checkpoint.
    restored = RankPreservingPostProcessor()
    restored.load_checkpoint_config(post_processor.checkpoint_config())
    assert restored.normal_fpr == 0.25


def _heldout_folder(root: Path, swap_test_labels: bool = False) -> Folder:
    test_dirs = ("test/normal", "test/abnormal")[:: -1 if swap_test_labels else 1]
    return Folder(
        name="tiny",
        root=root,
        normal_dir="train/normal",
        normal_test_dir=test_dirs[0],
        abnormal_dir=test_dirs[1],
        train_batch_size=16,
        eval_batch_size=16,
        num_workers=0,
        val_split_mode="from_train",
        val_split_ratio=0.25,
        seed=0,
    )


def _fit(root: Path, tmp_path: Path, swap_test_labels: bool = False) -> tuple[Salad, Folder, Engine]:
    torch.manual_seed(0)
    model = Salad(**TINY, **ROBUST)
    datamodule = _heldout_folder(root, swap_test_labels)
    engine = Engine(max_epochs=2, default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    engine.fit(model, datamodule=datamodule)
    return model, datamodule, engine


def test_recipe_decides_from_training_normals_only(tiny_scans: Path, tmp_path: Path) -> None:
    model, datamodule, engine = _fit(tiny_scans, tmp_path / "a")
    # The held-out images are normal training images, none from the test folders.
    held_out = {Path(path).parent for path in datamodule.val_data.samples.image_path}
    assert held_out == {tiny_scans / "train" / "normal"}
    assert len(datamodule.val_data) == 10
    # The ratio was measured and the threshold keeps 20 % of the held-out normals above it.
    assert torch.isfinite(model.loss.l1_ratio)
    assert 0 < float(model.loss.beta) < 10
    model.eval()
    with torch.no_grad():
        batches = [model.pre_processor.transform(batch.image) for batch in datamodule.val_dataloader()]
        scores = torch.cat([model.model(images).pred_score for images in batches])
    assert float(model.post_processor.image_threshold) == pytest.approx(float(normal_threshold(scores, 0.2)))
    # Swapping the test split's labels changes nothing the recipe decided: no test label reaches it.
    swapped, _, _ = _fit(tiny_scans, tmp_path / "b", swap_test_labels=True)
    assert torch.equal(swapped.loss.l1_ratio, model.loss.l1_ratio)
    assert torch.equal(swapped.post_processor.image_threshold, model.post_processor.image_threshold)
    assert torch.equal(swapped.model.center, model.model.center)
    # The checkpoint keeps the ratio, the threshold and its rule.
    reloaded = Salad.load_from_checkpoint(engine.trainer.checkpoint_callback.best_model_path)
    assert torch.equal(reloaded.loss.l1_ratio, model.loss.l1_ratio)
    assert torch.equal(reloaded.post_processor.image_threshold, model.post_processor.image_threshold)
    assert reloaded.post_processor.normal_fpr == 0.2


def _init_args(config: Path) -> dict:
    return yaml.safe_load(config.read_text())["model"]["init_args"]


@pytest.mark.parametrize("preset", sorted((ROOT / "configs").glob("salad_robust_*.yaml")), ids=lambda p: p.stem)
def test_robust_presets_share_one_model_config(preset: Path) -> None:
    recipe = _init_args(ROOT / "configs" / "model" / "salad_robust.yaml")
    config = yaml.safe_load(preset.read_text())
    model_args = config["model"]["init_args"]
    assert {key: value for key, value in model_args.items() if key != "image_size"} == {
        key: value for key, value in recipe.items() if key != "image_size"
    }
    # Held-out normals from the training folder: the test folders decide nothing.
    assert config["data"]["init_args"]["val_split_mode"] == "from_train"
    model = Salad(**model_args)
    assert model.loss.matched
    assert model.post_processor.normal_fpr == 0.05
    assert model.model.score == "center"


def test_the_paper_defaults_are_unchanged() -> None:
    model = Salad()
    assert model.loss.beta == 10.0
    assert not model.loss.matched
    assert model.post_processor.normal_fpr is None
    assert model.model.score == "feature"
