"""Score one trained SALAD checkpoint with each anomaly score of Table V (A_F, A_I, A_C) on a Folder test set.

The three scores differ only at test time, so one trained model gives all three AUROCs, in one run
(:func:`anomalib_salad.evaluation.raw_scores.raw_scores`). ``--model
ganomaly`` scores an anomalib GANomaly checkpoint (``paper_protocol.py --model ganomaly``) with its own score instead,
so that the comparison models get the same brightness test.

``--normal-brightness 0.8 0.9 1.1 1.25`` also measures how much brightness alone moves each score: it rescales the
intensities of the *normal* test images only (clipped to [0, 1]; anomalous ones unchanged) and prints the AUROC at
each factor. A score that follows the anatomy barely moves; one that ranks scans by brightness (the collection
shortcut of the brain MRI split) swings with the factor. This is the causal counterpart of the correlation that
``paper_protocol.py`` logs (``normal_brightness_*``).

Usage:
    python benchmarks/rescore.py --ckpt runs/benchmark/braintumor_cpu/checkpoints/<run>.ckpt \
        --root ../shared/data/braintumor [--scores-out runs/scores/salad_s0]   # files for figures.py roc --scores
    python benchmarks/rescore.py --ckpt <run>.ckpt --root ../shared/data/braintumor --normal-brightness 0.8 0.9 1.1 1.25
    python benchmarks/rescore.py --model ganomaly --ckpt <run>.ckpt --root ../shared/data/braintumor \
        --normal-brightness 0.8 0.9 1.1 1.25
"""

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import torch
from anomalib.data import Batch, Folder
from anomalib.models import Ganomaly
from lightning.pytorch import LightningModule
from torchmetrics.functional.classification import binary_auroc

from anomalib_salad import Salad
from anomalib_salad.evaluation.raw_scores import raw_scores, scores_of
from anomalib_salad.model.export import load_salad_checkpoint


def write_scores(directory: Path, paths: list[str], target: torch.Tensor, scores: dict[str, torch.Tensor]) -> None:
    """``directory/<score>.csv`` (image_path, gt_label, pred_score) per score: the files ``figures.py roc`` draws."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [str(path) for path in paths]
    for name, values in scores.items():
        frame = {"image_path": paths, "gt_label": target.tolist(), "pred_score": values.tolist()}
        pd.DataFrame(frame).to_csv(directory / f"{name}.csv", index=False)


def brightness_response(
    model: Salad, dataloader: Iterable[Batch], scores: Iterable[str], factors: Iterable[float]
) -> dict[str, dict[float, float]]:
    """AUROC of each score with the normal images' intensities multiplied by each factor.

    Args:
        model: A trained model, as for :func:`raw_scores`.
        dataloader: A test loader with normal and anomalous images (re-iterated once per factor).
        scores: Names from :data:`SCORES`, or ``["score"]``.
        factors: Brightness factors for the normal images; ``1.0`` is the unchanged test set.

    Returns:
        dict[str, dict[float, float]]: ``{score: {factor: AUROC}}``.
    """
    scores = list(scores)
    table: dict[str, dict[float, float]] = {name: {} for name in scores}
    for factor in factors:
        values, target = raw_scores(model, dataloader, scores, normal_brightness=factor)
        for name in scores:
            table[name][factor] = float(binary_auroc(values[name], target))
    return table


def load_model(path: Path, name: str) -> LightningModule:
    """A trained SALAD (checked by :func:`load_salad_checkpoint`) or GANomaly checkpoint, in eval mode.

    Raises:
        SystemExit: If ``path`` is missing, is not a GANomaly checkpoint where one is asked for, or lost its
            pre-processor's resize.
    """
    if not path.is_file():
        sys.exit(f"--ckpt: no checkpoint at {path}")
    if name == "salad":
        return load_salad_checkpoint(path)
    # GANomaly builds its networks for the pre-processor's size in __init__, and load_from_checkpoint would build them
    # for the default 256 px (live pre-processors are not hyperparameters): read the stored resize, then build the
    # model from the same dictionary (the file holds ~160 MB of optimiser state; it is read once).
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not any(key.startswith("model.generator.") for key in checkpoint.get("state_dict", {})):
        sys.exit(f"{path}: not a GANomaly checkpoint (no generator weights); leave out --model ganomaly for SALAD's")
    config = checkpoint.get("anomalib_pre_processor_config") or {}
    transforms = config.get("transform", {}).get("init_args", {}).get("transforms", [config.get("transform", {})])
    sizes = [t["init_args"]["size"] for t in transforms if t.get("class_path", "").endswith(".Resize")]
    if not sizes:
        sys.exit(f"{path}: the pre-processor's resize was not stored, so GANomaly's input size is unknown")
    pre_processor = Ganomaly.configure_pre_processor(tuple(sizes[0]))
    model = Ganomaly(**checkpoint.get("hyper_parameters", {}), pre_processor=pre_processor)
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


def main() -> None:
    """Load, score the whole test folder with each score, print AUROC and the normal/abnormal means."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, type=Path)
    parser.add_argument(
        "--model", choices=["salad", "ganomaly"], default="salad", help="the checkpoint's model (SALAD: all of Table V)"
    )
    parser.add_argument("--root", required=True, type=Path, help="Folder dataset: train/normal, test/{normal,abnormal}")
    parser.add_argument("--scores-out", type=Path, help="write <dir>/<score>.csv (image_path, gt_label, pred_score)")
    parser.add_argument(
        "--normal-brightness",
        type=float,
        nargs="+",
        metavar="FACTOR",
        help="also print each score's AUROC with the normal test images' intensities multiplied by each factor",
    )
    args = parser.parse_args()
    if args.normal_brightness and any(factor <= 0 for factor in args.normal_brightness):
        parser.error(f"--normal-brightness: factors must be positive, got {args.normal_brightness}")

    model = load_model(args.ckpt, args.model)
    names = scores_of(model)
    datamodule = Folder(
        name="rescore",
        root=args.root,
        normal_dir="train/normal",
        abnormal_dir="test/abnormal",
        normal_test_dir="test/normal",
        eval_batch_size=64,
        num_workers=0,
        val_split_mode="none",
    )
    datamodule.setup()
    scores, target = raw_scores(model, datamodule.test_dataloader(), names)
    print(f"{args.ckpt.name}: {len(target)} test images ({int(target.sum())} abnormal)")
    print(f"{'score':<28} {'AUROC':>7} {'mean normal':>12} {'mean abnormal':>14}")
    for name, label in names.items():
        values = scores[name]
        print(
            f"{label:<28} {float(binary_auroc(values, target)):>7.4f} {float(values[target == 0].mean()):>12.5f} "
            f"{float(values[target == 1].mean()):>14.5f}"
        )
    if args.scores_out:
        write_scores(args.scores_out, list(datamodule.test_data.samples["image_path"]), target, scores)
    if args.normal_brightness:
        factors = [1.0, *args.normal_brightness]
        table = brightness_response(model, datamodule.test_dataloader(), names, factors)
        print("\nAUROC with the normal test images' intensities multiplied by a factor (anomalous ones unchanged):")
        print(f"{'score':<28} " + " ".join(f"{'x' + format(factor, 'g'):>7}" for factor in factors))
        for name, label in names.items():
            print(f"{label:<28} " + " ".join(f"{table[name][factor]:>7.4f}" for factor in factors))


if __name__ == "__main__":
    main()
