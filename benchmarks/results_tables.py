"""Write docs/results.md from the rows in docs/results/ (one command; the file is never edited by hand).

Every table of docs/results.md is computed here from the CSV files in ``docs/results/`` (and the per-image score
files in ``docs/results/scores/`` for the operating points): the protocol runs of ``benchmarks/paper_protocol.py``
(``braintumor_64px.csv``, ``pneumoniamnist_32px.csv`` and their curves), the trivial baseline, and the CSVs that hold
the measurements of the other scripts (training speed, deployment, the README's demo job, short runs, the brightness
test, the 256 px GPU run). Each row carries its ``command``, ``hardware`` and ``date``. The findings at the end are
sentences whose numbers are formatted from the same rows. Only the standard library is used (no torch), so the check
is fast.

Usage:
    python benchmarks/results_tables.py          # writes docs/results.md
    python benchmarks/results_tables.py --check  # exits 1 if docs/results.md is not what the CSVs give
"""

from __future__ import annotations

import argparse
import csv
import itertools
import statistics
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
DOC = ROOT / "docs" / "results.md"
COMMAND = "python benchmarks/results_tables.py"
UNKNOWN = "unknown"

SCORES = {"feature": "A_F", "image": "A_I", "center": "A_C", "score": "GANomaly's score"}
#: Output options of paper_protocol.py: left out of the command patterns (each row's CSV cell has them).
OUTPUT_OPTIONS = {"--csv", "--curve-csv", "--work-dir", "--scores-out", "--resume"}
FIRST_OPTIONS = ["--config", "--model", "--label", "--set", "--seed", "--epochs"]

# Brain MRI 64 px labels (the ``model`` column of braintumor_64px.csv).
B_DEF = "salad antialias=true"
B_FP32 = "salad antialias=true train_precision='32'"
B_AE = "autoencoder antialias=true"
B_NOSSL = "salad antialias=true restoration_weight=0"
B_KL = "salad antialias=true train_precision=32 latent_loss=kl restoration_weight=0"
B_LSTR = "salad antialias=true train_precision=32 center_weight=0 restoration_weight=0"
B_L1T3 = "salad antialias=true structure_loss=l1 center_weight=0 restoration_weight=0"
B_NOADV = "salad antialias=true adv_weight=0 train_precision=bf16"
B_SHALL = "salad antialias=true train_precision=32 restoration_shared_layers=-1"
B_SH2 = "salad antialias=true train_precision=32 restoration_shared_layers=2"
B_L1 = "salad antialias=true structure_loss=l1"
B_L1FP32 = "salad antialias=true train_precision=32 structure_loss=l1"
B_W37 = "salad antialias=true structure_weight=3.7"
B_L1W27 = "salad antialias=true structure_loss=l1 structure_weight=27"
B_NOBEZ = "salad antialias=true train_precision=32 proxy_task_weights=[1,1,0]"
B_INP = "salad antialias=true proxy_task_weights=[1,0,0]"
B_SHUF = "salad antialias=true proxy_task_weights=[0,1,0]"
B_BEZ = "salad antialias=true proxy_task_weights=[0,0,1]"
B_MI = "salad antialias=true mean_intensity=0.23"
B_AEMI = "autoencoder antialias=true mean_intensity=0.23"
B_PLAIN = "salad antialias=false"
B_AEPLAIN = "autoencoder antialias=false"
B_NOFEA = "salad antialias=false feature_weight=0"
B_NOCENTER = "salad antialias=false center_weight=0"  # curve rows only (stopped at epoch 110)
GAN = "ganomaly"
ROBUST = "salad-robust"
ROBUST_LAST = "salad-robust weight_averaging=null"
# PneumoniaMNIST 32 px labels.
P_DEF, P_AE, P_PLAIN = "salad", "autoencoder", "salad antialias=false"
P_NOSSL, P_NOSSL32, P_BF16 = (
    "salad restoration_weight=0",
    "salad restoration_weight=0 train_precision=32",
    ("salad train_precision=bf16"),
)

#: What each protocol row is, in the order of the tables; labels not listed follow in the order of the CSV.
DESCRIPTIONS = {
    "braintumor": {
        B_DEF: "SALAD, the paper's defaults (`train_precision=auto`: bf16 on these CPUs)",
        B_FP32: "SALAD, the paper's defaults in fp32",
        B_AE: "SSIM autoencoder (SALAD's networks, L_str only)",
        GAN: "GANomaly (anomalib's defaults)",
        ROBUST: "SALAD's label-free recipe (`configs/salad_robust_braintumor_64px.yaml`: A_C of the averaged "
        "weights, threshold from held-out normal training images, the whole test folder scored)",
        ROBUST_LAST: "the label-free recipe scored with the last weights (`weight_averaging=null`)",
        B_NOSSL: "SALAD without self-supervised restoration (no SSL)",
        B_KL: "L_str + L_KL instead of L_ct, no SSL, fp32",
        B_LSTR: "L_str only (L_fea, L_adv kept), no SSL, fp32",
        B_L1T3: "L1 only (L_fea, L_adv kept), no SSL",
        B_NOADV: "no adversarial alignment (`adv_weight=0`), bf16",
        B_SHALL: "SSL sharing encoder and whole decoder, fp32",
        B_SH2: "SSL sharing encoder and the last 2 decoder layers, fp32",
        B_L1: "L1 structure loss (L_ct and SSL kept)",
        B_L1FP32: "L1 structure loss (L_ct and SSL kept), fp32",
        B_W37: "1 - SSIM at weight 3.7 instead of 10",
        B_L1W27: "L1 structure loss at weight 27",
        B_NOBEZ: "restoration without the Bezier task, fp32",
        B_INP: "restoration with in-painting only",
        B_SHUF: "restoration with local shuffling only",
        B_BEZ: "restoration with the Bezier intensity task only",
        B_MI: "SALAD with brightness scaled out in the model (`mean_intensity=0.23`)",
        B_AEMI: "SSIM autoencoder with `mean_intensity=0.23`",
        B_PLAIN: "SALAD, plain (not antialiased) resize",
        B_AEPLAIN: "SSIM autoencoder, plain resize",
        B_NOFEA: "no L_fea, plain resize",
    },
    "pneumoniamnist": {
        P_DEF: "SALAD, the paper's defaults",
        P_AE: "SSIM autoencoder (SALAD's networks, L_str only)",
        GAN: "GANomaly (anomalib's defaults)",
        ROBUST: "SALAD's label-free recipe (`configs/salad_robust_pneumoniamnist_32px.yaml`: A_C of the averaged "
        "weights, threshold from held-out normal training images, the whole test folder scored)",
        ROBUST_LAST: "the label-free recipe scored with the last weights (`weight_averaging=null`)",
        P_NOSSL: "SALAD without self-supervised restoration (no SSL)",
        P_NOSSL32: "no SSL, fp32 pinned",
        P_BF16: "SALAD defaults with bf16 pinned",
        P_PLAIN: "SALAD, plain resize, scored on all 624 test images",
    },
}

#: (paper table, configuration, paper AUC on OCT, brain labels, PneumoniaMNIST labels); the paper: Tables I, III, IV.
ABLATIONS: list[tuple[str, str, str, list[str], list[str]]] = [
    ("III", "L1 image loss (L_fea, L_adv; no latent loss, no SSL)", "0.7447", [B_L1T3], []),
    ("III", "L_str = 1 - SSIM (L_fea, L_adv; no latent loss, no SSL)", "0.8886", [B_LSTR], []),
    ("III", "L_str + L_KL (no SSL)", "0.9086", [B_KL], []),
    ("III, IV", "L_str + L_ct, no SSL (= Table IV's w/o SSL)", "0.9328", [B_NOSSL], [P_NOSSL, P_NOSSL32]),
    ("IV", "SSL sharing encoder and decoder (E. + D.)", "0.9309", [B_SHALL], []),
    ("IV (text)", "SSL sharing encoder and the last decoder layers", "0.9436", [B_SH2], []),
    ("I, IV", "SSL sharing the encoder only (E.): SALAD", "0.9642", [B_DEF], [P_DEF]),
    ("I", "SSIM autoencoder (L_str only)", "0.8664", [B_AE], [P_AE]),
    ("III (text)", "L1 autoencoder", "0.7779", [], []),
    ("", "no adversarial alignment (`adv_weight=0`)", "", [B_NOADV], []),
    ("", "L1 structure loss with L_ct and SSL", "", [B_L1], []),
    ("", "1 - SSIM at weight 3.7 with L_ct and SSL", "", [B_W37], []),
    ("", "L1 at weight 27 with L_ct and SSL", "", [B_L1W27], []),
    ("", "restoration with in-painting only", "", [B_INP], []),
    ("", "restoration with local shuffling only", "", [B_SHUF], []),
    ("", "restoration with the Bezier task only", "", [B_BEZ], []),
    ("", "restoration without the Bezier task (fp32)", "", [B_NOBEZ], []),
    ("", "no L_fea (plain resize)", "", [B_NOFEA], []),
]

