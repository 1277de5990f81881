"""Turn a MedMNIST ``.npz`` (e.g. PneumoniaMNIST) into anomalib's Folder layout for one-class training.

Label 0 is the normal class (for PneumoniaMNIST: normal chest X-rays). The training split's normal
images become ``train/normal``; the test split (by default) becomes ``test/normal`` and ``test/abnormal``.

Usage:
    python examples/medmnist_to_folder.py ../shared/data/pneumoniamnist/pneumoniamnist.npz datasets/pneumoniamnist
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def convert(npz_path: Path, output: Path, test_split: str = "test", normal_label: int = 0) -> dict[str, int]:
    """Write the PNGs and return how many went into each folder.

    Args:
        npz_path: The MedMNIST archive with ``{split}_images`` and ``{split}_labels`` arrays.
        output: Folder to create (``train/normal``, ``test/normal``, ``test/abnormal``).
        test_split: Archive split used as the test set: ``"test"`` or ``"val"``.
        normal_label: Label of the normal class.

    Returns:
        dict[str, int]: Image count per written folder.
    """
    if not npz_path.is_file():
        msg = f"MedMNIST archive not found: {npz_path}"
        raise FileNotFoundError(msg)
    data = np.load(npz_path)
    needed = {"train_images", "train_labels", f"{test_split}_images", f"{test_split}_labels"}
    if missing := needed - set(data.files):
        msg = f"{npz_path} is not a MedMNIST archive: missing arrays {sorted(missing)}"
        raise ValueError(msg)
    counts: dict[str, int] = {}
    jobs = [("train", "train/normal", True), (test_split, "test/normal", True), (test_split, "test/abnormal", False)]
    for split, folder, normal in jobs:
        images, labels = data[f"{split}_images"], data[f"{split}_labels"].reshape(-1)
        keep = np.flatnonzero((labels == normal_label) == normal)
        target = output / folder
        target.mkdir(parents=True, exist_ok=True)
        for index in keep:
            Image.fromarray(images[index]).save(target / f"{split}_{index:05d}.png")
        counts[folder] = len(keep)
    return counts


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("npz", type=Path, help="MedMNIST .npz file")
    parser.add_argument("output", type=Path, help="folder to write the Folder layout into")
    parser.add_argument("--test-split", choices=["test", "val"], default="test")
    parser.add_argument("--normal-label", type=int, default=0)
    args = parser.parse_args()
    for folder, count in convert(args.npz, args.output, args.test_split, args.normal_label).items():
        print(f"{folder}: {count} images")


if __name__ == "__main__":
    main()
