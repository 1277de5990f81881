"""Figures of the SALAD paper from trained checkpoints, a Folder dataset and benchmark results (PNG, matplotlib).

Sub-commands (each writes one PNG, ``roc`` one per dataset):

* ``reconstructions``: originals, reconstructions D(E(x)) and residuals |x - D(E(x))| of normal and abnormal
  test images (paper Figs. 5-6); each column is titled with its anomaly score.
* ``proxy``: the proxy-task sheet (Fig. 3): original, in-painting, local pixel shuffling, Bezier intensity map,
  drawn with the classes of :mod:`anomalib_salad.model.proxy_tasks` at the paper's settings.
* ``tsne``: a joint t-SNE (scikit-learn) of the test latents E(x) of two checkpoints, trained with and without
  the center loss (Fig. 7): red with, blue without; dots normal, crosses abnormal; (a) all, (b) zoomed.
* ``roc``: ROC curves per dataset from a benchmark folder (``results.csv`` and its per-run score files, mean
  curve over seeds, AUC mean +- std in the legend; Fig. 4), or from score files given directly.
* ``curves``: test AUROC against epoch from ``paper_protocol.py``'s curve CSVs, one panel per model (``--models``
  picks and orders them; four per row), one line per score (mean over seeds, the band their min-max); label-free
  health signals (latent spread, center norm) below.
* ``all``: everything the given arguments allow.

A Folder dataset is ``ROOT/train/normal``, ``ROOT/test/normal`` and ``ROOT/test/abnormal`` unless the ``--*-dir``
options say otherwise. Images are read by :mod:`anomalib_salad.data.reader`, as in training: PNG/JPEG/TIFF (16-bit with
``--bit-depth``), DICOM (``--window``) and NIfTI volumes (one image per kept slice along ``--axis``).

Usage:
    python examples/figures.py reconstructions --ckpt runs/x/checkpoints/SALAD-...ckpt --root datasets/salad_synthetic
    python examples/figures.py proxy --root datasets/salad_synthetic --image-size 64
    python examples/figures.py tsne --ckpt with_center.ckpt --ckpt-without without_center.ckpt --root ROOT
    python examples/figures.py roc --benchmark-dir runs/benchmark/braintumor
    python examples/figures.py curves --curves docs/results/braintumor_64px_curves.csv --out-dir docs/figures
    python examples/figures.py all --ckpt A.ckpt --ckpt-without B.ckpt --root ROOT --benchmark-dir DIR --out-dir figs
"""

import argparse
from collections.abc import Sequence
from pathlib import Path

import matplotlib as mpl

mpl.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from torch import Tensor

from anomalib_salad import Salad
from anomalib_salad.data.reader import ReaderConfig, list_files, list_items, read_image
from anomalib_salad.model.proxy_tasks import RandomBezierIntensity, RandomInPainting, RandomLocalPixelShuffle

DPI = 150
READER = ReaderConfig()  # replaced from the command line (--bit-depth, --window, --axis)


def list_images(folder: Path, limit: int | None = None, seed: int = 0) -> list[str]:
    """The 2-D images of ``folder`` (files, DICOM frames, NIfTI slices; sorted), or a seeded random ``limit``."""
    paths = [item for path in list_files(folder, recursive=False) for item in list_items(path, READER)]
    if not paths:
        msg = f"No images in {folder}"
        raise FileNotFoundError(msg)
    if limit is not None and limit < len(paths):
        order = np.random.default_rng(seed).permutation(len(paths))[:limit]
        paths = [paths[i] for i in sorted(order)]
    return paths


def load_images(paths: Sequence[str | Path]) -> Tensor:
    """RGB images in [0, 1] as ``(B, 3, H, W)``, all resized to the first one's size (the model resizes anyway)."""
    arrays = [read_image(p, READER) for p in paths]
    height, width = arrays[0].shape[:2]
    tensors = [torch.from_numpy(a).permute(2, 0, 1) for a in arrays]
    tensors = [
        t
        if t.shape[1:] == (height, width)
        else torch.nn.functional.interpolate(t[None], (height, width), mode="bilinear", antialias=True)[0]
        for t in tensors
    ]
    return torch.stack(tensors)