#: Operating points read from committed score files: (dataset, file, protocol label, seed, score, name).
OPERATING_POINTS = [
    ("braintumor", "brain_ganomaly_s1/score.csv", GAN, 1, "score", "GANomaly"),
    ("braintumor", "brain_salad_meanint_s1/image.csv", B_MI, 1, "image", "SALAD `mean_intensity=0.23`, A_I"),
    ("braintumor", "brain_autoencoder_s1/feature.csv", B_AE, 1, "feature", "SSIM autoencoder, A_F"),
    ("braintumor", "brain_salad_ssim_w3p7_s1/center.csv", B_W37, 1, "center", "SALAD, 1 - SSIM at weight 3.7, A_C"),
    ("braintumor", "brain_salad_fp32_s1/center.csv", B_FP32, 1, "center", "SALAD defaults (fp32), A_C"),
    ("braintumor", "brain_salad_nossl_s1/feature.csv", B_NOSSL, 1, "feature", "SALAD without SSL, A_F"),
    ("braintumor", "brain_salad_fp32_s1/feature.csv", B_FP32, 1, "feature", "SALAD defaults (fp32), A_F"),
    ("pneumoniamnist", "pneumonia_salad_nossl_s1/center.csv", P_NOSSL, 1, "center", "SALAD without SSL, A_C"),
    ("pneumoniamnist", "pneumonia_salad_s2/center.csv", P_DEF, 2, "center", "SALAD defaults, A_C"),
    ("pneumoniamnist", "pneumonia_salad_s2/feature.csv", P_DEF, 2, "feature", "SALAD defaults, A_F"),
    ("pneumoniamnist", "pneumonia_ganomaly_s1/score.csv", GAN, 1, "score", "GANomaly"),
]
FALSE_POSITIVE_RATES = (0.05, 0.10, 0.20)
#: Runs whose curves logged the brightness signal of the label-free checkpoint rule.
RULE_LABELS = [B_DEF, B_FP32, B_NOSSL, B_W37, B_L1]
#: The SALAD preset's 200-epoch protocol runs, for the end-to-end speed table.
PRESET_LABELS = {"braintumor": [B_PLAIN, B_DEF, B_FP32], "pneumoniamnist": [P_DEF, P_BF16]}

FIGURES = [
    (
        "braintumor_64px_curves_models.png",
        "Brain MRI 64 px: test AUROC every 10 epochs of SALAD, SALAD without SSL, "
        "the SSIM autoencoder and GANomaly (mean of three seeds, band = their range)",
    ),
    ("braintumor_64px_seed1_roc.png", "Brain MRI 64 px, seed 1: ROC of the scores in the operating-point table"),
    ("pneumoniamnist_32px_roc.png", "PneumoniaMNIST 32 px: ROC of SALAD seed 2 (A_F, A_I, A_C) and GANomaly seed 1"),
    ("pneumoniamnist_32px_curves.png", "PneumoniaMNIST 32 px: test AUROC every 10 epochs, three seeds per model"),
]
MORE_FIGURES = [
    ("braintumor_64px_curves.png", "every brain MRI run's curve and its latent health signals"),
    ("braintumor_64px_200ep_roc.png", "ROC on all 1,200 test images, seed 0, with and without `mean_intensity`"),
    ("braintumor_64px_ablation_roc.png", "ROC of SALAD without SSL, seed 0"),
    ("braintumor_cpu_reconstructions.png", "reconstructions after the 20-epoch short run"),
    ("braintumor_cpu_roc.png", "ROC of the 20-epoch short run"),
    ("proxy_tasks_braintumor.png", "the three proxy tasks of the restoration module on brain slices"),
]


# ------------------------------------------------------------------------------------------------ reading and format
def read(name: str) -> list[dict[str, str]]:
    """The rows of ``docs/results/<name>``."""
    with (RESULTS / name).open(newline="") as handle:
        return list(csv.DictReader(handle))


def number(text: str | None) -> float | None:
    """A cell as a float, None when empty."""
    return float(text) if text not in (None, "") else None


def f3(value: float) -> str:
    """Three decimals."""
    return f"{value:.3f}"


def spread(values: Sequence[float]) -> str:
    """``mean ± std`` (sample std) of several values, the value itself for one."""
    if len(values) == 1:
        return f3(values[0])
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def cell(text: object) -> str:
    """A table cell: pipes escaped, empty for None."""
    return "" if text is None else str(text).replace("|", "\\|")


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return lines


def unique(values: Iterable[str]) -> list[str]:
    """The values in first-seen order, without repeats."""
    return list(dict.fromkeys(values))


def hardware_of(rows: Iterable[dict[str, str]]) -> str:
    """The rows' hardware kinds, ``unknown`` for rows that do not say."""
    return ", ".join(unique(row.get("hardware") or UNKNOWN for row in rows))


def dates_of(rows: Iterable[dict[str, str]]) -> str:
    """The rows' date range."""
    dates = sorted({row["date"] for row in rows if row.get("date")})
    if not dates:
        return UNKNOWN
    return dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"


def command_pattern(command: str) -> str:
    """A protocol command without its output paths, options in one order, the seed as ``S``."""
    tokens = command.split()
    head, options, order, key = tokens[:2], {}, [], None
    for token in tokens[2:]:
        if token.startswith("--"):
            key = token
            options[key], order = [], [*order, key]
        elif key is not None:
            options[key].append(token)
    if "--seed" in options:
        options["--seed"] = ["S"]
    keys = [k for k in FIRST_OPTIONS if k in options] + [k for k in order if k not in FIRST_OPTIONS]
    return " ".join(head + [part for k in keys if k not in OUTPUT_OPTIONS for part in [k, *options[k]]])


def code(text: str) -> str:
    """Inline code."""
    return f"`{text}`"


def minutes_seconds(seconds: float) -> str:
    """``M min S s``."""
    whole = round(seconds)
    return f"{whole // 60} min {whole % 60:02d} s" if whole >= 60 else f"{whole} s"


# ------------------------------------------------------------------------------------------------ protocol statistics
@dataclass
class Stat:
    """AUROC of one score over the seeds of one or more protocol labels."""

    values: list[float]
    matched: list[float]
    seeds: list[int]

    @property
    def mean(self) -> float:
        """Mean AUROC."""
        return statistics.mean(self.values)

    @property
    def matched_mean(self) -> float | None:
        """Mean intensity-matched AUROC, None when no run logged it."""
        return statistics.mean(self.matched) if self.matched else None

    def text(self, seeds: bool = False) -> str:
        """``mean ± std (matched)``, with ``, n=k`` when asked."""
        if not self.values:
            return ""
        out = spread(self.values)
        if self.matched:
            partial = f" of {len(self.matched)}" if len(self.matched) != len(self.values) else ""
            out += f" ({f3(statistics.mean(self.matched))}{partial})"
        return out + (f", n={len(self.values)}" if seeds else "")


