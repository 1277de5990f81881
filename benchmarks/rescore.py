"""Score one trained SALAD checkpoint with each anomaly score of Table V (A_F, A_I, A_C) on a Folder test set.

The three scores differ only at test time, so one trained model gives all three AUROCs, in one run.

Usage:
    python benchmarks/rescore.py --ckpt runs/benchmark/braintumor_cpu/checkpoints/<run>.ckpt \
        --root ../shared/data/braintumor [--scores-out runs/scores/salad_s0]   # files for figures.py roc --scores
"""

import argparse
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import torch
from anomalib.data import Batch, Folder
from torch import Tensor
from torchmetrics.functional.classification import binary_auroc

from anomalib_salad import Salad
from anomalib_salad.export import load_salad_checkpoint

SCORES = {"feature": "A_F |E(x) - E(D(E(x)))|", "image": "A_I |x - D(E(x))|", "center": "A_C |E(x) - C|"}


@torch.no_grad()
def raw_scores(model: Salad, dataloader: Iterable[Batch], scores: Iterable[str]) -> tuple[dict[str, Tensor], Tensor]:
    """Raw (unnormalised) image scores of ``model`` with each anomaly score, and the labels.

    Args:
        model: A trained Salad; its ``model.score`` is left at the last of ``scores``.
        dataloader: Batches with ``image`` and ``gt_label``.
        scores: Names from :data:`SCORES`.

    Returns:
        tuple[dict[str, Tensor], Tensor]: Scores by name, and the ``0/1`` labels.
    """
    values: dict[str, list[Tensor]] = {name: [] for name in scores}
    labels = []
    for batch in dataloader:
        images = model.pre_processor.transform(batch.image)  # as validation sees them (an antialiased resize too)
        for name, collected in values.items():
            model.model.score = name
            collected.append(model.model(images).pred_score)
        labels.append(batch.gt_label)
    return {name: torch.cat(collected) for name, collected in values.items()}, torch.cat(labels).int()


def write_scores(directory: Path, paths: list[str], target: torch.Tensor, scores: dict[str, torch.Tensor]) -> None:
    """``directory/<score>.csv`` (image_path, gt_label, pred_score) per score: the files ``figures.py roc`` draws."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [str(path) for path in paths]
    for name, values in scores.items():
        frame = {"image_path": paths, "gt_label": target.tolist(), "pred_score": values.tolist()}
        pd.DataFrame(frame).to_csv(directory / f"{name}.csv", index=False)


def main() -> None:
    """Load, score the whole test folder with each score, print AUROC and the normal/abnormal means."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, type=Path)
    parser.add_argument("--root", required=True, type=Path, help="Folder dataset: train/normal, test/{normal,abnormal}")
    parser.add_argument("--scores-out", type=Path, help="write <dir>/<score>.csv (image_path, gt_label, pred_score)")
    args = parser.parse_args()

    model = load_salad_checkpoint(args.ckpt)
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
    scores, target = raw_scores(model, datamodule.test_dataloader(), SCORES)
    print(f"{args.ckpt.name}: {len(target)} test images ({int(target.sum())} abnormal)")
    print(f"{'score':<28} {'AUROC':>7} {'mean normal':>12} {'mean abnormal':>14}")
    for name, label in SCORES.items():
        values = scores[name]
        print(
            f"{label:<28} {float(binary_auroc(values, target)):>7.4f} {float(values[target == 0].mean()):>12.5f} "
            f"{float(values[target == 1].mean()):>14.5f}"
        )
    if args.scores_out:
        write_scores(args.scores_out, list(datamodule.test_data.samples["image_path"]), target, scores)


if __name__ == "__main__":
    main()