def load_salad(checkpoint: Path) -> Salad:
    """A trained SALAD in eval mode on the CPU."""
    model = Salad.load_from_checkpoint(checkpoint, map_location="cpu")
    return model.eval()


def network_input(model: Salad, images: Tensor) -> Tensor:
    """The model's own pre-processing (resize, [-1, 1]) and grayscale conversion."""
    pre_processor = model.pre_processor or Salad.configure_pre_processor(model.model.image_size)
    return model.model.to_network_input(pre_processor.transform(images))


@torch.no_grad()
def encode(model: Salad, paths: Sequence[str | Path], batch_size: int = 64) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Network inputs, latents, reconstructions and anomaly scores of ``paths``."""
    inputs, latents, reconstructions, scores = [], [], [], []
    for start in range(0, len(paths), batch_size):
        x = network_input(model, load_images(paths[start : start + batch_size]))
        z, x_hat = model.model.reconstruct(x)
        inputs.append(x)
        latents.append(z)
        reconstructions.append(x_hat)
        scores.append(model.model(x).pred_score)
    return torch.cat(inputs), torch.cat(latents), torch.cat(reconstructions), torch.cat(scores)


def _to_display(images: Tensor) -> np.ndarray:
    """``(B, 1, H, W)`` in [-1, 1] to ``(B, H, W)`` in [0, 1]."""
    return ((images[:, 0] + 1) / 2).clamp(0, 1).numpy()


def figure_reconstructions(
    checkpoint: Path, root: Path, normal_dir: str, abnormal_dir: str, num: int, out: Path, seed: int = 0
) -> Path:
    """Figs. 5-6: original / reconstruction / residual rows for ``num`` normal and ``num`` abnormal images."""
    model = load_salad(checkpoint)
    groups = {
        "normal": list_images(root / normal_dir, num, seed),
        "abnormal": list_images(root / abnormal_dir, num, seed),
    }
    columns: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, float]] = []
    for label, paths in groups.items():
        x, _, x_hat, scores = encode(model, paths)
        residual = (x - x_hat).abs()[:, 0].numpy() / 2  # |x - x_hat| on the [0, 1] scale
        columns += [
            (label, o, r, d, float(s))
            for o, r, d, s in zip(_to_display(x), _to_display(x_hat), residual, scores, strict=True)
        ]
    vmax = max(float(np.percentile(c[3], 99.5)) for c in columns) or 1.0  # one scale: residuals comparable
    fig, axes = plt.subplots(3, len(columns), figsize=(1.6 * len(columns), 5.2), squeeze=False)
    for j, (label, original, reconstruction, residual, score) in enumerate(columns):
        for i, (image, kwargs) in enumerate(
            (
                (original, {"vmin": 0, "vmax": 1}),
                (reconstruction, {"vmin": 0, "vmax": 1}),
                (residual, {"vmin": 0, "vmax": vmax}),
            )
        ):
            axes[i, j].imshow(image, cmap="gray", **kwargs)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
        axes[0, j].set_title(f"{label}\nA={score:.3g}", fontsize=8, color="tab:red" if label == "abnormal" else "k")
    for i, name in enumerate(("original $x_t$", r"reconstruction $\hat{x}_t$", r"residual $|x_t-\hat{x}_t|$")):
        axes[i, 0].set_ylabel(name, fontsize=8)
    score_name = {"feature": "A_F", "image": "A_I", "center": "A_C"}[model.model.score]
    fig.suptitle(f"SALAD reconstructions ({checkpoint.name}; score {score_name})", fontsize=9)
    fig.tight_layout()
    return _save(fig, out)


def figure_proxy_tasks(root: Path, image_dir: str, image_size: int, num: int, out: Path, seed: int = 0) -> Path:
    """Fig. 3: each row an image; columns original, in-painting, local pixel shuffling, Bezier intensity."""
    images = load_images(list_images(root / image_dir, num, seed))
    images = torch.nn.functional.interpolate(images, (image_size, image_size), mode="bicubic", antialias=True)
    gray = images.mean(dim=1, keepdim=True).clamp(0, 1)
    torch.manual_seed(seed)
    tasks = {
        "original": None,
        "in-painting": RandomInPainting(),
        "local pixel shuffling": RandomLocalPixelShuffle(),
        "non-linear intensity (Bezier)": RandomBezierIntensity(),
    }
    fig, axes = plt.subplots(len(gray), len(tasks), figsize=(2.2 * len(tasks), 2.2 * len(gray)), squeeze=False)
    for j, (name, task) in enumerate(tasks.items()):
        shown = gray if task is None else task(gray)
        for i in range(len(gray)):
            axes[i, j].imshow(shown[i, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
        axes[0, j].set_title(name, fontsize=9)
    fig.suptitle("SALAD proxy tasks (paper settings: 5 in-painting tiles, 300 shuffled tiles)", fontsize=9)
    fig.tight_layout()
    return _save(fig, out)


def _compactness(latents: np.ndarray, labels: np.ndarray) -> float:
    """Mean distance of normal latents to their mean over that of abnormal ones: scale-free, lower is tighter."""
    center = latents[labels == 0].mean(axis=0)
    distance = np.linalg.norm(latents - center, axis=1)
    if not (labels == 1).any():
        return float("nan")
    return float(distance[labels == 0].mean() / distance[labels == 1].mean())


def figure_tsne(
    checkpoint_with: Path,
    checkpoint_without: Path,
    root: Path,
    normal_dir: str,
    abnormal_dir: str,
    max_images: int,
    out: Path,
    seed: int = 0,
    standardize: bool = False,
) -> Path:
    """Fig. 7: joint t-SNE of the test latents of a model with and one without the center loss."""
    try:
        from sklearn.manifold import TSNE  # noqa: PLC0415  (optional dependency, needed here only)
    except ImportError as error:
        msg = "The t-SNE figure needs scikit-learn: pip install scikit-learn"
        raise SystemExit(msg) from error
    normal = list_images(root / normal_dir, max_images // 2, seed)
    abnormal = list_images(root / abnormal_dir, max_images // 2, seed)
    labels = np.array([0] * len(normal) + [1] * len(abnormal))
    sets, compactness = [], {}
    for name, checkpoint in (("with center loss", checkpoint_with), ("without center loss", checkpoint_without)):
        _, latents, _, _ = encode(load_salad(checkpoint), normal + abnormal)
        latents = latents.numpy().astype(np.float64)
        compactness[name] = _compactness(latents, labels)
        if standardize:  # remove the overall scale, keep the shape of each cloud
            latents = (latents - latents.mean(axis=0)) / (latents.std() + 1e-12)
        sets.append(latents)
    joint = np.concatenate(sets)
    perplexity = float(min(30.0, max(2.0, (len(joint) - 1) / 3)))
    embedded = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(joint)
    count = len(labels)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    for ax, zoom in zip(axes, (False, True), strict=True):
        for k, (name, color) in enumerate((("with center loss", "tab:red"), ("without center loss", "tab:blue"))):
            points = embedded[k * count : (k + 1) * count]
            for label, marker in ((0, "o"), (1, "x")):
                chosen = points[labels == label]
                ax.scatter(
                    chosen[:, 0],
                    chosen[:, 1],
                    s=10 if marker == "o" else 14,
                    marker=marker,
                    c=color,
                    alpha=0.6,
                    linewidths=0.8,
                    label=f"{name}, {'normal' if label == 0 else 'abnormal'}"
                    + (f" (spread ratio {compactness[name]:.2f})" if label == 0 else ""),
                )
        if zoom:
            # Zoom on the normal cloud of the center-loss model.
            normal_with = embedded[:count][labels == 0]
            low, high = np.percentile(normal_with, [5, 95], axis=0)
            margin = 0.25 * (high - low) + 1e-6
            ax.set_xlim(low[0] - margin[0], high[0] + margin[0])
            ax.set_ylim(low[1] - margin[1], high[1] + margin[1])
            ax.set_title("(b) zoomed on the normal cluster with center loss", fontsize=9)
        else:
            ax.set_title("(a) overall feature distribution", fontsize=9)
            ax.legend(fontsize=6, loc="best")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        "t-SNE of test latents E(x)"
        + (" (each model standardised)" if standardize else "")
        + "; spread ratio = mean normal-to-normal-mean / abnormal-to-normal-mean distance in latent space",
        fontsize=8,
    )
    fig.tight_layout()
    return _save(fig, out)


def roc_points(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact ROC (FPR, TPR) of raw scores; a sample is positive when its score is >= the threshold."""
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order].astype(bool)
    last_of_tie = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]
    tps = np.cumsum(labels)[last_of_tie]
    fps = np.cumsum(~labels)[last_of_tie]
    tpr = np.r_[0.0, tps / max(labels.sum(), 1)]
    fpr = np.r_[0.0, fps / max((~labels).sum(), 1)]
    return fpr, tpr