class Protocol:
    """The final rows of one dataset's protocol runs."""

    def __init__(self, dataset: str, rows: list[dict[str, str]]) -> None:
        self.dataset, self.rows = dataset, rows

    def runs(self, labels: Sequence[str], score: str | None = None) -> list[dict[str, str]]:
        """Rows of the labels (and score)."""
        return [r for r in self.rows if r["model"] in labels and (score is None or r["score"] == score)]

    def stat(self, labels: str | Sequence[str], score: str) -> Stat:
        """AUROC statistics of a score over the labels' seeds."""
        rows = self.runs([labels] if isinstance(labels, str) else labels, score)
        matched = [v for v in (number(r.get("auroc_intensity_matched")) for r in rows) if v is not None]
        return Stat([float(r["auroc"]) for r in rows], matched, [int(r["seed"]) for r in rows])

    def labels(self) -> list[str]:
        """Every label: the described ones first, in their order, then the others as they appear."""
        present = unique(r["model"] for r in self.rows)
        described = [label for label in DESCRIPTIONS[self.dataset] if label in present]
        return described + [label for label in present if label not in described]


def threshold_text(rows: list[dict[str, str]]) -> str:
    """Mean sensitivity / specificity at the model's own fitted threshold, where the rows have it."""
    pairs = [(number(r.get("threshold_sensitivity")), number(r.get("threshold_specificity"))) for r in rows]
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    if not pairs:
        return ""
    return f"{statistics.mean(a for a, _ in pairs):.3f} / {statistics.mean(b for _, b in pairs):.3f}"


def model_table(protocol: Protocol) -> list[str]:
    """One line per model: each score's AUROC over seeds, hardware, dates and the command pattern."""
    with_threshold = any(r.get("threshold_sensitivity") for r in protocol.rows)
    header = ["model", "seeds", "A_F", "A_I", "A_C", "GANomaly's score"]
    header += ["SEN / SPE at its fitted threshold"] if with_threshold else []
    header += ["hardware", "dates", "command (output options left out)"]
    lines = []
    for label in protocol.labels():
        rows = protocol.runs([label])
        seeds = ", ".join(str(s) for s in sorted({int(r["seed"]) for r in rows}))
        cells = [DESCRIPTIONS[protocol.dataset].get(label, label), seeds]
        cells += [protocol.stat(label, score).text() for score in SCORES]
        cells += [threshold_text(rows)] if with_threshold else []
        patterns = "; ".join(code(p) for p in unique(command_pattern(r["command"]) for r in rows))
        cells += [hardware_of(rows), dates_of(rows), patterns]
        lines.append(cells)
    return table(header, lines)


# ------------------------------------------------------------------------------------------------ sections
@dataclass
class Data:
    """Every table's rows."""

    brain: Protocol
    pneumonia: Protocol
    brain_curves: list[dict[str, str]]
    trivial: list[dict[str, str]]
    speed: list[dict[str, str]]
    gpu: list[dict[str, str]]
    deployment: list[dict[str, str]]
    int8: list[dict[str, str]]
    parity: list[dict[str, str]]
    synthetic: list[dict[str, str]]
    synthetic_seeds: list[dict[str, str]]
    short: list[dict[str, str]]
    brightness: list[dict[str, str]]
    scoring: list[dict[str, str]]

    @classmethod
    def load(cls) -> Data:
        """Read every CSV."""
        return cls(
            brain=Protocol("braintumor", read("braintumor_64px.csv")),
            pneumonia=Protocol("pneumoniamnist", read("pneumoniamnist_32px.csv")),
            brain_curves=read("braintumor_64px_curves.csv"),
            trivial=read("trivial_baseline.csv"),
            speed=read("training_speed.csv"),
            gpu=read("braintumor_256px_gpu.csv"),
            deployment=read("deployment_speed.csv"),
            int8=read("int8_accuracy.csv"),
            parity=read("openvino_parity.csv"),
            synthetic=read("synthetic.csv"),
            synthetic_seeds=read("synthetic_seeds.csv"),
            short=read("short_runs.csv"),
            brightness=read("brightness_test.csv"),
            scoring=read("scoring_speed.csv"),
        )

    def protocol(self, dataset: str) -> Protocol:
        """The protocol rows of a dataset."""
        return self.brain if dataset == "braintumor" else self.pneumonia


def sources(rows: list[dict[str, str]]) -> str:
    """A line naming the rows' hardware, dates and commands."""
    commands = "; ".join(code(c) for c in unique(r["command"] for r in rows))
    return f"Hardware: {hardware_of(rows)}. Dates: {dates_of(rows)}. Command: {commands}."


def header_section() -> list[str]:
    """What the file is and how it is made."""
    return [
        "# Measured results",
        "",
        f"Generated by `{COMMAND}` from the rows in `docs/results/` (CSV files; per-image scores in",
        "`docs/results/scores/`); do not edit it by hand: add or change rows, then run the command again.",
        f"`{COMMAND} --check` fails when this file is out of date, and `tests/test_results_doc.py` runs that check.",
        "Every row names its `command`, `hardware` and `date`; the tables below give them per model or per run.",
        "",
        "Hardware: every CPU run used 2 cores. **Xeon AMX**: Intel Xeon with AMX (bf16 and int8 tiles) and",
        "AVX512-BF16; two hosts of this kind, about 1.8x apart in speed. **Xeon AVX512-BF16 no AMX**: Intel Xeon with",
        "AVX512-BF16 and FP16, no AMX (bf16 is slower than fp32 there). "
        "**EPYC AVX512-BF16**: AMD EPYC with AVX512-BF16",
        "and VNNI, no AMX. **AVX2**: AMD EPYC with AVX2 and FMA only. "
        "**H200**: one NVIDIA H200 (torch 2.11, CUDA 13.0).",
        "CPU runs: torch 2.14-2.15, anomalib 2.7.0, OpenVINO 2026.4.1, NNCF 3.4.0, Python 3.11. `unknown`: the record",
        "does not say. A seeded run repeats exactly only on the same machine: other CPU kernels round bf16 and fp32",
        "differently, and adversarial training amplifies that, so compare seeds' spread, not single runs.",
        "",
        "Protocol of the 200-epoch tables: the paper's schedule (Adam 2e-4, betas (0.5, 0.999), 100 epochs constant",
        "and 100 linear decay, batch 64, the paper's loss weights) with half-width networks (32..256 channels, latent",
        "128) at the MedIAnomaly resolution: brain MRI at 64 px (1,000 normal training slices; 600 normal and 600",
        "tumour test slices) and PneumoniaMNIST at 32 px (1,214 normal training images; 624 test images). The test",
        "folder is halved by anomalib's `from_test` rule (seed 0): one half fits the thresholds, every AUROC is on the",
        "other half (600 and 312 images) after the last epoch, mean ± sample std over seeds. In brackets: the",
        "*intensity-matched* AUROC (`anomalib_salad.metrics.matched_auroc`: normal and abnormal images compared only",
        "within a decile of mean intensity), what a score sees beyond "
        "whole-image brightness. A_F = |E(x) - E(D(E(x)))|",
        "(the paper's score), A_I = |x - D(E(x))|, A_C = |E(x) - C| "
        "(Table V). The paper reports OCT and chest X-ray at",
        "256 px only, so its numbers are the direction to compare, not values to reach.",
    ]


def dataset_section(data: Data, dataset: str) -> list[str]:
    """The per-model table of one dataset."""
    protocol = data.protocol(dataset)
    if dataset == "braintumor":
        title = "## T1. Brain MRI at 64 px: every model, 200 epochs"
        note = [
            "MedIAnomaly publishes 0.859 (plain autoencoder) and 0.871 (its best autoencoder variant) on this split at",
            "64 px. Rows with `train_precision` pinned are separate rows; the others ran with `auto`.",
        ]
    else:
        title = "## T2. PneumoniaMNIST at 32 px: every model, 200 epochs"
        note = [
            "No published number for this protocol is known; the paper's chest X-ray set is the full-size Kermany one."
        ]
    return [title, "", *model_table(protocol), "", *note]


def ablation_cell(protocol: Protocol, labels: list[str], score: str, seeds: bool = False) -> str:
    """An ablation table cell: the labels' AUROC over seeds, or "not run"."""
    stat = protocol.stat(labels, score)
    return stat.text(seeds) if stat.values else "not run"


