"""Does training with N DDP processes score like training with one? Test AUROC over seeds, side by side.

Each (seed, process count) trains the README's main job (``configs/salad_synthetic.yaml``: SALAD on the
synthetic scans) in its own ``python`` process tree; with N > 1 it runs Lightning DDP (``gloo`` on CPU,
``nccl`` on GPU) with ``train_batch_size / N`` per process, so the global batch, the number of optimiser steps
and the learning-rate schedule stay those of the single-process run. Every checkpoint is then tested the
same way, in this process, with the config's score and with A_F (the paper's default) on raw scores over the
whole test set, so only the training differs. The verdict compares the gap between the mean AUROCs with the
seed-to-seed spread.

Usage:
    python benchmarks/ddp_vs_single.py                       # seeds 0 1 2, 1 and 2 CPU processes
    python benchmarks/ddp_vs_single.py --devices 1 4 --accelerator gpu --epochs 200
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from anomalib.data.utils import ValSplitMode
from anomalib.engine import Engine
from lightning.pytorch import seed_everything
from torchmetrics.functional.classification import binary_auroc

from anomalib_salad import Salad, SyntheticScans
from anomalib_salad.evaluation.raw_scores import raw_scores
from anomalib_salad.model.export import load_salad_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "salad_synthetic.yaml"


def demo_parts(epochs: int | None = None) -> tuple[dict, dict, int]:
    """The main config's model and data arguments and its epoch count."""
    config = yaml.safe_load(CONFIG.read_text())
    return config["model"]["init_args"], config["data"]["init_args"], epochs or config["trainer"]["max_epochs"]


def train(args: argparse.Namespace) -> None:
    """Worker: fit one (seed, devices) run; Lightning's DDP launcher re-runs this script for the other ranks."""
    model_args, data_args, epochs = demo_parts(args.epochs)
    # One thread per process on CPU: N processes x all cores would oversubscribe and slow every rank.
    if args.accelerator == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.devices))
    seed_everything(args.seed)
    data_args = data_args | {"root": args.data_root, "train_batch_size": data_args["train_batch_size"] // args.devices}
    engine = Engine(
        max_epochs=epochs,
        accelerator=args.accelerator,
        devices=args.devices,
        strategy="ddp_find_unused_parameters_true" if args.devices > 1 else "auto",
        default_root_dir=args.out,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    engine.fit(Salad(**model_args), datamodule=SyntheticScans(**data_args))
    if engine.trainer.global_rank == 0:
        path = Path(engine.trainer.checkpoint_callback.best_model_path)
        (Path(args.out) / "checkpoint.txt").write_text(str(path))


def test_aurocs(checkpoint: Path, data_root: Path, scores: list[str]) -> dict[str, float]:
    """Image AUROC of a checkpoint on the whole synthetic test set, once per anomaly score, on raw scores.

    Raw scores, because the checkpoint's normalisation was fitted on the config's score only: another score
    would be clamped to 0 or 1 by it.
    """
    _, data_args, _ = demo_parts()
    model = load_salad_checkpoint(checkpoint)
    datamodule = SyntheticScans(**(data_args | {"root": data_root}))
    datamodule.val_split_mode = ValSplitMode.NONE  # the whole test set, not what the validation split leaves
    datamodule.setup()
    values, target = raw_scores(model, datamodule.test_dataloader(), scores)
    return {score: float(binary_auroc(values[score], target)) for score in scores}


def main() -> None:
    """Driver: run the grid in subprocesses, test every checkpoint here, print the table and the verdict."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2], help="process counts (default: 1 2)")
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--epochs", type=int, help="default: the config's max_epochs")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/ddp_vs_single"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--data-root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.devices = args.devices[0]
        train(args)
        return

    model_args, data_args, epochs = demo_parts(args.epochs)
    data_root = args.work_dir / "scans"
    SyntheticScans(**(data_args | {"root": data_root})).prepare_data()  # once, before any ranks start
    rows = []
    for devices in args.devices:
        for seed in args.seeds:
            out = args.work_dir / f"devices{devices}_seed{seed}"
            command = [
                sys.executable,
                __file__,
                "--worker",
                "--seed",
                str(seed),
                "--devices",
                str(devices),
                "--accelerator",
                args.accelerator,
                "--out",
                str(out),
                "--data-root",
                str(data_root),
                "--epochs",
                str(epochs),
            ]
            start = time.perf_counter()
            subprocess.run(command, check=True, cwd=ROOT)
            seconds = time.perf_counter() - start
            checkpoint = Path((out / "checkpoint.txt").read_text())
            row = {"devices": devices, "seed": seed, "fit_s": round(seconds)}
            row |= test_aurocs(checkpoint, data_root, list(dict.fromkeys([model_args["score"], "feature"])))
            rows.append(row)
            print(json.dumps(row), flush=True)

    scores = [key for key in rows[0] if key not in {"devices", "seed", "fit_s"}]
    print(f"\n{CONFIG.name}, {epochs} epochs, accelerator {args.accelerator}, seeds {args.seeds}; test image AUROC")
    print("| processes | " + " | ".join(f"{s} mean ± std (per seed)" for s in scores) + " | fit s (mean) |")
    print("|---|" + "---|" * len(scores) + "---|")
    summary = {}
    for devices in args.devices:
        mine = [r for r in rows if r["devices"] == devices]
        cells = []
        for s in scores:
            values = [r[s] for r in mine]
            summary[devices, s] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
            per_seed = " / ".join(f"{v:.3f}" for v in values)
            cells.append(f"{summary[devices, s][0]:.3f} ± {summary[devices, s][1]:.3f} ({per_seed})")
        print(f"| {devices} | " + " | ".join(cells) + f" | {statistics.mean(r['fit_s'] for r in mine):.0f} |")
    single = args.devices[0]
    for devices in args.devices[1:]:
        for s in scores:
            gap = summary[devices, s][0] - summary[single, s][0]
            spread = max(summary[devices, s][1], summary[single, s][1])
            verdict = "within" if abs(gap) <= spread else "OUTSIDE"
            print(f"{s}: {devices} processes - {single}: {gap:+.3f}, {verdict} the seed spread (std {spread:.3f})")


if __name__ == "__main__":
    main()