def _dataset_key(row: pd.Series) -> str:
    for column in ("data.init_args.name", "data.init_args.root"):
        if column in row and isinstance(row[column], str) and row[column]:
            return Path(row[column]).name if column.endswith("root") else row[column]
    return str(row.get("data.class_path", "data")).rsplit(".", 1)[-1]


def _model_key(row: pd.Series) -> str:
    if isinstance(row.get("model.name"), str):
        return row["model.name"]
    return str(row.get("model.class_path", "model")).rsplit(".", 1)[-1]


def figure_roc(curves: dict[str, list[pd.DataFrame]], title: str, out: Path) -> Path:
    """Fig. 4: per model the mean ROC over its runs (vertical averaging), runs faint; AUC mean +- std."""
    grid = np.linspace(0, 1, 501)
    fig, ax = plt.subplots(figsize=(4.8, 4.6))
    for index, (model, frames) in enumerate(curves.items()):
        color = f"C{index}"
        tprs, aucs = [], []
        for frame in frames:
            fpr, tpr = roc_points(frame["pred_score"].to_numpy(), frame["gt_label"].to_numpy())
            aucs.append(float(np.trapezoid(tpr, fpr)))
            tprs.append(np.interp(grid, fpr, tpr))
            if len(frames) > 1:
                ax.plot(fpr, tpr, color=color, alpha=0.25, lw=0.8)
        std = f" ± {np.std(aucs, ddof=1):.3f}" if len(aucs) > 1 else ""
        ax.plot(
            grid,
            np.mean(tprs, axis=0),
            color=color,
            lw=1.8,
            label=f"{model}: AUC {np.mean(aucs):.3f}{std} (n={len(aucs)})",
        )
    ax.plot([0, 1], [0, 1], color="gray", ls="--", lw=0.8)
    ax.set_xlabel("false positive rate (1 - SPE)")
    ax.set_ylabel("true positive rate (SEN)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _save(fig, out)


def figures_roc_from_benchmark(benchmark_dir: Path, out_dir: Path) -> list[Path]:
    """One ROC figure per dataset of a benchmark folder (``results.csv`` + ``scores/``)."""
    results = pd.read_csv(benchmark_dir / "results.csv")
    results = results[results["scores_file"].notna()]
    written = []
    for dataset, rows in results.groupby(results.apply(_dataset_key, axis=1), sort=False):
        curves: dict[str, list[pd.DataFrame]] = {}
        for _, row in rows.iterrows():
            curves.setdefault(_model_key(row), []).append(pd.read_csv(benchmark_dir / row["scores_file"]))
        written.append(figure_roc(curves, f"ROC on {dataset} (test split)", out_dir / f"roc_{dataset}.png"))
    return written


CURVE_SCORES = {"auroc_feature": "A_F", "auroc_image": "A_I", "auroc_center": "A_C", "auroc_score": "score"}


def figure_curves(curve_csvs: Sequence[Path], out: Path, models: Sequence[str] | None = None, columns: int = 4) -> Path:
    """Test AUROC per score against epoch for each model (mean over seeds, min-max band), health signals below.

    Where a run logged the intensity-matched AUROC (``matched_*``), its mean is drawn dotted in the score's colour.
    ``models`` keeps only those models, in that order (all by default); panels wrap after ``columns`` models.
    """
    frame = pd.concat([pd.read_csv(path) for path in curve_csvs], ignore_index=True)
    found = list(dict.fromkeys(frame["model"]))
    missing = [model for model in models or [] if model not in found]
    if missing:
        msg = f"no curve rows for model(s) {missing} in {[str(path) for path in curve_csvs]}; found {found}"
        raise ValueError(msg)
    models = list(models or found)
    health = [column for column in ("latent_std", "center_norm") if column in frame]
    rows = 2 if health else 1
    width, blocks = min(columns, len(models)), -(-len(models) // columns)
    fig, axes = plt.subplots(
        rows * blocks, width, figsize=(3.4 * width, 2.9 * rows * blocks), squeeze=False, sharex=True
    )
    for ax in axes.flat:  # panels a model uses are switched back on
        ax.set_axis_off()
    for position, model in enumerate(models):
        top, column = rows * (position // width), position % width
        runs = frame[frame["model"] == model]
        seeds = sorted(runs["seed"].unique())
        ax = axes[top, column]
        ax.set_axis_on()
        present = [(key, label) for key, label in CURVE_SCORES.items() if key in runs and runs[key].notna().any()]
        for index, (name, label) in enumerate(present):
            stats = runs.groupby("epoch")[name].agg(["mean", "min", "max"])
            ax.plot(stats.index, stats["mean"], color=f"C{index}", lw=1.6, marker="o", ms=2.5, label=label)
            if len(seeds) > 1:
                ax.fill_between(stats.index, stats["min"], stats["max"], color=f"C{index}", alpha=0.2)
            matched = name.replace("auroc_", "matched_")
            if matched in runs and runs[matched].notna().any():
                mean = runs.groupby("epoch")[matched].mean()
                ax.plot(mean.index, mean, color=f"C{index}", lw=1.0, ls=":", label=f"{label}, intensity-matched")
        ax.axhline(0.5, color="gray", ls="--", lw=0.8)
        ax.set_ylim(0, 1)
        ax.set_title(f"{model} (seeds {', '.join(map(str, seeds))})", fontsize=8)
        ax.set_ylabel("test AUROC")
        ax.legend(fontsize=7)
        if health and runs[health].notna().any().any():
            below = axes[top + 1, column]
            below.set_axis_on()
            for index, name in enumerate(health):
                stats = runs.groupby("epoch")[name].mean()
                below.plot(stats.index, stats, color=f"C{index + 4}", lw=1.4, label=name)
            below.set_yscale("log")
            below.legend(fontsize=7)
        axes[top + rows - 1, column].set_xlabel("epoch")
    fig.tight_layout()
    return _save(fig, out)


def _save(fig: plt.Figure, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    print(f"wrote {out}")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the sub-command and draw."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["reconstructions", "proxy", "tsne", "roc", "curves", "all"])
    parser.add_argument("--ckpt", type=Path, help="SALAD checkpoint (with the center loss for tsne)")
    parser.add_argument("--ckpt-without", type=Path, help="SALAD checkpoint trained without the center loss (tsne)")
    parser.add_argument("--root", type=Path, help="Folder dataset root")
    parser.add_argument("--train-dir", default="train/normal", help="normal training images, for proxy")
    parser.add_argument("--normal-dir", default="test/normal")
    parser.add_argument("--abnormal-dir", default="test/abnormal")
    parser.add_argument("--num", type=int, default=4, help="images per class (reconstructions) or rows (proxy)")
    parser.add_argument("--image-size", type=int, default=256, help="proxy sheet size (the model's input size)")
    parser.add_argument("--max-images", type=int, default=600, help="test images in the t-SNE (half per class)")
    parser.add_argument("--standardize", action="store_true", help="t-SNE: scale each model's latents to unit std")
    parser.add_argument("--benchmark-dir", type=Path, help="folder with results.csv and scores/ (roc)")
    parser.add_argument(
        "--scores",
        nargs="*",
        default=[],
        metavar="LABEL=FILE",
        help="score files (image_path,gt_label,pred_score) to plot instead of a benchmark (roc)",
    )
    parser.add_argument("--curves", nargs="*", type=Path, default=[], help="paper_protocol.py curve CSVs (curves)")
    parser.add_argument("--models", nargs="*", help="curves: only these models (the CSV's model column), in order")
    parser.add_argument("--out-dir", type=Path, default=Path("figures"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bit-depth", type=int, help="bits stored in 16-bit PNG/TIFF files, as in training")
    parser.add_argument("--window", help="DICOM window, as in training: file, range, a preset (lung, ...) or C,W")
    parser.add_argument("--axis", type=int, choices=[0, 1, 2], help="NIfTI slicing axis, as in training")
    args = parser.parse_args(argv)
    global READER  # noqa: PLW0603  (one setting for every reader call of this script)
    READER = ReaderConfig().replace(bit_depth=args.bit_depth, window=args.window, axis=args.axis)
    run = {args.command} if args.command != "all" else {"reconstructions", "proxy", "tsne", "roc", "curves"}

    def need(*names: str) -> bool:
        missing = [n for n in names if getattr(args, n) is None]
        if missing and args.command != "all":
            parser.error(f"{args.command} needs --{', --'.join(m.replace('_', '-') for m in missing)}")
        return not missing

    if "reconstructions" in run and need("ckpt", "root"):
        figure_reconstructions(
            args.ckpt,
            args.root,
            args.normal_dir,
            args.abnormal_dir,
            args.num,
            args.out_dir / "reconstructions.png",
            args.seed,
        )
    if "proxy" in run and need("root"):
        size = load_salad(args.ckpt).model.image_size if args.command == "all" and args.ckpt else args.image_size
        figure_proxy_tasks(
            args.root, args.train_dir, size, min(args.num, 4), args.out_dir / "proxy_tasks.png", args.seed
        )
    if "tsne" in run and need("ckpt", "ckpt_without", "root"):
        figure_tsne(
            args.ckpt,
            args.ckpt_without,
            args.root,
            args.normal_dir,
            args.abnormal_dir,
            args.max_images,
            args.out_dir / "tsne_center_loss.png",
            args.seed,
            args.standardize,
        )
    if "roc" in run:
        if args.scores:
            curves = {}
            for item in args.scores:
                label, _, path = item.partition("=")
                curves.setdefault(label, []).append(pd.read_csv(path))
            figure_roc(curves, "ROC", args.out_dir / "roc.png")
        elif need("benchmark_dir"):
            figures_roc_from_benchmark(args.benchmark_dir, args.out_dir)
    if "curves" in run and (args.curves or args.command != "all"):
        if not args.curves:
            parser.error("curves needs --curves")
        for path in args.curves:
            figure_curves([path], args.out_dir / f"{path.stem}.png", args.models)


if __name__ == "__main__":
    main()