def no_center_cell(curves: list[dict[str, str]], column: str) -> str:
    """The run without a latent loss but with SSL: its last curve row (it was stopped early)."""
    rows = [r for r in curves if r["model"] == B_NOCENTER]
    if not rows:
        return "not run"
    last = max(rows, key=lambda r: int(r["epoch"]))
    return f"{f3(float(last[column]))} at epoch {last['epoch']} (stopped; plain resize)"


def ablation_section(data: Data) -> list[str]:
    """The paper's Tables III-V beside ours."""
    rows = []
    for paper, name, auc, brain, pneumonia in ABLATIONS:
        rows.append(
            [
                paper or "(not in the paper)",
                name,
                auc,
                ablation_cell(data.brain, brain, "feature", True) if brain else "not run",
                ablation_cell(data.brain, brain, "center") if brain else "",
                ablation_cell(data.pneumonia, pneumonia, "feature", True) if pneumonia else "",
                ablation_cell(data.pneumonia, pneumonia, "center") if pneumonia else "",
            ]
        )
    rows.insert(
        4,
        [
            "(not in the paper)",
            "no latent loss, with SSL (`center_weight=0`)",
            "",
            no_center_cell(data.brain_curves, "auroc_feature"),
            no_center_cell(data.brain_curves, "auroc_center"),
            "",
            "",
        ],
    )
    header = ["paper's table", "configuration", "paper, OCT", "brain A_F (matched)", "brain A_C (matched)"]
    header += ["PneumoniaMNIST A_F (matched)", "PneumoniaMNIST A_C (matched)"]
    score_rows = []
    paper_v = {"feature": "0.9642 (best)", "image": "not in the text (between)", "center": "not in the text (lowest)"}
    for score in ("feature", "image", "center"):
        score_rows.append(
            [
                SCORES[score],
                paper_v[score],
                data.brain.stat(B_DEF, score).text(True),
                data.brain.stat(B_AE, score).text(True),
                data.pneumonia.stat(P_DEF, score).text(True),
                data.pneumonia.stat(P_AE, score).text(True),
            ]
        )
    return [
        "## T3. The paper's ablations on brain MRI, side by side (Tables III and IV; PneumoniaMNIST where run)",
        "",
        "AUROC after epoch 200, from the rows of T1 and T2 (n = seeds; the PneumoniaMNIST no-SSL cell pools the",
        "fp32-pinned seed 2 with seeds 0-1). The paper's column is its AUC on OCT at 256 px (Tables I, III, IV and",
        "their text); every row of Table III keeps L_fea and L_adv and drops SSL, as the paper's footnote says.",
        "",
        *table(header, rows),
        "",
        "### T4. Table V: which score",
        "",
        "The paper's Table V values are not legible in the paper text used here; its text ranks A_F first, then A_I,",
        "and the center distance last; A_F is its SALAD (0.9642).",
        "",
        *table(
            [
                "score",
                "paper, OCT",
                "brain SALAD",
                "brain SSIM autoencoder",
                "PneumoniaMNIST SALAD",
                "PneumoniaMNIST SSIM autoencoder",
            ],
            score_rows,
        ),
    ]


def trivial_section(data: Data) -> list[str]:
    """Scores with no learning."""
    by = {(r["dataset"], r["score"]): r for r in data.trivial}
    statistics_ = unique(r["score"] for r in data.trivial)
    rows = [
        [s, *(f3(float(by[(d, s)]["auroc"])) if (d, s) in by else "" for d in ("braintumor", "pneumoniamnist"))]
        for s in statistics_
    ]
    return [
        "## T5. Scores with no learning: how much a shortcut explains",
        "",
        "Each test image (resized as the model resizes it) scored by a global statistic; AUROC on all test images",
        "(1,200 brain MRI, 624 PneumoniaMNIST). The histogram distance is one-class and label-free; the signed",
        "statistics read their direction off the labels, so they bound what a shortcut gives a method that happens to",
        "align with it.",
        "",
        *table(["statistic", "brain MRI, 64 px", "PneumoniaMNIST, 32 px"], rows),
        "",
        sources(data.trivial),
    ]


def brightness_section(data: Data) -> list[str]:
    """Normal test images rescaled in brightness, AUROC recomputed."""
    factors = ["x0.8", "x0.9", "x1", "x1.1", "x1.25"]
    rows = []
    for r in data.brightness:
        values = [float(r[f"auroc_{f}"]) for f in factors]
        rows.append(
            [
                DESCRIPTIONS["braintumor"].get(r["model"], r["model"]),
                r["seed"],
                SCORES[r["score"]],
                *(f3(v) for v in values),
                f"{max(values) - min(values):.2f}",
                r["hardware"],
                r["date"],
            ]
        )
    return [
        "## T6. How much brightness alone moves each score (brain MRI)",
        "",
        "The checkpoint after epoch 200 on all 1,200 test images; every *normal* image multiplied by the factor",
        "(clipped to [0, 1]), the tumour images unchanged. A score that ranks slices by brightness moves with the",
        "factor; one that follows anatomy barely does.",
        "",
        *table(["model", "seed", "score", *factors, "range", "hardware", "date"], rows),
        "",
        "Commands: " + "; ".join(code(c) for c in unique(r["command"] for r in data.brightness)) + ".",
    ]


def roc_points(path: Path) -> tuple[float, list[float]]:
    """AUROC and the sensitivity at each of FALSE_POSITIVE_RATES, from a score file (label 1 = anomalous).

    Ties share one ROC point; between points the curve is linear, and at a rate the curve reaches exactly, the
    highest sensitivity there counts (``numpy.interp`` on scikit-learn's ``roc_curve``).
    """
    with path.open(newline="") as handle:
        scored = [(float(r["pred_score"]), int(float(r["gt_label"]))) for r in csv.DictReader(handle)]
    positives = sum(label for _, label in scored)
    negatives = len(scored) - positives
    scored.sort(key=lambda item: -item[0])
    points, tp, fp, i = [(0.0, 0.0)], 0, 0, 0
    while i < len(scored):
        score = scored[i][0]
        while i < len(scored) and scored[i][0] == score:
            tp, fp, i = tp + scored[i][1], fp + 1 - scored[i][1], i + 1
        points.append((fp / negatives, tp / positives))
    auroc = sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in itertools.pairwise(points))

    def at(rate: float) -> float:
        j = max(k for k, (x, _) in enumerate(points) if x <= rate + 1e-12)
        x0, y0 = points[j]
        if abs(x0 - rate) < 1e-12 or j + 1 == len(points):
            return y0
        x1, y1 = points[j + 1]
        return y0 + (y1 - y0) * (rate - x0) / (x1 - x0)

    return auroc, [at(rate) for rate in FALSE_POSITIVE_RATES]


def operating_points(data: Data) -> list[tuple[str, str, float, list[float], dict[str, str]]]:
    """(dataset, name, AUROC, sensitivities, protocol row) of each committed score file in OPERATING_POINTS."""
    out = []
    for dataset, file, label, seed, score, name in OPERATING_POINTS:
        path = RESULTS / "scores" / file
        rows = [r for r in data.protocol(dataset).runs([label], score) if int(r["seed"]) == seed]
        if path.is_file() and rows:
            auroc, sensitivity = roc_points(path)
            out.append((dataset, name, auroc, sensitivity, rows[0]))
    return out


def operating_section(data: Data) -> list[str]:
    """Sensitivity at fixed false-positive rates."""
    rows = [
        [
            "brain MRI" if d == "braintumor" else "PneumoniaMNIST",
            f"{name}, seed {row['seed']}",
            f3(auroc),
            *(f3(s) for s in sens),
            row.get("hardware") or UNKNOWN,
            row.get("date") or UNKNOWN,
        ]
        for d, name, auroc, sens, row in operating_points(data)
    ]
    rates = [f"SEN at {round(r * 100)} % FPR" for r in FALSE_POSITIVE_RATES]
    return [
        "## T7. Operating points: sensitivity at a fixed false-positive rate",
        "",
        "Read by this generator from the committed per-image scores of the test half (`docs/results/scores/`,",
        "written by `paper_protocol.py --scores-out`): the ROC, linear between its points, at each false-positive rate",
        "on the normal images. Hardware and date are the run's (T1, T2); the autoencoder's file is from a rerun",
        "(Xeon AMX, 2026-12-04) that reproduced its T1 row to the fourth decimal.",
        "",
        *table(["dataset", "score, run", "AUROC of the file", *rates, "hardware", "date"], rows),
    ]


