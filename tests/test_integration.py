"""SALAD through anomalib: Engine fit/validate/test/predict, the anomalib CLI, checkpoint reload, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from anomalib.data import Folder
from anomalib.engine import Engine
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from anomalib_salad import Salad
from anomalib_salad.evaluation.metrics import spearman
from anomalib_salad.model.export import load_salad_checkpoint

from .conftest import TINY

ROOT = Path(__file__).resolve().parents[1]


def _folder(root: Path, cls: type[Folder] = Folder, **kwargs) -> Folder:
    args = {
        "name": "tiny",
        "root": root,
        "normal_dir": "train/normal",
        "abnormal_dir": "test/abnormal",
        "normal_test_dir": "test/normal",
        "train_batch_size": 16,
        "eval_batch_size": 16,
        "num_workers": 0,
        "seed": 0,
    }
    return cls(**(args | kwargs))


def _engine(tmp_path: Path, epochs: int = 2) -> Engine:
    return Engine(max_epochs=epochs, default_root_dir=tmp_path, logger=False, enable_progress_bar=False)


@pytest.fixture(scope="module")
def trained(tiny_scans: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Engine, Salad, Path]:
    """A tiny SALAD trained for two epochs, with its checkpoint."""
    torch.manual_seed(0)
    engine = _engine(tmp_path_factory.mktemp("run"))
    model = Salad(**TINY)
    engine.fit(model, datamodule=_folder(tiny_scans))
    return engine, model, Path(engine.trainer.checkpoint_callback.best_model_path)


def test_fit_logs_every_loss_term(trained: tuple[Engine, Salad, Path]) -> None:
    engine, _, checkpoint = trained
    logged = set(engine.trainer.callback_metrics)
    for term in ("adv", "str", "fea", "ct", "self", "g", "d", "d_image", "d_latent"):
        assert f"loss_{term}_epoch" in logged
    # Health curves: the per-dimension spread of the batch's latents and the center's norm.
    metrics = engine.trainer.callback_metrics
    assert 0 < float(metrics["latent_std_epoch"]) < 10
    assert float(metrics["center_norm_epoch"]) == pytest.approx(float(trained[1].model.center.norm()), rel=0.5)
    assert float(metrics["loss_d_epoch"]) == pytest.approx(
        float(metrics["loss_d_image_epoch"]) + float(metrics["loss_d_latent_epoch"]), rel=1e-4
    )
    assert checkpoint.is_file()
    assert engine.trainer.current_epoch == 2


def test_learning_rate_follows_the_paper_schedule(trained: tuple[Engine, Salad, Path]) -> None:
    # 2 epochs, 1 constant: epoch 0 at the full rate, epoch 1 at half of it.
    _, model, _ = trained
    for scheduler in model.lr_schedulers():
        assert scheduler.last_epoch == 1
        assert scheduler.get_last_lr()[0] == pytest.approx(1e-4)


def test_validate_test_predict(trained: tuple[Engine, Salad, Path], tiny_scans: Path) -> None:
    engine, model, checkpoint = trained
    datamodule = _folder(tiny_scans)
    (val,) = engine.validate(model, datamodule=datamodule, ckpt_path=checkpoint)
    assert 0 <= val["image_AUROC"] <= 1
    (test,) = engine.test(model, datamodule=datamodule, ckpt_path=checkpoint)
    assert {"image_AUROC", "image_F1Score"} <= set(test)
    predictions = engine.predict(model, datamodule=datamodule, ckpt_path=checkpoint)
    batch = predictions[0]
    assert batch.pred_score.shape == (16,)
    assert batch.anomaly_map.shape[-2:] == (32, 32)
    assert batch.pred_label is not None


def test_checkpoint_reload_gives_the_same_scores(trained: tuple[Engine, Salad, Path]) -> None:
    _, model, checkpoint = trained
    reloaded = Salad.load_from_checkpoint(checkpoint).eval()
    model = model.eval()
    images = torch.rand(4, 3, 45, 50)  # any size: the checkpointed pre-processor resizes
    with torch.no_grad():
        expected, actual = model(images), reloaded(images)
    torch.testing.assert_close(actual.pred_score, expected.pred_score)
    torch.testing.assert_close(actual.anomaly_map, expected.anomaly_map)
    torch.testing.assert_close(reloaded.model.center, model.model.center)
    assert model.model.center.abs().sum() > 0  # the center moved during training and was saved
    assert reloaded.pre_processor.transform is not None
    assert reloaded.hparams.image_size == 32


def test_mean_intensity_is_restored_from_the_checkpoint(tiny_scans: Path, tmp_path: Path) -> None:
    engine = _engine(tmp_path, epochs=1)
    engine.fit(Salad(**TINY, mean_intensity=0.3), datamodule=_folder(tiny_scans))
    reloaded = Salad.load_from_checkpoint(engine.trainer.checkpoint_callback.best_model_path).eval()
    assert reloaded.model.mean_intensity == 0.3
    images = torch.rand(2, 3, 45, 50) * 0.5
    with torch.no_grad():
        torch.testing.assert_close(reloaded(images).pred_score, reloaded(images * 2).pred_score)


class _ValidationOutputs(Callback):
    """Keeps each validation epoch's scores, labels and mean image intensities, as the model returned them."""

    def __init__(self) -> None:
        self.epochs: list[list[tuple[torch.Tensor, ...]]] = []

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.epochs.append([])

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, *args: Any) -> None:
        brightness = outputs.image.mean(dim=(1, 2, 3))
        self.epochs[-1].append((outputs.pred_score.flatten(), outputs.gt_label.flatten(), brightness))


