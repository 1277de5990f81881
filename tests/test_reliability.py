"""Resume and reproducibility: an interrupted-and-resumed fit equals an uninterrupted one; seeds repeat."""

from pathlib import Path

import pytest
import torch
from anomalib.data import Folder
from anomalib.engine import Engine
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything

from anomalib_salad import Salad
from anomalib_salad.deploy import CheckpointError

from .conftest import TINY


def _folder(root: Path) -> Folder:
    return Folder(
        name="tiny",
        root=root,
        normal_dir="train/normal",
        abnormal_dir="test/abnormal",
        normal_test_dir="test/normal",
        train_batch_size=16,
        eval_batch_size=16,
        num_workers=0,
        seed=0,
    )


class StopAfterFirstEpoch(Callback):
    """Simulates a crash after epoch 0's checkpoint was written."""

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        del pl_module
        trainer.should_stop = True


def _fit(
    root: Path, out: Path, ckpt_path: Path | None = None, callbacks: list | None = None, **model_args: float
) -> Salad:
    seed_everything(0)
    model = Salad(**TINY, **model_args)
    engine = Engine(
        max_epochs=3, default_root_dir=out, logger=False, enable_progress_bar=False, callbacks=callbacks or []
    )
    engine.fit(model, datamodule=_folder(root), ckpt_path=ckpt_path)
    return model


@pytest.mark.parametrize("model_args", [{}, {"weight_averaging": 1.0}], ids=["last-weights", "averaged"])
def test_resume_continues_exactly(tiny_scans: Path, tmp_path: Path, model_args: dict) -> None:
    uninterrupted = _fit(tiny_scans, tmp_path / "a", **model_args)

    _fit(tiny_scans, tmp_path / "b", callbacks=[StopAfterFirstEpoch()], **model_args)
    (checkpoint,) = (tmp_path / "b").rglob("*.ckpt")
    saved = torch.load(checkpoint, weights_only=False)
    assert saved["epoch"] == 0
    assert [s["last_epoch"] for s in saved["lr_schedulers"]] == [0, 0]
    resumed = _fit(tiny_scans, tmp_path / "b", ckpt_path=checkpoint, **model_args)

    # The whole module: networks, center, and the post-processor's fitted threshold (NaN without masks).
    for (name, a), (_, b) in zip(uninterrupted.state_dict().items(), resumed.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, equal_nan=True, msg=f"{name} differs after resuming")
    for opt_a, opt_b in zip(uninterrupted.optimizers(), resumed.optimizers(), strict=True):
        assert opt_a.param_groups[0]["lr"] == opt_b.param_groups[0]["lr"]
        state_a, state_b = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
        for key in state_a:
            torch.testing.assert_close(state_a[key]["exp_avg"], state_b[key]["exp_avg"])
    assert resumed.model.center.abs().sum() > 0
    # With averaging the module ends as the average: equal only if the resumed average went on from the saved one.
    assert ("current_model_state" in saved) == bool(model_args)


def test_same_seed_same_scores(tiny_scans: Path, tmp_path: Path) -> None:
    images = torch.rand(6, 3, 32, 32)
    scores = []
    for run in ("a", "b"):
        model = _fit(tiny_scans, tmp_path / run).eval()
        with torch.no_grad():
            scores.append(model(images).pred_score)
    assert torch.equal(scores[0], scores[1])


@pytest.fixture(scope="module")
def interrupted_checkpoint(tiny_scans: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("interrupted")
    _fit(tiny_scans, out, callbacks=[StopAfterFirstEpoch()])
    (checkpoint,) = out.rglob("*.ckpt")
    return checkpoint


def test_loading_a_checkpoint_keeps_the_callers_random_state(interrupted_checkpoint: Path) -> None:
    # Building the networks draws initial weights either way; the saved training state must not be restored.
    torch.manual_seed(123)
    Salad(**TINY)
    expected = torch.rand(3)
    torch.manual_seed(123)
    Salad.load_from_checkpoint(interrupted_checkpoint)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("missing", ["state_dict", "model.center"])
def test_broken_checkpoint_is_named(interrupted_checkpoint: Path, tmp_path: Path, missing: str) -> None:
    content = torch.load(interrupted_checkpoint, weights_only=False)
    if missing == "state_dict":
        del content["state_dict"]
    else:
        del content["state_dict"][missing]
    broken = tmp_path / "broken.ckpt"
    torch.save(content, broken)
    with pytest.raises((ValueError, RuntimeError), match=missing.replace(".", r"\.")):
        Salad.load_from_checkpoint(broken)


class NanStructureLoss(torch.nn.Module):
    """The real structure loss, NaN from the third call on."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        value = self.inner(images, reconstructions)
        return value * float("nan") if self.calls >= 3 else value


def test_nan_loss_stops_with_step_and_term(tiny_scans: Path, tmp_path: Path) -> None:
    model = Salad(**TINY)
    model.structure_loss = NanStructureLoss(model.structure_loss)
    engine = Engine(max_epochs=1, default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    with pytest.raises(FloatingPointError, match=r"global step \d+; loss terms \['str'\] are NaN/Inf"):
        engine.fit(model, datamodule=_folder(tiny_scans))


def test_nan_loss_can_skip_batches(tiny_scans: Path, tmp_path: Path) -> None:
    model = Salad(**TINY, nonfinite_loss="skip")
    model.structure_loss = NanStructureLoss(model.structure_loss)
    engine = Engine(max_epochs=1, default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    engine.fit(model, datamodule=_folder(tiny_scans))
    assert model.nonfinite_steps == 1  # 40 images / 16 = 3 batches: the third one is skipped
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert torch.isfinite(model.model.center).all()


def test_a_checkpoint_into_a_model_of_other_sizes_is_refused_by_name(tiny_scans: Path, tmp_path: Path) -> None:
    # What `anomalib predict --model anomalib_salad.Salad --ckpt_path ...` does for a model not trained at the defaults.
    engine = Engine(max_epochs=1, default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    engine.fit(Salad(**TINY), datamodule=_folder(tiny_scans))
    (checkpoint,) = tmp_path.rglob("*.ckpt")
    other = Salad(**(TINY | {"latent_dim": 8}))
    with pytest.raises(CheckpointError, match=r"built with latent_dim=16, this Salad with latent_dim=8.*--config"):
        engine.predict(other, datamodule=_folder(tiny_scans), ckpt_path=checkpoint)


def test_resume_with_another_resize_than_the_checkpoint_is_refused(tiny_scans: Path, tmp_path: Path) -> None:
    # The image cache is filled before Lightning restores the checkpoint's pre-processor: a fit that resumed with
    # other resize settings (e.g. relying on the antialias default, which changed) would train on other pixels.
    engine = Engine(max_epochs=1, default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    engine.fit(Salad(**TINY, antialias=False), datamodule=_folder(tiny_scans))
    (checkpoint,) = tmp_path.rglob("*.ckpt")
    engine = Engine(max_epochs=2, default_root_dir=tmp_path / "resumed", logger=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match=r"Image cache \(train\): filled with .*--model.antialias false"):
        engine.fit(Salad(**TINY), datamodule=_folder(tiny_scans), ckpt_path=checkpoint)
    engine = Engine(max_epochs=2, default_root_dir=tmp_path / "resumed", logger=False, enable_progress_bar=False)
    engine.fit(Salad(**TINY, antialias=False), datamodule=_folder(tiny_scans), ckpt_path=checkpoint)
    assert engine.trainer.current_epoch == 2
