"""How far a score with no learning gets on a Folder dataset: the shortcut any learned AUROC must be read against.

In the brain MRI split, normal and tumour slices come from different source collections, so global intensity
statistics may separate them without looking at anatomy. This script scores every test image, after the same
resize a 64 px SALAD applies, with:

* ``mean``: the mean intensity (and its negation, since the direction is not known without labels);
* ``histogram``: the L1 distance of the image's 32-bin intensity histogram to the mean histogram of the training
  (normal) images; a one-class score that, like SALAD, uses only normal training images;
* ``foreground``: the fraction of pixels above 0.1 (how much of the frame the head fills).

It prints the test AUROC of each and writes machine-readable rows (the columns of ``docs/results/``) to a CSV.

With ``--scores``, it also says how much of a learned model's AUROC the mean intensity explains: for each score
file (``rescore.py --scores-out``: ``image_path, gt_label, pred_score``) the Spearman correlation of the score with
the image's mean intensity (all images, and within each class), and the *intensity-matched* AUROC: normal and
abnormal images are compared only within the same decile of mean intensity (the decile AUROCs weighted by their
number of normal-abnormal pairs), so a score that only reads brightness falls to about 0.5 there.

Usage:
    python benchmarks/trivial_baseline.py --root ../shared/data/braintumor --image-size 64 \
        --csv docs/results/trivial_baseline.csv
    python benchmarks/trivial_baseline.py --scores "SALAD A_F=runs/scores/salad_0/feature.csv" ... [--test-half]
"""

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import torch
from anomalib.data import Folder
from torchmetrics.functional.classification import binary_auroc

from anomalib_salad import Salad
from anomalib_salad.evaluation.metrics import best_f1_statistics, matched_auroc, spearman

BINS = 32


def _images(dataset: object, resize: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of ``dataset`` as grayscale ``(N, H, W)`` in [0, 1], resized, and their labels."""
    images, labels = [], []
    for index in range(len(dataset)):
        item = dataset[index]
        images.append(resize(item.image).mean(dim=0))
        labels.append(int(item.gt_label) if item.gt_label is not None else 0)
    return torch.stack(images), torch.tensor(labels)


def _histograms(images: torch.Tensor) -> torch.Tensor:
    flat = images.clamp(0, 1).flatten(1)
    return torch.stack([torch.histc(row, bins=BINS, min=0, max=1) for row in flat]) / flat.shape[1]


def shortcut_table(files: list[str], intensity: dict[str, float]) -> str:
    """How much of each learned score's AUROC the mean intensity explains (see the module docstring)."""
    lines = [
        "| score | AUROC | intensity-matched AUROC | Spearman with mean intensity: all / normal / abnormal |",
        "| --- | --- | --- | --- |",
    ]
    for item in files:
        name, path = item.split("=", 1)
        with open(path, newline="") as handle:
            rows = [row for row in csv.DictReader(handle) if str(Path(row["image_path"]).resolve()) in intensity]
        if not rows:
            msg = f"{path}: none of its image paths is a test image of this dataset"
            raise SystemExit(msg)
        score = torch.tensor([float(row["pred_score"]) for row in rows], dtype=torch.float64)
        labels = torch.tensor([int(row["gt_label"]) for row in rows])
        mean = torch.tensor([intensity[str(Path(row["image_path"]).resolve())] for row in rows], dtype=torch.float64)
        within = [spearman(score[labels == k], mean[labels == k]) for k in (0, 1)]
        lines.append(
            f"| {name} ({len(rows)} images) | {float(binary_auroc(score, labels)):.3f} | "
            f"{matched_auroc(score, labels, mean):.3f} | {spearman(score, mean):+.2f} / {within[0]:+.2f} / "
            f"{within[1]:+.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    """Score the test set with each trivial statistic and print/write the AUROCs."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="../shared/data/braintumor")
    parser.add_argument("--name", default="braintumor")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--csv", type=Path)
    parser.add_argument(
        "--test-half",
        action="store_true",
        help="only the test half that paper_protocol.py scores (anomalib's from_test split, seed 0)",
    )
    parser.add_argument("--scores", nargs="*", default=[], metavar="NAME=CSV", help="learned scores to check")
    args = parser.parse_args()

    datamodule = Folder(
        name=args.name,
        root=args.root,
        normal_dir="train/normal",
        abnormal_dir="test/abnormal",
        normal_test_dir="test/normal",
        test_split_mode="from_dir",
        val_split_mode="from_test" if args.test_half else "none",
        val_split_ratio=0.5,
        seed=0,
    )
    datamodule.setup()
    resize = Salad.configure_pre_processor(args.image_size).transform.transforms[0]
    train, _ = _images(datamodule.train_data, resize)
    test, labels = _images(datamodule.test_data, resize)
    reference = _histograms(train).mean(dim=0)
    scores = {
        "mean intensity": test.flatten(1).mean(dim=1),
        "minus mean intensity": -test.flatten(1).mean(dim=1),
        "histogram L1 to training mean": (_histograms(test) - reference).abs().sum(dim=1),
        "foreground fraction": (test > 0.1).float().flatten(1).mean(dim=1),
        "minus foreground fraction": -(test > 0.1).float().flatten(1).mean(dim=1),
    }
    command = "python " + " ".join(sys.argv)
    rows = []
    print(
        f"{args.name}: {len(train)} training, {len(test)} test images ({int(labels.sum())} abnormal), "
        f"{args.image_size} px"
    )
    for name, score in scores.items():
        auroc = float(binary_auroc(score, labels))
        stats = {key: float(value) for key, value in best_f1_statistics(score, labels).items()}
        print(f"  {name:<32} AUROC {auroc:.4f}")
        rows.append(
            {
                "model": "trivial",
                "dataset": args.name,
                "image_size": args.image_size,
                "epochs": 0,
                "seed": "",
                "score": name + (" (test half)" if args.test_half else ""),
                "auroc": round(auroc, 4),
                **{key: round(stats.get(key, np.nan), 4) for key in ("f1", "accuracy", "sensitivity", "specificity")},
                "train_images_per_s": "",
                "command": command,
            }
        )
    if args.scores:
        paths = [str(Path(path).resolve()) for path in datamodule.test_data.samples["image_path"]]
        mean = test.flatten(1).mean(dim=1)
        rows_mean = dict(zip(paths, mean.tolist(), strict=True))
        print(f"\n{shortcut_table(args.scores, rows_mean)}")
        print(f"(mean intensity itself: intensity-matched AUROC {matched_auroc(mean, labels, mean):.3f})")
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        new = not args.csv.exists()
        with args.csv.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            if new:
                writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