def test_validation_logs_the_brightness_shortcut_for_a_label_free_checkpoint(tiny_scans: Path, tmp_path: Path) -> None:
    """Validation logs rho(score, brightness) over its normal images; ModelCheckpoint can keep the epoch where
    its size is smallest (the label-free rule of docs/results.md)."""
    outputs = _ValidationOutputs()
    label_free = ModelCheckpoint(
        dirpath=tmp_path / "label_free", monitor="image_NormalBrightnessShortcut", mode="min", save_top_k=1
    )
    engine = Engine(
        max_epochs=3,
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        callbacks=[outputs, label_free],
    )
    engine.fit(Salad(**TINY), datamodule=_folder(tiny_scans))
    expected = []
    for epoch in outputs.epochs:
        scores, labels, brightness = (torch.cat(column) for column in zip(*epoch, strict=True))
        assert (labels == 0).sum() >= 3  # the validation split holds normal images...
        assert (labels == 1).any()  # ...and abnormal ones, which must not count
        expected.append(spearman(scores[labels == 0], brightness[labels == 0]))
    metrics = engine.trainer.callback_metrics
    assert float(metrics["image_NormalBrightnessCorrelation"]) == pytest.approx(expected[-1], abs=1e-5)
    assert float(metrics["image_NormalBrightnessShortcut"]) == pytest.approx(abs(expected[-1]), abs=1e-5)
    assert float(label_free.best_model_score) == pytest.approx(min(map(abs, expected)), abs=1e-5)
    assert Path(label_free.best_model_path).is_file()


def test_python_api_train(tiny_scans: Path, tmp_path: Path) -> None:
    """`Engine().train(Salad(), datamodule=Folder(...))`, as in the README."""
    engine = _engine(tmp_path, epochs=1)
    engine.train(Salad(**TINY, structure_loss="l1", latent_loss="kl", score="image"), datamodule=_folder(tiny_scans))
    assert "image_AUROC" in engine.trainer.callback_metrics


