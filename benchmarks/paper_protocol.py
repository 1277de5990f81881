"""The paper's protocol on a Folder dataset: train one model for the full schedule, with AUROC curves on the way.

Trains SALAD (the 64 px preset of ``configs/salad_braintumor_64px.yaml`` by default), the SSIM autoencoder (the
same networks with only L_str, Table III's baseline) or anomalib's GANomaly (its defaults, at the config's image
size and batch size) for ``--epochs`` epochs with one seed, and writes, as they come (appended and flushed, so an
interrupted run keeps what it measured):

* ``--curve-csv``: every ``--every`` epochs, the test AUROC of each score (SALAD: A_F, A_I, A_C; GANomaly: its
  own) on the test split (images decoded once) and its intensity-matched AUROC (``matched_*``: normal and abnormal
  images compared only within a decile of mean intensity, :func:`anomalib_salad.evaluation.metrics.matched_auroc`);
  for SALAD also label-free health signals (the spread of the latent codes, the distance of the center from the
  origin, the mean latent-to-center distance of normal training images), the model's own structure loss L_str on
  held-out normal images (the validation split's normal ones), the signal of the label-free checkpoint rule in
  ``protocol_tables.py``, and the Spearman correlation of each score with brightness among those held-out normal
  images (``normal_brightness_*``: a score that ranks normal scans by brightness carries a collection shortcut);
* ``--csv``: at the end, one row per score with the paper's five metrics (AUROC, and F1 / accuracy / sensitivity /
  specificity at the best-F1 threshold), train images/s, the command (the columns of ``docs/results/``) and the
  intensity-matched AUROC;
* ``--scores-out DIR``: at the end, ``DIR/<score>.csv`` (image_path, gt_label, pred_score) of the test images, the
  files ``examples/figures.py roc --scores`` draws.

GANomaly's training and validation images are decoded once, as SALAD's are
(:class:`~anomalib_salad.data.cache.ImageCache`, bit-identical pixels); ``--resume CKPT`` continues an interrupted run.

Usage:
    python benchmarks/paper_protocol.py --model salad --seed 0 --epochs 200 \
        --csv docs/results/braintumor_64px.csv --curve-csv docs/results/braintumor_64px_curves.csv
"""

import argparse
import contextlib
import csv
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from anomalib.data import Folder
from anomalib.engine import Engine
from anomalib.models import Ganomaly
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from torchmetrics.functional.classification import binary_auroc

from anomalib_salad import Salad
from anomalib_salad.data.cache import CachedImages, ImageCache, resize_of
from anomalib_salad.evaluation.metrics import image_statistics, matched_auroc, mean_intensity, spearman
from anomalib_salad.evaluation.raw_scores import SCORES, raw_scores, scores_of
from anomalib_salad.model.lightning_model import AUTOENCODER
from anomalib_salad.model.precision import cpu_flags

sys.path.insert(0, str(Path(__file__).parent))
from rescore import write_scores

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = [
    "model",
    "dataset",
    "image_size",
    "epochs",
    "seed",
    "score",
    "auroc",
    "f1",
    "accuracy",
    "sensitivity",
    "specificity",
    "train_images_per_s",
    "command",
    "auroc_intensity_matched",
    "threshold_sensitivity",
    "threshold_specificity",
    "hardware",
    "date",
]


