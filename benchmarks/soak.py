"""Soak run: train SALAD for many epochs on a Folder dataset and sample memory after every epoch.

Prints, per epoch, the process's resident memory (current, from /proc) and, on CUDA, allocated and reserved
GPU memory, then the growth between the first and the last epoch. Flat figures mean no leak across epochs
(logged tensors, cached batches, growing Python lists).

Usage:
    python benchmarks/soak.py --root ../shared/data/braintumor --image-size 64 --epochs 30
    python benchmarks/soak.py --root .data/braintumor --image-size 256 --epochs 200 --accelerator cuda
"""

import argparse
import os
from pathlib import Path

import torch
from anomalib.data import Folder
from anomalib.engine import Engine
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything

from anomalib_salad import Salad


def resident_mib() -> float:
    """Current resident set size of this process (not the peak), in MiB."""
    with Path(f"/proc/{os.getpid()}/statm").open() as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class MemorySampler(Callback):
    """Record memory at the end of every training epoch."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Sample and print one row."""
        del pl_module
        row = {"epoch": trainer.current_epoch, "rss_mib": resident_mib()}
        if torch.cuda.is_available():
            row |= {
                "gpu_alloc_mib": torch.cuda.memory_allocated() / 2**20,
                "gpu_reserved_mib": torch.cuda.memory_reserved() / 2**20,
            }
        self.rows.append(row)
        print("  ".join(f"{key}={value:.0f}" for key, value in row.items()), flush=True)


def main() -> None:
    """Train and report the memory trend."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, type=Path, help="Folder dataset: train/normal, test/{normal,abnormal}")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--narrow", action="store_true", help="32..256 channels, latent 128 (CPU-sized)")
    args = parser.parse_args()

    seed_everything(0)
    widths = {"base_channels": 32, "max_channels": 256, "latent_dim": 128} if args.narrow else {}
    model = Salad(image_size=args.image_size, **widths)
    datamodule = Folder(
        name="soak",
        root=args.root,
        normal_dir="train/normal",
        abnormal_dir="test/abnormal",
        normal_test_dir="test/normal",
        train_batch_size=args.batch_size,
        eval_batch_size=args.batch_size,
        num_workers=2,
        seed=0,
    )
    sampler = MemorySampler()
    engine = Engine(
        max_epochs=args.epochs,
        accelerator=args.accelerator,
        devices=1,
        logger=False,
        enable_progress_bar=False,
        callbacks=[sampler],
        default_root_dir="runs/soak",
    )
    engine.fit(model, datamodule=datamodule)
    first, last = sampler.rows[1] if len(sampler.rows) > 1 else sampler.rows[0], sampler.rows[-1]
    print(
        f"growth from epoch {first['epoch']} to {last['epoch']}: "
        + ", ".join(f"{key} {last[key] - first[key]:+.0f} MiB" for key in last if key != "epoch")
    )


if __name__ == "__main__":
    main()
