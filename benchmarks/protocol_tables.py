"""Markdown tables for docs/results.md from the rows ``paper_protocol.py`` writes (mean +- std over seeds).

Reads a result CSV (one row per model, seed and score after the last epoch) and optionally its curve CSV (test
AUROC of every score every few epochs) and prints:

* per model and score: AUROC mean +- std over seeds with each seed's value, the other four paper metrics (means),
  training images/s (mean) and the intensity-matched AUROC where the run logged it;
* per model: the curve, test AUROC (and intensity-matched AUROC) of each score at each logged epoch, mean over
  seeds (min-max when seeds > 1), with the label-free health signals of SALAD runs;
* the label-free checkpoint rules, for runs that logged their signal: the logged epoch whose structure loss on
  held-out normal images is lowest, or whose A_F is least correlated with brightness among those images, and the
  test AUROC there beside the last epoch's (the paper's protocol).

Usage:
    python benchmarks/protocol_tables.py --csv docs/results/braintumor_64px.csv \
        --curve-csv docs/results/braintumor_64px_curves.csv
"""

import argparse
from pathlib import Path

import pandas as pd

SCORE_NAMES = {"feature": "A_F", "image": "A_I", "center": "A_C", "score": "its score"}
CURVE_COLUMNS = {"auroc_feature": "A_F", "auroc_image": "A_I", "auroc_center": "A_C", "auroc_score": "score"}
MATCHED_COLUMNS = {f"matched_{key[6:]}": f"{name} matched" for key, name in CURVE_COLUMNS.items()}
HEALTH_COLUMNS = {
    "latent_std": "latent std",
    "center_norm": "center norm",
    "normal_to_center": "normal-to-center",
    "normal_brightness_feature": "A_F~brightness",
    "normal_brightness_image": "A_I~brightness",
    "normal_brightness_center": "A_C~brightness",
}
#: Label-free checkpoint rules: the signal logged on held-out normal images, and how the rule reads it.
RULES = {
    "heldout_normal_str": ("lowest held-out normal L_str", "min"),
    "normal_brightness_feature": (
        "A_F least tied to brightness among held-out normal images (smallest |Spearman|)",
        "abs",
    ),
}


def _spread(values: pd.Series) -> str:
    """``mean ± std`` (sample std) of a column, or the single value."""
    if len(values) == 1:
        return f"{values.iloc[0]:.3f}"
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"


def summary_table(results: pd.DataFrame) -> str:
    """One line per model and score: AUROC over seeds, the other paper metrics, the speed, the matched AUROC."""
    lines = [
        "| model | score | seeds | AUROC mean ± std | per seed | F1 | ACC | SEN | SPE | train img/s | "
        "intensity-matched AUROC |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    if "auroc_intensity_matched" not in results:
        results = results.assign(auroc_intensity_matched=float("nan"))
    for (model, score), group in results.groupby(["model", "score"], sort=False):
        rows = group.sort_values("seed")
        per_seed = " / ".join(f"{value:.3f}" for value in rows["auroc"])
        metrics = " | ".join(f"{rows[name].mean():.3f}" for name in ("f1", "accuracy", "sensitivity", "specificity"))
        speed = rows["train_images_per_s"].dropna()
        # Per run, not a mean: seeds may have trained on different CPU kinds (docs/results.md names each).
        speed_text = " / ".join(f"{value:.1f}" for value in speed)
        matched = rows["auroc_intensity_matched"].dropna()
        matched_text = _spread(matched) if len(matched) else ""
        lines.append(
            f"| {model} | {SCORE_NAMES.get(score, score)} | {', '.join(map(str, rows['seed']))} | "
            f"{_spread(rows['auroc'])} | {per_seed} | {metrics} | {speed_text} | {matched_text} |"
        )
    return "\n".join(lines)


def curve_table(curves: pd.DataFrame, model: str) -> str:
    """Test AUROC of each score per logged epoch for one model (mean over seeds, [min, max] with several)."""
    runs = curves[curves["model"] == model]
    columns = CURVE_COLUMNS | MATCHED_COLUMNS
    scores = {key: name for key, name in columns.items() if key in runs and runs[key].notna().any()}
    health = {key: name for key, name in HEALTH_COLUMNS.items() if key in runs and runs[key].notna().any()}
    seeds = runs["seed"].nunique()
    header = ["epoch", "seeds", *scores.values(), *health.values()]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for epoch, rows in runs.groupby("epoch"):
        cells = [str(epoch), str(len(rows))]
        for key in scores:
            values = rows[key]
            span = f" [{values.min():.2f}, {values.max():.2f}]" if seeds > 1 and len(values) > 1 else ""
            cells.append(f"{values.mean():.3f}{span}")
        cells += [f"{rows[key].mean():.4f}" for key in health]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def checkpoint_table(curves: pd.DataFrame, signal: str = "heldout_normal_str") -> str:
    """Per run: test AUROC at the last logged epoch and at the epoch a label-free rule picks.

    The rules use no anomaly label, only a signal logged on held-out normal images (:data:`RULES`): the epoch with
    the lowest ``heldout_normal_str`` (the model's own L_str), or the one whose A_F follows their brightness least
    (``normal_brightness_feature``, smallest absolute Spearman correlation). Runs without the signal are left out.
    """
    if signal not in curves:
        return ""
    logged = curves.dropna(subset=[signal])
    scores = {key: name for key, name in CURVE_COLUMNS.items() if key in logged and logged[key].notna().any()}
    header = ["model", "seed", "last epoch", *scores.values(), "picked epoch", *scores.values()]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for (model, seed), run in logged.groupby(["model", "seed"], sort=False):
        values = run[signal].abs() if RULES[signal][1] == "abs" else run[signal]
        last, picked = run.loc[run["epoch"].idxmax()], run.loc[values.idxmin()]
        cells = [model, str(seed)]
        for row in (last, picked):
            cells += [str(int(row["epoch"])), *(f"{row[key]:.3f}" for key in scores)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    """Print the tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", type=Path, required=True, help="paper_protocol.py --csv rows")
    parser.add_argument("--curve-csv", type=Path, help="paper_protocol.py --curve-csv rows")
    args = parser.parse_args()
    print(summary_table(pd.read_csv(args.csv)))
    if args.curve_csv:
        curves = pd.read_csv(args.curve_csv)
        for model in dict.fromkeys(curves["model"]):
            print(f"\n{model}:\n")
            print(curve_table(curves, model))
        for signal, (rule, _) in RULES.items():
            table = checkpoint_table(curves, signal)
            if table:
                print(f"\nlabel-free checkpoint ({rule}):\n\n{table}")


if __name__ == "__main__":
    main()
