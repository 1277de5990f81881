"""Train and test SALAD from Python on a Folder dataset (the embedded synthetic scans by default).

Usage:
    python examples/train_salad.py                       # synthetic scans, a few minutes on CPU
    python examples/train_salad.py --root datasets/pneumoniamnist --image-size 32 --epochs 20
"""

import argparse

from anomalib.data import Folder
from anomalib.engine import Engine
from lightning.pytorch import seed_everything

from anomalib_salad import Salad, SyntheticScans


def main() -> None:
    """Train, test, and print where the checkpoint is."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", help="Folder dataset with train/normal, test/normal, test/abnormal")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    seed_everything(args.seed)
    if args.root is None:
        datamodule = SyntheticScans(train_batch_size=args.batch_size, eval_batch_size=args.batch_size, seed=args.seed)
    else:
        datamodule = Folder(
            name="folder",
            root=args.root,
            normal_dir="train/normal",
            abnormal_dir="test/abnormal",
            normal_test_dir="test/normal",
            train_batch_size=args.batch_size,
            eval_batch_size=args.batch_size,
            num_workers=2,
            seed=args.seed,
        )
    # Narrower than the paper's 256-pixel network, so that a CPU run takes minutes.
    model = Salad(image_size=args.image_size, base_channels=32, max_channels=256, latent_dim=128)
    engine = Engine(max_epochs=args.epochs, default_root_dir="results")
    engine.fit(model, datamodule=datamodule)
    engine.test(model, datamodule=datamodule)
    print("checkpoint:", engine.best_model_path or engine.trainer.checkpoint_callback.last_model_path)


if __name__ == "__main__":
    main()
