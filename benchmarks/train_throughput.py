"""End-to-end training throughput of SALAD: each configuration through ``Engine.fit`` on real files, side by side.

Every configuration trains the same model family on the same folder for ``--epochs`` epochs through anomalib's
``Engine`` (file decoding, pre-processing, all five losses, the optimiser steps and a validation pass every epoch
included), each in a fresh process so that its peak memory is its own. For each it prints the one-time setup
(start to the first batch: file checks, cache fill, compilation), the steady epoch time (epochs after the first,
training plus validation), end-to-end training images/s over those epochs, the projected wall time of a
``--project-epochs`` run, the peak memory, the precision chosen and the CPU flags or GPU that decided it. The last
column is each configuration's speed as a multiple of the first row's.

Configurations (``--configs`` picks some):

* ``before``: the project's CPU configuration before the fast path (70x70 PatchGAN with 64 channels, images
  decoded from JPEG every epoch by one loader worker, fp32).
* ``patchgan``: + the PatchGAN scaled to the image (``disc_layers`` rule) at half width (32 channels).
* ``cache``: + images decoded once and held in memory (``cache_images``).
* ``fast``: + ``train_precision=auto`` (bf16 autocast only where the device has native bf16 and, on a CPU, a
  probe at setup times it faster than fp32); the shipped 64 px config, ``configs/salad_braintumor_64px.yaml``.
* ``fast-channels-last``, ``fast-compiled``: + channels-last memory format / ``torch.compile``.

Usage:
    python benchmarks/train_throughput.py --root ../shared/data/braintumor              # 64 px, 3 epochs each
    python benchmarks/train_throughput.py --configs before fast --epochs 3 --json out.json
    python benchmarks/train_throughput.py --accelerator gpu --image-size 256 --paper-widths
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

NARROW = {"base_channels": 32, "max_channels": 256, "latent_dim": 128}
CONFIGS: dict[str, dict[str, Any]] = {
    "before": {"disc_layers": 3, "disc_channels": 64, "cache_images": False, "train_precision": "32", "workers": 1},
    "patchgan": {"disc_channels": 32, "cache_images": False, "train_precision": "32", "workers": 1},
    "cache": {"disc_channels": 32, "cache_images": True, "train_precision": "32", "workers": 2},
    "fast": {"disc_channels": 32, "cache_images": True, "train_precision": "auto", "workers": 2},
    "fast-channels-last": {"disc_channels": 32, "train_precision": "auto", "channels_last": True, "workers": 2},
    "fast-compiled": {"disc_channels": 32, "train_precision": "auto", "compile_networks": True, "workers": 2},
}
DEFAULT_CONFIGS = ["before", "patchgan", "cache", "fast", "fast-channels-last"]


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    """Train one configuration in this process and return its measurements."""
    import torch  # noqa: PLC0415
    from anomalib.data import Folder  # noqa: PLC0415
    from anomalib.engine import Engine  # noqa: PLC0415
    from lightning.pytorch import Callback, seed_everything  # noqa: PLC0415

    from anomalib_salad import Salad  # noqa: PLC0415
    from anomalib_salad.model.precision import synchronize  # noqa: PLC0415

    class EpochClock(Callback):
        """Wall time of each epoch (training and its validation) and of the setup before the first batch."""

        def __init__(self) -> None:
            self.start = time.perf_counter()
            self.first_batch = 0.0
            self.epoch_ends: list[float] = []

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            if not self.first_batch:
                synchronize(trainer.strategy.root_device)
                self.first_batch = time.perf_counter()

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:  # after the epoch's validation
            synchronize(trainer.strategy.root_device)
            self.epoch_ends.append(time.perf_counter())

    settings = dict(CONFIGS[args.one])
    workers = settings.pop("workers")
    widths = {} if args.paper_widths else NARROW
    seed_everything(0)
    datamodule = Folder(
        name="bench",
        root=args.root,
        normal_dir="train/normal",
        abnormal_dir="test/abnormal",
        normal_test_dir="test/normal",
        train_batch_size=args.batch_size,
        eval_batch_size=args.batch_size,
        num_workers=workers,
        val_split_mode="from_test",
        val_split_ratio=0.5,
        seed=0,
    )
    model = Salad(image_size=args.image_size, **widths, **settings)
    clock = EpochClock()
    engine = Engine(
        max_epochs=args.epochs,
        accelerator=args.accelerator,
        devices=1,
        logger=False,
        enable_progress_bar=False,
        callbacks=[clock],
        default_root_dir=args.work_dir,
    )
    engine.fit(model, datamodule=datamodule)
    device = engine.trainer.strategy.root_device
    steady = [b - a for a, b in zip(clock.epoch_ends, clock.epoch_ends[1:], strict=False)]
    epoch_seconds = sum(steady) / len(steady) if steady else clock.epoch_ends[0] - clock.first_batch
    train_images = len(datamodule.train_data)
    peak = (
        torch.cuda.max_memory_allocated(device) / 2**20
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "config": args.one,
        "setup_s": clock.first_batch - clock.start,
        "epoch_s": epoch_seconds,
        "images_per_s": train_images / epoch_seconds,
        "projected_min": (clock.first_batch - clock.start + args.project_epochs * epoch_seconds) / 60,
        "peak_mib": peak,
        "precision": "bf16 autocast" if model.bf16 else "fp32",
        "decided_by": model.precision_evidence,
        "train_images": train_images,
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    """Run each configuration in its own process and print one table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="../shared/data/braintumor", help="Folder layout: train/normal, test/...")
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, choices=list(CONFIGS))
    parser.add_argument("--epochs", type=int, default=3, help="epochs per configuration (the first is not timed)")
    parser.add_argument("--project-epochs", type=int, default=200, help="run length for the projected wall time")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--paper-widths", action="store_true", help="64..512 channels, latent 512 (default: half)")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--work-dir", default="runs/train_throughput")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--one", choices=list(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:
        print("RESULT " + json.dumps(run_one(args)), flush=True)
        return

    if not Path(args.root, "train", "normal").is_dir():
        parser.error(f"{args.root} has no train/normal folder (anomalib Folder layout expected)")
    flags = ""
    if Path("/proc/cpuinfo").exists():
        from anomalib_salad.model.precision import cpu_flags  # noqa: PLC0415

        flags = " ".join(sorted(f for f in cpu_flags() if f.startswith(("avx", "amx"))))
    print(
        f"root={args.root} size={args.image_size} batch={args.batch_size} epochs={args.epochs} "
        f"accelerator={args.accelerator} cores={os.cpu_count()} cpu_flags=[{flags}]",
        flush=True,
    )
    header = (
        f"{'config':<20} {'setup s':>8} {'epoch s':>8} {'img/s':>7} {f'{args.project_epochs} ep min':>10} "
        f"{'peak MiB':>9} {'precision':<14} {'x before':>8}  decided by"
    )
    print(header, flush=True)
    rows, base = [], None
    forwarded = [
        f"--root={args.root}",
        f"--epochs={args.epochs}",
        f"--project-epochs={args.project_epochs}",
        f"--image-size={args.image_size}",
        f"--batch-size={args.batch_size}",
        f"--accelerator={args.accelerator}",
        f"--work-dir={args.work_dir}",
    ]
    forwarded += ["--paper-widths"] if args.paper_widths else []
    for name in args.configs:
        proc = subprocess.run(
            [sys.executable, __file__, *forwarded, "--one", name], capture_output=True, text=True, check=False
        )
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"{name:<20} failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}", flush=True)
            continue
        row = json.loads(lines[-1].removeprefix("RESULT "))
        base = base or row["images_per_s"]
        row["ratio"] = row["images_per_s"] / base
        rows.append(row)
        print(
            f"{name:<20} {row['setup_s']:>8.1f} {row['epoch_s']:>8.1f} {row['images_per_s']:>7.1f} "
            f"{row['projected_min']:>10.1f} {row['peak_mib']:>9.0f} {row['precision']:<14} {row['ratio']:>8.2f}  "
            f"{row['decided_by']}",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