@pytest.mark.parametrize(
    "ablation",
    [
        {"restoration_weight": 0},
        {"adv_weight": 0},
        {"restoration_shared_layers": -1},
        {"restoration_shared_layers": 2},
        {"center_weight": 0, "score": "center"},
    ],
)
def test_ablations_train(ablation: dict, tiny_scans: Path, tmp_path: Path) -> None:
    engine = _engine(tmp_path, epochs=1)
    engine.fit(Salad(**TINY, **ablation), datamodule=_folder(tiny_scans))
    assert engine.trainer.current_epoch == 1


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    anomalib = Path(sys.executable).with_name("anomalib")
    return subprocess.run(
        [str(anomalib), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )


def _model_args() -> list[str]:
    args = ["--model", "anomalib_salad.Salad"]
    for key, value in TINY.items():
        args += [f"--model.{key}", str(list(value)) if isinstance(value, tuple) else str(value)]
    return args


def _data_args(root: Path) -> list[str]:
    return [
        "--data",
        "anomalib.data.Folder",
        "--data.name",
        "tiny",
        "--data.root",
        str(root),
        "--data.normal_dir",
        "train/normal",
        "--data.abnormal_dir",
        "test/abnormal",
        "--data.normal_test_dir",
        "test/normal",
        "--data.num_workers",
        "0",
        "--data.seed",
        "0",
        "--data.train_batch_size",
        "16",
        "--data.eval_batch_size",
        "16",
    ]


@pytest.mark.slow
def test_cli_train_test_predict_and_config(tiny_scans: Path, tmp_path: Path) -> None:
    common = [
        "--trainer.max_epochs",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--default_root_dir",
        str(tmp_path),
    ]
    result = _cli("train", *_model_args(), *_data_args(tiny_scans), *common, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "image_AUROC" in result.stdout + result.stderr
    checkpoints = sorted(tmp_path.rglob("*.ckpt"))
    assert checkpoints
    ckpt = ["--ckpt_path", str(checkpoints[0])]
    for command in ("test", "validate"):
        result = _cli(
            command, *_model_args(), *_data_args(tiny_scans), *ckpt, "--default_root_dir", str(tmp_path), cwd=tmp_path
        )
        assert result.returncode == 0, (command, result.stderr[-3000:])
    result = _cli(
        "predict",
        *_model_args(),
        "--data",
        str(tiny_scans / "test" / "abnormal"),
        *ckpt,
        "--default_root_dir",
        str(tmp_path),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # The shipped model config loads and documents itself, and takes each data config as the README says.
    result = _cli("train", "--config", str(ROOT / "configs/model/salad.yaml"), "--print_config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "anomalib_salad.Salad" in result.stdout
    for data_config in sorted((ROOT / "configs" / "data").glob("*.yaml")):
        result = _cli(
            "train",
            "--config",
            str(ROOT / "configs/model/salad.yaml"),
            "--data",
            str(data_config),
            "--print_config",
            cwd=tmp_path,
        )
        assert result.returncode == 0, (data_config.name, result.stderr[-3000:])
        assert "class_path: anomalib.data.Folder" in result.stdout
    result = _cli("train", "--model.help", "anomalib_salad.Salad", cwd=tmp_path)
    assert result.returncode == 0
    assert "--model.restoration_shared_layers" in result.stdout
    assert "Table IV" in result.stdout


@pytest.mark.slow
def test_cli_rejects_an_optimizer_override(tiny_scans: Path, tmp_path: Path) -> None:
    result = _cli(
        "fit",
        *_model_args(),
        *_data_args(tiny_scans),
        "--optimizer",
        "torch.optim.SGD",
        "--optimizer.lr",
        "0.1",
        "--trainer.max_epochs",
        "1",
        "--default_root_dir",
        str(tmp_path),
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "cannot be honoured" in result.stderr


def test_nan_in_a_batch_is_named(tiny_scans: Path, tmp_path: Path) -> None:
    class NanFolder(Folder):
        def train_dataloader(self):
            for batch in super().train_dataloader():
                batch.image[1] = float("nan")
                yield batch
                return

    with pytest.raises(ValueError, match=r"NaN or Inf pixel values in image\(s\) \[.*\.png"):
        _engine(tmp_path, epochs=1).fit(Salad(**TINY), datamodule=_folder(tiny_scans, cls=NanFolder))


def test_empty_normal_folder_is_named(tmp_path: Path) -> None:
    (tmp_path / "train" / "normal").mkdir(parents=True)
    (tmp_path / "test" / "normal").mkdir(parents=True)
    (tmp_path / "test" / "abnormal").mkdir(parents=True)
    # anomalib's own message already names the folder; check that it reaches the user unchanged.
    with pytest.raises(RuntimeError, match=r"Found 0 .*NORMAL images in .*train/normal"):
        _engine(tmp_path, epochs=1).fit(Salad(**TINY), datamodule=_folder(tmp_path))


def test_wrong_image_size_config_is_named(tiny_scans: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="power-of-two image_size"):
        Salad(image_size=100)
    # A pre-processor that does not resize to the network's size is caught at the first batch.
    model = Salad(**TINY, pre_processor=Salad.configure_pre_processor(64))
    with pytest.raises(ValueError, match="built for 32x32 inputs, got 64x64"):
        _engine(tmp_path, epochs=1).fit(model, datamodule=_folder(tiny_scans))


OLD_CHECKPOINT = Path(__file__).parent / "data" / "salad_tiny_4862592.ckpt"  # see tests/data/README.md


def test_checkpoint_written_before_the_layers_scores_the_same() -> None:
    expected = json.loads(OLD_CHECKPOINT.with_suffix(".json").read_text())
    model = load_salad_checkpoint(OLD_CHECKPOINT).eval()
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        output = model(images)
        for score, values in expected["raw"].items():
            model.model.score = score
            raw = model.model(model.pre_processor.export_transform(images)).pred_score.flatten()
            assert raw.tolist() == pytest.approx(values, abs=1e-6), score
    assert output.pred_score.flatten().tolist() == pytest.approx(expected["pred_score"], abs=1e-6)
    assert float(output.anomaly_map.sum()) == pytest.approx(expected["anomaly_map_sum"], rel=1e-5)
    assert model.post_processor.clamp  # it was trained with anomalib's PostProcessor


def test_new_checkpoints_keep_the_rank_preserving_squash(trained: tuple[Engine, Salad, Path], tmp_path: Path) -> None:
    engine, _, checkpoint = trained
    assert not load_salad_checkpoint(checkpoint).post_processor.clamp
    # An old checkpoint saved again (e.g. by a resumed fit) keeps its clamp through the post-processor's settings.
    old = load_salad_checkpoint(OLD_CHECKPOINT)
    resaved = tmp_path / "resaved.ckpt"
    engine.trainer.strategy.connect(old)
    engine.trainer.save_checkpoint(resaved)
    assert load_salad_checkpoint(resaved).post_processor.clamp
