"""Salad(weight_averaging=...): the moving average of the networks, its refitted center, and its checkpoints."""

from pathlib import Path

import pytest
import torch
from anomalib.engine import Engine
from lightning.pytorch import Callback, LightningModule, Trainer

from anomalib_salad import Salad
from anomalib_salad.model.weight_averaging import NetworkAveraging

from .conftest import TINY
from .test_recipe import ROBUST, _heldout_folder


class LiveWeights(Callback):
    """Copies of the encoder's first kernel after every training step (the weights training moves)."""

    def __init__(self) -> None:
        self.steps: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: object) -> None:
        self.steps.append(pl_module.model.encoder.layers[0][0].weight.detach().clone())


@pytest.fixture(scope="module")
def averaged_fit(tiny_scans: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Salad, Engine, LiveWeights]:
    torch.manual_seed(0)
    model = Salad(**TINY, **ROBUST)
    live = LiveWeights()
    engine = Engine(
        max_epochs=2,
        default_root_dir=tmp_path_factory.mktemp("averaged"),
        logger=False,
        enable_progress_bar=False,
        callbacks=[live],
    )
    engine.fit(model, datamodule=_heldout_folder(tiny_scans))
    return model, engine, live


def test_the_model_holds_the_moving_average_of_the_trained_weights(averaged_fit: tuple) -> None:
    model, engine, live = averaged_fit
    steps = len(live.steps)
    assert steps == engine.trainer.estimated_stepping_batches
    assert model.weight_averaging.decay == pytest.approx(1 - 1 / (ROBUST["weight_averaging"] * steps))
    expected = live.steps[0]
    for weight in live.steps[1:]:
        expected = model.weight_averaging.decay * expected + (1 - model.weight_averaging.decay) * weight
    kernel = model.model.encoder.layers[0][0].weight
    assert torch.allclose(kernel, expected, atol=1e-6)
    assert not torch.allclose(kernel, live.steps[-1])  # not the last weights


def test_the_center_is_the_mean_code_of_the_training_images(averaged_fit: tuple) -> None:
    model, engine, _ = averaged_fit
    model.eval()
    with torch.no_grad():
        codes = [
            model.model.encoder(model.model.to_network_input(model.pre_processor.transform(batch.image)))
            for batch in engine.trainer.datamodule.train_dataloader()
        ]
    assert torch.allclose(model.model.center, torch.cat(codes).mean(dim=0), atol=1e-6)
    assert len(torch.cat(codes)) == len(engine.trainer.datamodule.train_data)  # training images only


def test_the_checkpoint_scores_with_the_average_and_keeps_the_live_weights(averaged_fit: tuple) -> None:
    model, engine, live = averaged_fit
    path = engine.trainer.checkpoint_callback.best_model_path
    checkpoint = torch.load(path, weights_only=False)
    kernel = "encoder.layers.0.0.weight"
    assert torch.equal(checkpoint["state_dict"][f"model.{kernel}"], model.model.state_dict()[kernel])
    assert torch.equal(checkpoint["current_model_state"][kernel], live.steps[-1])
    reloaded = Salad.load_from_checkpoint(path).eval()
    images = torch.rand(4, 1, TINY["image_size"], TINY["image_size"]) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(reloaded.model(images).pred_score, model.eval().model(images).pred_score)


def test_the_horizon_is_checked() -> None:
    for horizon in (0, 1.5, -0.1):
        with pytest.raises(ValueError, match="horizon"):
            Salad(**TINY, weight_averaging=horizon)
    assert Salad(**TINY).weight_averaging is None  # the paper scores with the last weights
    assert isinstance(Salad(**TINY, weight_averaging=0.1).configure_callbacks()[-1], NetworkAveraging)