def _append(path: Path | None, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Append ``rows`` under the file's header; a file whose header lacks some of ``columns`` is rewritten first.

    Models log different columns (GANomaly has one score, SALAD three and health signals), and one file holds them.
    """
    if path is None or not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    header, old_rows = [], []
    if path.exists():
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            header, old_rows = list(reader.fieldnames or []), list(reader)
    if header and not set(columns) <= set(header):
        header += [column for column in columns if column not in header]
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=header)
            writer.writeheader()
            writer.writerows(old_rows)
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header or columns)
        if not header:
            writer.writeheader()
        writer.writerows(rows)


class ScoreCurves(Callback):
    """Test AUROC of every SALAD score and latent health signals every ``every`` epochs (after validation)."""

    def __init__(self, datamodule: Folder, every: int, path: Path | None, tags: dict[str, Any]) -> None:
        self.datamodule, self.every, self.path, self.tags = datamodule, every, path, tags
        self.test: CachedImages | None = None
        self.val_normal: torch.Tensor | None = None
        self.rows: list[dict[str, Any]] = []
        self.trained_images = 0  # a resumed run trains only the remaining epochs

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, _: int
    ) -> None:
        """Count the images trained on, for the throughput."""
        self.trained_images += len(batch.image)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Score the test folder and write one curve row, every ``every`` epochs and at the last."""
        epoch = trainer.current_epoch + 1
        if epoch % self.every and epoch != trainer.max_epochs:
            return
        if not self.trained_images:  # resumed from a checkpoint written at this epoch's end: its row exists
            return
        if self.test is None:
            self.test = CachedImages(self.datamodule.test_data, resize_of(pl_module), pl_module.device, "test")
        loader = torch.utils.data.DataLoader(self.test, batch_size=128, collate_fn=self.test.collate_fn)
        averaging = getattr(pl_module, "weight_averaging", None)
        with averaging.averaged(pl_module) if averaging is not None else contextlib.nullcontext():
            self._score(pl_module, epoch, loader)

    def _score(self, pl_module: LightningModule, epoch: int, loader: Any) -> None:
        """One curve row of the model as it scores now (the averaged networks when the model averages)."""
        was_training = pl_module.training
        pl_module.eval()
        scores, target = raw_scores(pl_module, loader, scores_of(pl_module))
        row: dict[str, Any] = {**self.tags, "epoch": epoch}
        row |= {f"auroc_{name}": round(float(binary_auroc(values, target)), 4) for name, values in scores.items()}
        intensity = mean_intensity(self.test.images)
        row |= {
            f"matched_{name}": round(matched_auroc(values, target, intensity), 4) for name, values in scores.items()
        }
        if isinstance(pl_module, Salad):
            row |= self._health(pl_module) | self._heldout_normal(pl_module)
        pl_module.train(was_training)
        self.rows.append(row)
        _append(self.path, [row], list(row))
        print(" ".join(f"{key}={value}" for key, value in row.items()), flush=True)

    @torch.no_grad()
    def _health(self, pl_module: LightningModule) -> dict[str, float]:
        """Label-free signals on normal training images: latent spread, center norm, distance to the center."""
        train = self.datamodule.train_data
        batch = train.__getitems__(list(range(min(256, len(train))))) if isinstance(train, CachedImages) else None
        if batch is None:
            return {}
        images = pl_module.model.to_network_input(pl_module.pre_processor.transform(batch.image))
        latent = pl_module.model.encoder(images)
        center = pl_module.model.center
        return {
            "latent_std": round(float(latent.std(dim=0).mean()), 4),
            "latent_mean_abs": round(float(latent.mean(dim=0).abs().mean()), 4),
            "center_norm": round(float(center.norm()), 4),
            "normal_to_center": round(float((latent - center).abs().mean()), 4),
        } | ({"structure_weight": round(float(pl_module.loss.beta), 4)} if pl_module.loss.matched else {})

    @torch.no_grad()
    def _heldout_normal(self, pl_module: Salad) -> dict[str, float]:
        """Label-free signals on the validation split's normal images, which the model never fits.

        The model's L_str (SSIM or L1, as trained) on them, and how much each score follows their brightness (the
        Spearman correlation with the mean intensity). Only normal images are used, as a user holding out some of
        their normal scans would; no anomaly label. A score that ranks normal images by brightness has learnt a
        shortcut that shifts with the collection.
        """
        if self.val_normal is None:
            val = self.datamodule.val_data  # the model's ImageCache has usually cached it already
            if not isinstance(val, CachedImages):
                val = CachedImages(val, resize_of(pl_module), pl_module.device, "validation")
            normal = (val.labels == 0).nonzero().flatten().tolist() if val.labels is not None else []
            self.val_normal = val.__getitems__(normal).image if normal else torch.zeros(0)
        if not len(self.val_normal):
            return {}
        model, total = pl_module.model, 0.0
        score, scores = model.score, {name: [] for name in SCORES}
        try:
            for chunk in self.val_normal.split(128):
                transformed = pl_module.pre_processor.transform(chunk)
                images = model.to_network_input(transformed)
                total += float(pl_module.structure_loss(images, model.decoder(model.encoder(images)))) * len(chunk)
                for name, values in scores.items():
                    model.score = name
                    values.append(model(transformed).pred_score.float().cpu())
        finally:
            model.score = score
        brightness = mean_intensity(self.val_normal)
        return {"heldout_normal_str": round(total / len(self.val_normal), 5)} | {
            f"normal_brightness_{name}": round(spearman(torch.cat(values), brightness), 4)
            for name, values in scores.items()
        }


def threshold_statistics(model: LightningModule, scores: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Sensitivity and specificity of the test images at the model's fitted image threshold (raw score units).

    The threshold is the one ``anomalib predict``, the export and ``salad-score`` label by: fitted at the last
    validation (on held-out normals alone with ``normal_fpr``). Empty when no threshold was fitted.
    """
    threshold = getattr(model.post_processor, "image_threshold", None)
    if threshold is None or torch.isnan(threshold):
        return {}
    predicted = scores > threshold.to(scores.device)
    positive, negative = target == 1, target == 0
    return {
        "threshold_sensitivity": round(float(predicted[positive].float().mean()), 4),
        "threshold_specificity": round(float((~predicted[negative]).float().mean()), 4),
    }


def hardware_kind(device: torch.device) -> str:
    """The short hardware name of the results tables: the GPU's name, or the CPU family and its widest bf16 unit."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    name = next((line.split(":", 1)[1] for line in lines if line.startswith("model name")), "")
    family = "EPYC" if "EPYC" in name else "Xeon" if "Xeon" in name else "CPU"
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return f"{family} AMX"
    if "avx512_bf16" in flags:
        return f"{family} AVX512-BF16" + (" no AMX" if family == "Xeon" else "")
    return "AVX2" if "avx2" in flags else family


def build_model(name: str, model_args: dict[str, Any], batch_size: int) -> LightningModule:
    """SALAD or the SSIM autoencoder from the config's model arguments, or GANomaly with its defaults at that size."""
    if name == "ganomaly":
        size = model_args["image_size"]
        return Ganomaly(batch_size=batch_size, pre_processor=Ganomaly.configure_pre_processor((size, size)))
    return Salad(**(model_args | (AUTOENCODER if name == "autoencoder" else {})))


def final_rows(
    model: LightningModule,
    scores: dict[str, torch.Tensor],
    target: torch.Tensor,
    intensity: torch.Tensor,
    tags: dict[str, Any],
    extra: dict[str, Any],
    own_score: bool,
) -> list[dict[str, Any]]:
    """One row per score (or only the model's own with ``own_score``): AUROC, the best-F1 statistics, and more.

    The model's own score also gets the sensitivity and specificity at its fitted threshold.
    """
    own = model.model.score if isinstance(model, Salad) else None
    rows = []
    for score, values in scores.items():
        if own_score and own is not None and score != own:
            continue
        stats = image_statistics(values, target, intensity)
        rows.append(
            {
                **tags,
                "score": score,
                **{key: round(stats[key], 4) for key in ("auroc", "f1", "accuracy", "sensitivity", "specificity")},
                **extra,
                "auroc_intensity_matched": round(stats["matched_auroc"], 4),
                **(threshold_statistics(model, values, target) if score == own else {}),
                "hardware": hardware_kind(model.device),
                "date": time.strftime("%Y-%m-%d"),
            }
        )
    return rows


def main() -> None:
    """Train, curve, test, write rows."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "salad_braintumor_64px.yaml")
    parser.add_argument("--model", choices=["salad", "autoencoder", "ganomaly"], default="salad")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--root", help="overrides the config's data root")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="model argument overrides (YAML)")
    parser.add_argument("--label", help="the model column of the rows (default: --model and the --set items)")
    parser.add_argument(
        "--own-score",
        action="store_true",
        help="write only the row of the score the model is configured to report (a recipe's own choice), with the "
        "sensitivity and specificity at the model's fitted threshold",
    )
    parser.add_argument("--csv", type=Path)
    parser.add_argument("--curve-csv", type=Path)
    parser.add_argument("--work-dir", type=Path, default=Path("runs/paper_protocol"))
    parser.add_argument("--scores-out", type=Path, metavar="DIR", help="write DIR/<score>.csv of the test images")
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="CKPT",
        help="continue an interrupted run from its Lightning checkpoint (same arguments); its train images/s is "
        "then measured over the remaining epochs only",
    )
    args = parser.parse_args()

    config = yaml.safe_load(args.config.read_text())
    model_args = dict(config["model"]["init_args"])
    for item in args.set:
        key, value = item.split("=", 1)
        model_args[key] = yaml.safe_load(value)
    data_args = dict(config["data"]["init_args"]) | ({"root": args.root} if args.root else {})
    seed_everything(args.seed)
    datamodule = Folder(**data_args)
    model = build_model(args.model, model_args, data_args["train_batch_size"])
    name = args.label or args.model + "".join(f" {item}" for item in args.set)
    tags = {"model": name, "dataset": data_args["name"], "image_size": model_args["image_size"], "seed": args.seed}
    curves = ScoreCurves(datamodule, args.every, args.curve_csv, tags)
    engine = Engine(
        max_epochs=args.epochs,
        check_val_every_n_epoch=args.every,
        # SALAD caches its images itself (cache_images); GANomaly gets the same cache (bit-identical pixels).
        callbacks=[curves, *([ImageCache()] if args.model == "ganomaly" else [])],
        logger=False,
        enable_progress_bar=False,
        default_root_dir=args.work_dir / f"{name.replace(' ', '_')}_{args.seed}",
    )
    if args.resume and not args.resume.is_file():
        sys.exit(f"--resume: no checkpoint at {args.resume}")
    start = time.perf_counter()
    engine.fit(model, datamodule=datamodule, ckpt_path=args.resume)
    fit_seconds = time.perf_counter() - start
    images_per_s = curves.trained_images / fit_seconds
    if engine.trainer.current_epoch < args.epochs:
        # A run that stopped early (a callback's should_stop; Ctrl-C already ends the process inside Lightning) must
        # not pass for the full schedule: its curve rows stand, its final rows are not written.
        sys.exit(
            f"stopped after epoch {engine.trainer.current_epoch} of {args.epochs}: no final rows written to {args.csv};"
            f" the curve rows so far are in {args.curve_csv}; continue with --resume <checkpoint>"
        )

    model.eval()
    test = CachedImages(datamodule.test_data, resize_of(model), model.device, "test")
    loader = torch.utils.data.DataLoader(test, batch_size=128, collate_fn=test.collate_fn)
    scores, target = raw_scores(model, loader, scores_of(model))
    extra = {"train_images_per_s": round(images_per_s, 1), "command": "python " + " ".join(sys.argv)}
    rows = final_rows(
        model, scores, target, mean_intensity(test.images), tags | {"epochs": args.epochs}, extra, args.own_score
    )
    for row in rows:
        print(f"{name} seed {args.seed} {row['score']}: AUROC {row['auroc']}", flush=True)
    _append(args.csv, rows, COLUMNS)
    if args.scores_out:
        write_scores(args.scores_out, test.paths, target, scores)
    print(f"fit {fit_seconds / 60:.1f} min, {images_per_s:.1f} train images/s (validation and curves included)")


if __name__ == "__main__":
    main()