def rule_rows(data: Data) -> list[list[str]]:
    """Per logged run: A_F and A_C after the last epoch and at the epoch whose A_F is least tied to brightness."""
    rows = []
    for label in RULE_LABELS:
        runs = [r for r in data.brain_curves if r["model"] == label and r.get("normal_brightness_feature")]
        for seed in sorted({int(r["seed"]) for r in runs}):
            run = sorted((r for r in runs if int(r["seed"]) == seed), key=lambda r: int(r["epoch"]))
            last = run[-1]
            picked = min(run, key=lambda r: abs(float(r["normal_brightness_feature"])))
            protocol = [r for r in data.brain.runs([label]) if int(r["seed"]) == seed]
            rows.append(
                [
                    DESCRIPTIONS["braintumor"][label],
                    str(seed),
                    last["epoch"],
                    f3(float(last["auroc_feature"])),
                    f3(float(last["auroc_center"])),
                    picked["epoch"],
                    f"{float(picked['normal_brightness_feature']):.2f}",
                    f3(float(picked["auroc_feature"])),
                    f3(float(picked["auroc_center"])),
                    hardware_of(protocol),
                ]
            )
    return rows


def rule_section(data: Data) -> list[str]:
    """The label-free checkpoint rule on the brain runs that logged its signal."""
    header = ["run", "seed", "last epoch", "A_F", "A_C", "picked epoch", "rho there", "A_F", "A_C", "hardware"]
    return [
        "## T8. A label-free checkpoint rule (brain MRI)",
        "",
        "Every 10 epochs the protocol logs the Spearman correlation rho of A_F with mean intensity among the",
        "validation half's *normal* images (no anomaly label; `image_NormalBrightnessShortcut` in training). The rule",
        "keeps the logged epoch with the smallest |rho|; test-half AUROC there beside the last epoch's (the paper's",
        "protocol). From `docs/results/braintumor_64px_curves.csv`; runs that did not log the signal are left out.",
        "",
        *table(header, rule_rows(data)),
    ]


def gpu_section(data: Data) -> list[str]:
    """The paper's 256 px on one H200."""
    cpu = {"SALAD": (data.brain, B_DEF), "SSIM autoencoder": (data.brain, B_AE)}
    rows = []
    for r in data.gpu:
        protocol, label = cpu[r["model"]]
        rows.append(
            [
                r["model"],
                SCORES[r["score"]],
                *(f3(float(r[k])) for k in ("auroc", "f1", "accuracy", "sensitivity", "specificity")),
                protocol.stat(label, r["score"]).text(True),
            ]
        )
    return [
        "## T9. The paper's 256 px on one GPU (brain MRI, one seed)",
        "",
        "The paper's model (widths 64..512, latent 512, 70x70 PatchGAN), batch 64, 200 epochs, bf16 autocast, seed 0,",
        "test half (600 images); F1 / ACC / SEN / SPE at the best-F1 threshold. No intensity-matched AUROC (these runs",
        "kept no per-image scores). GANomaly stopped after 2 epochs for time: no result. Reports:",
        "`docs/results/gpu/h200_256px_run1.*` and `h200_256px_run2_ae.*`.",
        "",
        *table(["model", "score", "AUROC", "F1", "ACC", "SEN", "SPE", "same model at 64 px on the CPU (T1)"], rows),
        "",
        sources(data.gpu),
    ]


def speed_rows(rows: list[dict[str, str]], benchmark: str) -> list[dict[str, str]]:
    """The rows of one benchmark."""
    return [r for r in rows if r["benchmark"] == benchmark]


def ratio(text: str) -> str:
    """A speed ratio, two decimals."""
    return f"{float(text):.2f}" if text else ""


def speed_section(data: Data) -> list[str]:
    """Training throughput per CPU kind and on the GPU."""
    bench = [
        [
            r["hardware"],
            r["date"],
            r["configuration"],
            r["precision"],
            r["epoch_s"],
            r["train_images_per_s"],
            r["minutes_200_epochs"],
            ratio(r["x_before"]),
            r["notes"],
        ]
        for r in speed_rows(data.speed, "train_throughput.py")
    ]
    end_to_end = [
        [
            r["hardware"],
            r["date"],
            "`anomalib train --config configs/salad_braintumor_64px.yaml`",
            "0",
            r["precision"],
            r["train_images_per_s"],
            minutes_seconds(float(r["wall_s"])),
            r["notes"],
        ]
        for r in speed_rows(data.speed, "anomalib train")
    ]
    for dataset, labels in PRESET_LABELS.items():
        for r in data.protocol(dataset).runs(labels, "feature"):
            if r["train_images_per_s"]:
                name = "brain MRI" if dataset == "braintumor" else "PneumoniaMNIST"
                what = f"protocol run, {DESCRIPTIONS[dataset][r['model']]} ({name})"
                end_to_end.append(
                    [
                        r.get("hardware") or UNKNOWN,
                        r.get("date") or UNKNOWN,
                        what,
                        r["seed"],
                        "",
                        r["train_images_per_s"],
                        "",
                        "",
                    ]
                )
    wide = [
        [
            r["hardware"],
            r["date"],
            r["benchmark"],
            r["image_size"],
            r["batch_size"],
            r["configuration"],
            r["train_images_per_s"],
            ratio(r["x_before"]),
            f"{r['minutes_200_epochs']} min (projected)"
            if r["minutes_200_epochs"]
            else (f"{minutes_seconds(float(r['wall_s']))} (measured)" if r["wall_s"] else ""),
            f"{r['peak_gpu_gib']} GiB"
            if r["peak_gpu_gib"]
            else (f"{r['peak_rss_mib']} MiB" if r["peak_rss_mib"] else ""),
            r["notes"],
        ]
        for r in data.speed
        if r["benchmark"] not in ("train_throughput.py", "anomalib train")
    ]
    commands = unique(r["command"] for r in speed_rows(data.speed, "train_throughput.py"))
    return [
        "## Training speed",
        "",
        "### T10. The 64 px brain MRI preset, per CPU kind (`benchmarks/train_throughput.py`)",
        "",
        "`Engine.fit` on the 1,000 training slices at 64 px, batch 64, all five losses, a validation pass after every",
        "epoch, each configuration in its own process, epochs 2-3 timed (AVX2: epoch 2); the 200-epoch time is",
        "projected (setup + 200 such epochs, an upper bound: the preset validates every 10th epoch). `before`: the",
        "paper's 70x70 PatchGAN (64 channels), JPEGs decoded every epoch; "
        "`patchgan`: the PatchGAN scaled to 64 px (one",
        "layer, 32 channels); `cache`: that and the images decoded once into memory; `fast`: the shipped",
        "`configs/salad_braintumor_64px.yaml` (`cache` and "
        "`train_precision=auto`, which times fp32 against bf16 on CPUs",
        "with native bf16 and keeps bf16 only if it is at least 1.1x faster). `x before` is within one run.",
        "",
        *table(
            [
                "hardware",
                "date",
                "configuration",
                "precision",
                "epoch s",
                "train img/s",
                "200 epochs, min (projected)",
                "x before",
                "notes",
            ],
            bench,
        ),
        "",
        "Commands: " + "; ".join(code(c) for c in commands) + ".",
        "",
        "### T11. 200 epochs end to end",
        "",
        "`anomalib train` of the shipped preset (everything: start-up, cache fill, the precision probe, 200 epochs, 20",
        "validations, the test), and the speed of the preset's 200-epoch protocol runs (T1, T2; validation and the",
        "curves' test scoring every 10 epochs). Runs that shared the machine have no speed in the CSV; the earliest",
        "(2026-12-01) had other jobs beside it for a few minutes, so read it as a lower bound.",
        "",
        *table(["hardware", "date", "run", "seed", "precision", "train img/s", "wall", "notes"], end_to_end),
        "",
        "### T12. The paper's full-width model, on the CPU and on one H200",
        "",
        *table(
            [
                "hardware",
                "date",
                "benchmark",
                "image px",
                "batch",
                "configuration",
                "train img/s",
                "x first row",
                "200 epochs",
                "peak memory",
                "notes",
            ],
            wide,
        ),
        "",
        "Commands: "
        + "; ".join(
            code(c)
            for c in unique(
                r["command"] for r in data.speed if r["benchmark"] not in ("train_throughput.py", "anomalib train")
            )
        )
        + ".",
    ]


