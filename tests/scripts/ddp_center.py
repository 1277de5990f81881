"""Train a tiny SALAD with Lightning DDP on CPU (gloo); each rank writes its center to ``<out>/center_<rank>.pt``.

Run by tests/test_distributed.py as ``python ddp_center.py <data_root> <out_dir> <devices>``; Lightning's DDP
launcher starts the other ranks by running this script again.
"""

import sys
from pathlib import Path

import torch
from anomalib.data import Folder
from anomalib.engine import Engine
from lightning.pytorch import seed_everything

from anomalib_salad import Salad

TINY = {
    "image_size": 32,
    "base_channels": 8,
    "max_channels": 32,
    "latent_dim": 16,
    "disc_channels": 8,
    "feature_disc_hidden": (32, 16),
}


def main() -> None:
    """Fit two epochs, then save this rank's center and a few weights."""
    root, out, devices = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    seed_everything(0)
    model = Salad(**TINY)
    datamodule = Folder(
        name="tiny",
        root=root,
        normal_dir="train/normal",
        abnormal_dir="test/abnormal",
        normal_test_dir="test/normal",
        train_batch_size=8,
        eval_batch_size=8,
        num_workers=0,
        seed=0,
    )
    strategy = "ddp_find_unused_parameters_true" if devices > 1 else "auto"
    engine = Engine(
        max_epochs=2,
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        default_root_dir=out,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    engine.fit(model, datamodule=datamodule)
    rank = engine.trainer.global_rank
    torch.save(
        {
            "center": model.model.center,
            "encoder": model.model.encoder.state_dict(),
            "world_size": engine.trainer.world_size,
            "bf16": model.bf16,
        },
        out / f"center_{rank}.pt",
    )


if __name__ == "__main__":
    main()