def deployment_speed_rows(data: Data) -> list[list[str]]:
    """One row per hardware and configuration, batch 1 and batch 32 side by side."""
    full = [r for r in data.deployment if r["latency_ms"]]
    rows = []
    for hardware, config in unique((r["hardware"], r["configuration"]) for r in full):
        by_batch = {r["batch"]: r for r in full if (r["hardware"], r["configuration"]) == (hardware, config)}
        one, many = by_batch.get("1", {}), by_batch.get("32", {})
        first = one or many
        rows.append(
            [
                hardware,
                first["date"],
                config,
                first["ir_mb"],
                one.get("latency_ms", ""),
                one.get("images_per_s", ""),
                one.get("x_torch", ""),
                many.get("images_per_s", ""),
                many.get("x_torch", ""),
                first["score_diff"],
            ]
        )
    return rows


def ratio_runs(data: Data) -> list[list[str]]:
    """The x torch eager at batch 1 of every run on one machine."""
    runs = [r for r in data.deployment if r["run"] and r["batch"] == "1" and not r["configuration"].startswith("torch")]
    rows = []
    for hardware, config in unique((r["hardware"], r["configuration"]) for r in runs):
        if sum((r["hardware"], r["configuration"]) == (hardware, config) for r in runs) < 2:
            continue
        mine = sorted(
            (r for r in runs if (r["hardware"], r["configuration"]) == (hardware, config)), key=lambda r: int(r["run"])
        )
        values = [float(r["x_torch"]) for r in mine]
        rows.append(
            [
                hardware,
                config,
                " / ".join(f"{r['x_torch']} (run {r['run']})" for r in mine),
                f"{min(values):.2f}-{max(values):.2f}",
            ]
        )
    return rows


def int8_rows(data: Data) -> list[list[str]]:
    """AUROC of each export of one checkpoint, with its change against torch."""
    variants = [
        "torch FP32",
        "OpenVINO FP32 IR, f32",
        "OpenVINO FP32 IR, default (bf16)",
        "INT8, Salad's INT8_PTQ, f32",
        "INT8, Salad's INT8_PTQ, default (bf16)",
        "INT8, anomalib's defaults, f32",
    ]
    rows = []
    for checkpoint in unique(r["checkpoint"] for r in data.int8):
        mine = {r["model"]: r for r in data.int8 if r["checkpoint"] == checkpoint}
        first = next(iter(mine.values()))
        cells = []
        for variant in variants:
            r = mine.get(variant)
            cells.append("" if r is None else r["auroc"] + (f" ({r['auroc_change']})" if r["auroc_change"] else ""))
        rows.append([checkpoint, first["hardware"], first["date"], *cells])
    return rows


def deployment_section(data: Data) -> list[str]:
    """Deployment speed, parity and INT8 accuracy."""
    parity = [
        [r["inferencer"], r["max_abs_score_diff"], r["max_rel_score_diff"], r["max_abs_map_diff"], r["labels"]]
        for r in data.parity
    ]
    return [
        "## Deployment",
        "",
        "### T13. Inference speed (untrained default model, 256x256, pre- and post-processing in the graph)",
        "",
        "`python benchmarks/inference_speed.py`, 2 threads, latency = median per call, images/s = mean throughput, x",
        "torch = against torch eager in the same run, score diff = largest normalised-score difference to torch (an",
        "untrained model with placeholder normalisation, so it overstates "
        "what a trained model sees). Measured with the",
        "plain resize in the graph; since the antialiased resize moved "
        "into the graph (about 17 % more arithmetic for a",
        "256 px input to a 64 px network) these were not measured again. "
        "INT8 is Salad's `INT8_PTQ` (64.7 MB) except on",
        "the EPYC row (anomalib's quantisation, 39.4 MB).",
        "",
        *table(
            [
                "hardware",
                "date",
                "configuration",
                "IR MB",
                "batch 1: ms",
                "img/s",
                "x torch",
                "batch 32: img/s",
                "x torch",
                "score diff",
            ],
            deployment_speed_rows(data),
        ),
        "",
        "x torch eager at batch 1 in every run of the script on the Xeon AMX (absolute speeds drift by about 10 %",
        "between runs there):",
        "",
        *table(["hardware", "configuration", "runs", "range"], ratio_runs(data)),
        "",
        "### T14. INT8 and OpenVINO against torch: AUROC",
        "",
        "`benchmarks/int8_accuracy.py`: the same checkpoint as torch "
        "FP32, as an FP32 IR and as INT8 IRs (calibrated on",
        "the validation split), change against torch in brackets. The brain checkpoints are 20-epoch short runs (T18),",
        "the demo checkpoints the README's synthetic model from the DDP study (T16, T17).",
        "",
        *table(
            [
                "checkpoint",
                "hardware",
                "date",
                "torch FP32",
                "OpenVINO FP32 IR, f32",
                "OpenVINO FP32 IR, default (bf16)",
                "Salad INT8_PTQ, f32",
                "Salad INT8_PTQ, default (bf16)",
                "anomalib INT8, f32",
            ],
            int8_rows(data),
        ),
        "",
        "Commands: " + "; ".join(code(c) for c in unique(r["command"] for r in data.int8)) + ".",
        "",
        "### T15. OpenVINO (f32) against torch on the same checkpoint",
        "",
        *table(["inferencer", "max abs score diff", "max rel score diff", "max abs map diff", "labels"], parity),
        "",
        f"{data.parity[0]['notes']}. {sources(data.parity)}",
        "",
        "### T15a. Scoring an archive: `salad-score` by input format and DICOM transfer syntax",
        "",
        "`python benchmarks/scoring_speed.py`: the same synthetic 256 px scans written in each format, a one-step",
        "64 px model exported to OpenVINO, f32, no overlays, 2 cores, alone on the machine. Reading = the reader",
        "alone; salad-score = a fresh process per input (end to end, and steady state without start-up and",
        "compilation);",
        "x = against uncompressed DICOM in the same run.",
        "",
        *table(
            ["input", "transfer syntax", "read: ms", "x", "salad-score img/s", "x", "steady img/s", "x"],
            [
                [
                    r["input"],
                    r["transfer_syntax"],
                    r["read_ms"],
                    r["read_x_uncompressed"],
                    r["score_images_per_s"],
                    r["score_x_uncompressed"],
                    r["steady_images_per_s"],
                    r["steady_x_uncompressed"],
                ]
                for r in data.scoring
            ],
        ),
        "",
        f"{sources(data.scoring)}",
    ]


def synthetic_section(data: Data) -> list[str]:
    """The README's main job and its seeds."""
    runs = [
        [
            r["date"],
            r["hardware"],
            r["commit"],
            r["alone"],
            minutes_seconds(float(r["wall_s"])),
            r["auroc"],
            r["f1"],
            r["best_f1"],
            r["notes"],
        ]
        for r in data.synthetic
    ]
    seeds = []
    for study, processes in unique((r["study"], r["processes"]) for r in data.synthetic_seeds):
        mine = [r for r in data.synthetic_seeds if (r["study"], r["processes"]) == (study, processes)]
        for r in mine:
            seeds.append(
                [
                    study,
                    processes,
                    r["seed"],
                    r["auroc_feature"],
                    r["auroc_image"],
                    r["auroc_center"],
                    r["hardware"],
                    r["date"],
                ]
            )
        means = [
            spread([float(r[k]) for r in mine]) if all(r[k] for r in mine) else ""
            for k in ("auroc_feature", "auroc_image", "auroc_center")
        ]
        seeds.append([study, processes, "mean ± std", *means, "", ""])
    return [
        "## T16. The README's main job: synthetic scans",
        "",
        "`anomalib train --config configs/salad_synthetic.yaml`: 64 px synthetic scans (400 normal for training; 100",
        "normal + 100 with a lesion for testing, half of them the validation set), narrow SALAD, 10 epochs, batch 32,",
        "seed 0, scored with A_C. Test AUROC; F1 at the fitted threshold and at the best-F1 threshold where reported.",
        "Wall time is a speed only where the run was alone on the machine.",
        "",
        *table(["date", "hardware", "commit", "alone", "wall", "AUROC", "F1", "best F1", "notes"], runs),
        "",
        "### T17. The demo's scores per seed",
        "",
        "`rescore`: three seeds' checkpoints, all 200 test images, raw scores. `ddp`: `benchmarks/ddp_vs_single.py`,",
        "1 process against Lightning DDP over 2 (gloo, batch 16 each, so the global batch and the steps are the same).",
        "",
        *table(["study", "processes", "seed", "A_F", "A_I", "A_C", "hardware", "date"], seeds),
        "",
        "Commands: " + "; ".join(code(c) for c in unique(r["command"] for r in data.synthetic_seeds)) + ".",
    ]


def short_section(data: Data) -> list[str]:
    """Short schedules on real data."""
    rows = [
        [
            r["dataset"],
            r["image_size"],
            r["epochs"],
            r["seed"],
            r["test_images"],
            r["auroc_feature"],
            r["auroc_image"],
            r["auroc_center"],
            r["train_images_per_s"],
            r["hardware"],
            r["date"],
            code(r["command"]),
            r["notes"],
        ]
        for r in data.short
    ]
    return [
        "## T18. Short schedules on real data (not the paper's)",
        "",
        "Narrow SALAD (32..256 channels at 64 px, 32..128 at 32 px) after a few epochs; 600 and 312 are the test",
        "halves, 1,200 and 624 all test images.",
        "",
        *table(
            [
                "dataset",
                "px",
                "epochs",
                "seed",
                "test images",
                "A_F",
                "A_I",
                "A_C",
                "train img/s",
                "hardware",
                "date",
                "command",
                "notes",
            ],
            rows,
        ),
    ]


# ------------------------------------------------------------------------------------------------ findings
def findings(data: Data) -> list[str]:
    """A few sentences, each naming its table, with numbers from the rows."""
    b, p = data.brain, data.pneumonia
    bd = {s: b.stat(B_DEF, s) for s in ("feature", "image", "center")}
    bfp = {s: b.stat(B_FP32, s) for s in ("feature", "center")}
    ae = b.stat(B_AE, "feature")
    gan = b.stat(GAN, "score")
    trivial = {(r["dataset"], r["score"]): float(r["auroc"]) for r in data.trivial}
    bright = {(r["model"], r["score"]): [float(r[k]) for k in r if k.startswith("auroc_x")] for r in data.brightness}
    pd = {s: p.stat(P_DEF, s) for s in ("feature", "image", "center")}
    pn = {s: p.stat([P_NOSSL, P_NOSSL32], s) for s in ("feature", "center")}
    points = operating_points(data)
    brain_points = [pt for pt in points if pt[0] == "braintumor"]
    best5 = max(brain_points, key=lambda pt: pt[3][0])
    best20 = max(brain_points, key=lambda pt: pt[3][2])
    rules = rule_rows(data)
    cli = {r["hardware"]: r for r in speed_rows(data.speed, "anomalib train")}
    noamx = next(
        r
        for r in speed_rows(data.speed, "train_throughput.py")
        if r["hardware"] == "Xeon AVX512-BF16 no AMX" and r["configuration"] == "fast" and r["precision"] == "fp32"
    )
    gpu_train = {r["configuration"]: r for r in speed_rows(data.speed, "gpu_run.py, 200-epoch training")}
    gpu = {(r["model"], r["score"]): float(r["auroc"]) for r in data.gpu}
    dep = {(r["hardware"], r["configuration"], r["batch"]): r for r in data.deployment if r["latency_ms"]}
    int8 = [r for r in data.int8 if r["auroc_change"]]
    salad_int8 = [abs(float(r["auroc_change"])) for r in int8 if "Salad" in r["model"]]
    anomalib_int8 = [float(r["auroc_change"]) for r in int8 if "anomalib" in r["model"]]
    demo = [float(r["auroc"]) for r in data.synthetic]
    short = [r for r in data.short if r["dataset"] == "pneumoniamnist" and r["epochs"] == "3"]
    short_f = [float(r["auroc_feature"]) for r in short]
    short_c = [float(r["auroc_center"]) for r in short if r["auroc_center"]]

    def rng(values: Sequence[float]) -> str:
        return f"{min(values):.3f}-{max(values):.3f}"

    def mm(stat: Stat) -> str:
        return f3(stat.matched_mean) if stat.matched_mean is not None else "n/a"

    def x(hardware: str, config: str) -> str:
        return dep[(hardware, config, "1")]["x_torch"]

    def spread_of(label: str, score: str) -> str:
        values = bright[(label, score)]
        return f"{max(values) - min(values):.2f}"

    robust = {name: data.protocol(name).stat(ROBUST, "center") for name in ("braintumor", "pneumoniamnist")}
    last = {name: data.protocol(name).stat(ROBUST_LAST, "center") for name in ("braintumor", "pneumoniamnist")}
    rb, rp = (robust[name].text(seeds=True) for name in ("braintumor", "pneumoniamnist"))
    lb, lp = (last[name].text(seeds=True) for name in ("braintumor", "pneumoniamnist"))
    robust_points = {
        name: threshold_text(data.protocol(name).runs([ROBUST], "center")) for name in ("braintumor", "pneumoniamnist")
    }
    recipe = (
        [
            f"- **The label-free recipe stays below 0.88 on both datasets (T1, T2).** With"
            f" every choice made from normal images (`configs/model/salad_robust.yaml`: the SSIM weight matched to an"
            f" L1 term, A_C, a moving average of the weights, a 5 % false-positive threshold on held-out training"
            f" normals, the whole test folder scored), A_C is {rb} on brain MRI (GANomaly {gan.text()}) and"
            f" {rp} on PneumoniaMNIST (GANomaly {p.stat(GAN, 'score').text()}). The"
            f" paper's defaults reach A_C {bd['center'].text()} and {pd['center'].text()} on half of each test set."
            f" Scored with the last weights instead of their moving average (`weight_averaging=null`), the same"
            f" recipe reached {lb} and {lp}."
            f" Sensitivity / specificity at the recipe's own threshold:"
            f" {robust_points['braintumor']} on brain MRI, {robust_points['pneumoniamnist']} on PneumoniaMNIST.",
        ]
        if robust["braintumor"].values and robust["pneumoniamnist"].values
        else []
    )
    return [
        "## Findings",
        "",
        *recipe,
        f"- **On brain MRI, SALAD at the paper's defaults is below its own autoencoder baseline (T1).** Its paper score"
        f" A_F ends at {bd['feature'].text()} over {len(bd['feature'].values)} seeds, the SSIM autoencoder's A_F at"
        f" {ae.text()}; SALAD's best score there is A_C, {bd['center'].text()}. anomalib's GANomaly scores"
        f" {gan.text()} ({len(gan.values)} seeds), the best plain AUROC of the three.",
        f"- **The brain split has a brightness shortcut, and SALAD's A_F "
        f"follows it the wrong way (T1, T5, T6).** 'Darker is"
        f" more anomalous' alone scores {f3(trivial[('braintumor', 'minus mean intensity')])} with no training."
        f" Matched for brightness SALAD's A_F is {mm(bd['feature'])} (plain {f3(bd['feature'].mean)}), and"
        f" rescaling only the normal test images moves its A_F by {spread_of(B_FP32, 'feature')} AUROC and its A_C by"
        f" {spread_of(B_FP32, 'center')}. Read every brain MRI AUROC beside its matched value.",
        f"- **On PneumoniaMNIST the paper's ranking holds (T2).** SALAD's A_F is {pd['feature'].text()} and A_C"
        f" {pd['center'].text()} over {len(pd['feature'].values)} seeds, the SSIM autoencoder's A_F"
        f" {p.stat(P_AE, 'feature').text()} and GANomaly {p.stat(GAN, 'score').text()}; the label-free histogram"
        f" distance scores {f3(trivial[('pneumoniamnist', 'histogram L1 to training mean')])} (T5). SALAD's image"
        f" residual A_I is not a score to deploy there: {rng(pd['image'].values)} across seeds.",
        f"- **Table III's order of the feature-space losses holds on brain MRI (T3)**: L_str + L_ct"
        f" {b.stat(B_NOSSL, 'feature').text()} > L_str + L_KL {b.stat(B_KL, 'feature').text()} > L_str alone"
        f" {b.stat(B_LSTR, 'feature').text()} (OCT: 0.9328 > 0.9086 > 0.8886), with larger steps at a far lower level.",
        f"- **Self-supervised restoration (Table IV) brings no gain on either dataset (T3).** Without it A_F is"
        f" {b.stat(B_NOSSL, 'feature').text()} on brain MRI against {bd['feature'].text()} with it, and"
        f" {pn['feature'].text()} against {pd['feature'].text()} on PneumoniaMNIST (the paper: +0.031 with it on OCT)."
        f" Matched for brightness the brain runs are level ({mm(b.stat(B_NOSSL, 'feature'))} and"
        f" {mm(bd['feature'])}): restoration changes how strongly A_F ends up following brightness.",
        f"- **The structure loss's weight matters more than its form (T3).** With L_ct and SSL, L1 at the paper's"
        f" weight gives A_F {b.stat(B_L1, 'feature').text()} and 1 - SSIM at weight 3.7 (a term of L1's size)"
        f" {b.stat(B_W37, 'feature').text()} with A_C {b.stat(B_W37, 'center').text()}, the best SALAD scores on this"
        f" split; the paper's 1 - SSIM at weight 10 gives {bd['feature'].text()}. On Table III's own footing SSIM is"
        f" above L1 ({b.stat(B_LSTR, 'feature').text()} against {b.stat(B_L1T3, 'feature').text()}), as in the paper.",
        f"- **A_C is SALAD's steadiest score here, not A_F as in the paper's Table V (T4).** Brain MRI: A_C"
        f" {bd['center'].text()}, A_F {bd['feature'].text()}, A_I {bd['image'].text()}; PneumoniaMNIST: A_C"
        f" {pd['center'].text()}, A_F {pd['feature'].text()}. The SSIM autoencoder's A_C is inverted on brain MRI"
        f" ({b.stat(B_AE, 'center').text()}).",
        f"- **bf16 autocast costs no AUROC on the brain preset (T1)**: A_F {bd['feature'].text()} in bf16 against"
        f" {bfp['feature'].text()} in fp32, A_C {bd['center'].text()} "
        f"against {bfp['center'].text()}, three seeds each.",
        f"- **No brain MRI score is usable at a low false-positive rate (T7).** At 5 % false positives the best score"
        f" ({best5[1]}) finds {best5[3][0] * 100:.0f} % of the tumour slices; at 20 % the best ({best20[1]}) finds"
        f" {best20[3][2] * 100:.0f} %."
        f" Choose a threshold from the ROC, not from the AUROC.",
        f"- **A label-free checkpoint rule rescues A_F on some runs (T8)**: at the epoch whose A_F is least tied to"
        f" brightness among held-out normal images, A_F is {rng([float(r[7]) for r in rules])} on the logged runs,"
        f" against {rng([float(r[3]) for r in rules])} after the last epoch; A_C at that epoch can be lower"
        f" ({rng([float(r[8]) for r in rules])}).",
        f"- **Training speed (T10-T12).** `anomalib train` of the 64 px preset runs the paper's 200 epochs in"
        f" {minutes_seconds(float(cli['Xeon AMX']['wall_s']))} on 2 cores of a Xeon with AMX and"
        f" {minutes_seconds(float(cli['EPYC AVX512-BF16']['wall_s']))} on an EPYC with AVX512-BF16 (bf16 chosen by"
        f" measurement); on the Xeon without AMX, where the probe keeps fp32, the benchmark runs"
        f" {noamx['train_images_per_s']} images/s ({noamx['minutes_200_epochs']} min projected for 200 epochs)."
        f" One H200 trains the paper's 256 px SALAD for 200 epochs in"
        f" {minutes_seconds(float(gpu_train['SALAD']['wall_s']))} (bf16).",
        f"- **256 px, one seed each (T9)**: SALAD A_F {f3(gpu[('SALAD', 'feature')])} and A_C"
        f" {f3(gpu[('SALAD', 'center')])}, the SSIM autoencoder A_F {f3(gpu[('SSIM autoencoder', 'feature')])} and A_I"
        f" {f3(gpu[('SSIM autoencoder', 'image')])}: their best scores "
        f"are level, and both are below their 64 px means.",
        f"- **Deployment (T13, T14).** At batch 1 OpenVINO at its default precision runs"
        f" {x('Xeon AMX', 'OpenVINO FP32 IR, default=bf16')}x torch eager on the Xeon AMX and the INT8 IR"
        f" {x('Xeon AMX', 'OpenVINO INT8 IR, f32')}x (f32 hint); on AVX2 {x('AVX2', 'OpenVINO FP32 IR, default=f32')}x"
        f" and {x('AVX2', 'OpenVINO INT8 IR, f32')}x. Salad's `INT8_PTQ` changed AUROC by at most"
        f" {max(salad_int8):.4f} on the {len(salad_int8)} measurements; anomalib's default quantisation lost up to"
        f" {-min(anomalib_int8):.4f} (the A_C demo models fall to chance)."
        " Check a trained model with `benchmarks/int8_accuracy.py` before deploying INT8.",
        f"- **The README's demo (T16, T17)**: {len(demo)} runs scored test AUROC {rng(demo)} on"
        f" {len(unique(r['hardware'] for r in data.synthetic))} hardware kinds; the same seed repeats only on one"
        f" machine. Short schedules say little (T18): after 3 epochs on PneumoniaMNIST A_F ranged {rng(short_f)} by"
        f" seed and CPU, A_C {rng(short_c)}.",
    ]


def closing_sections() -> list[str]:
    """Figures and what has not been measured."""
    lines = [
        "## Figures",
        "",
        "Drawn by `examples/figures.py` (`curves`, `roc`) from the CSVs and score files above.",
        "",
    ]
    for file, caption in FIGURES:
        lines += [f"![{caption}](figures/{file})", ""]
    lines += ["More: " + "; ".join(f"[{caption}](figures/{file})" for file, caption in MORE_FIGURES) + ".", ""]
    lines += [
        "## Not measured",
        "",
        "- At 256 px: more than one seed, GANomaly, PneumoniaMNIST, the intensity-matched AUROC.",
        "- The paper's own datasets (OCT, the Kermany chest X-rays): configs exist, no rows yet.",
        "- Multi-GPU DDP (NCCL), a 200-epoch GPU memory soak, `torch.compile` on the GPU.",
        "- Deployment speed with the antialiased resize in the graph (T13 predates it).",
    ]
    return lines


def render() -> str:
    """The whole of docs/results.md."""
    data = Data.load()
    parts: list[Callable[[Data], list[str]]] = [
        lambda d: dataset_section(d, "braintumor"),
        lambda d: dataset_section(d, "pneumoniamnist"),
        ablation_section,
        trivial_section,
        brightness_section,
        operating_section,
        rule_section,
        gpu_section,
        speed_section,
        deployment_section,
        synthetic_section,
        short_section,
        findings,
    ]
    lines = header_section()
    for part in parts:
        lines += ["", *part(data)]
    lines += ["", *closing_sections()]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Write docs/results.md, or check it."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/results.md differs from the CSVs")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not DOC.is_file() or DOC.read_text() != text:
            sys.exit(f"docs/results.md is out of date with docs/results/*.csv: run `{COMMAND}`")
        print("docs/results.md is up to date")
        return
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(ROOT)} ({text.count(chr(10))} lines)")


if __name__ == "__main__":
    main()
