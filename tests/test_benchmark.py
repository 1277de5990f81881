"""Tests of anomalib_salad.evaluation.benchmark: the smoke grid end to end on CPU, the shipped configs, the parts."""

import importlib.util
import logging
import math
import os
import subprocess
import sys
from collections.abc import Generator
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import yaml
from anomalib.data import ImageBatch
from anomalib.models import ALLOWED_MODULES, UnknownModelError
from anomalib.pipelines.components.utils import get_iterator_from_grid_dict
from anomalib.post_processing import PostProcessor
from lightning.pytorch import LightningModule, Trainer
from torchmetrics.functional.classification import binary_auroc

from anomalib_salad import Salad
from anomalib_salad.evaluation.benchmark import SaladBenchmark
from anomalib_salad.evaluation.benchmark_job import build_datamodule, build_model, summarize
from anomalib_salad.evaluation.metrics import AUROC
from anomalib_salad.model.post_processing import RankPreservingPostProcessor

from .conftest import TINY

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "benchmark"
SHARED_DATA = REPO.parent / "shared" / "data"

PAPER_COLUMNS = [
    "image_AUROC",
    "image_BestF1Score",
    "image_BestF1Accuracy",
    "image_BestF1Sensitivity",
    "image_BestF1Specificity",
    "image_F1Score",
    "image_Accuracy",
    "image_Sensitivity",
    "image_Specificity",
]
# anomalib's BenchmarkJob columns, which results.csv keeps.
ANOMALIB_COLUMNS = [
    "accelerator",
    "job_duration",
    "fit_duration",
    "test_duration",
    "seed",
    "model.class_path",
    "data.class_path",
]
THROUGHPUT_COLUMNS = ["train_images", "train_time", "train_throughput", "test_images", "test_time", "test_throughput"]


TINY_SALAD = {"image_size": 32, "base_channels": 8, "max_channels": 16, "latent_dim": 8}


def load_config(name: str) -> dict:
    return yaml.safe_load((CONFIGS / name).read_text())


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    """Run the smoke grid with the command users type, from a scratch working directory."""
    cwd = tmp_path_factory.mktemp("smoke")
    output_dir = cwd / "out"
    # One intra-op thread: on a shared 2-core machine two spinning OpenMP threads per process can be ~50x slower.
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "anomalib_salad.evaluation.benchmark",
        "--config",
        str(CONFIGS / "smoke_synthetic.yaml"),
        "--output_dir",
        str(output_dir),
    ]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)
    return result, output_dir


def test_smoke_grid_runs(smoke_run: tuple[subprocess.CompletedProcess, Path]) -> None:
    result, output_dir = smoke_run
    log = (output_dir / "pipeline.log").read_text() if (output_dir / "pipeline.log").exists() else ""
    assert result.returncode == 0, result.stderr[-3000:] + log[-3000:]
    assert "Results:" in result.stdout


def test_smoke_results_csv(smoke_run: tuple[subprocess.CompletedProcess, Path]) -> None:
    _, output_dir = smoke_run
    results = pd.read_csv(output_dir / "results.csv")
    config = load_config("smoke_synthetic.yaml")["benchmark"]
    seeds = config["seed"]["grid"]
    models = config["model"]["grid"]
    assert len(results) == len(seeds) * len(models)
    for column in ANOMALIB_COLUMNS + THROUGHPUT_COLUMNS + PAPER_COLUMNS:
        assert column in results, column
    # The external class path was accepted and its rows are there, next to anomalib's GANomaly.
    assert sorted(results["model.class_path"].unique()) == ["Ganomaly", "anomalib_salad.Salad"]
    assert sorted(results["seed"].unique()) == seeds
    assert (results["train_throughput"] > 0).all()
    assert (results["test_throughput"] > 0).all()
    data = config["data"]["init_args"]
    assert (results["train_images"] == data["num_train"] * config["trainer"]["max_epochs"]).all()
    assert (results["test_images"] == data["num_test"]).all()  # half of 2 x num_test is the validation set
    for column in PAPER_COLUMNS:
        assert results[column].between(0, 1).all(), column


def test_smoke_scores_match_csv(smoke_run: tuple[subprocess.CompletedProcess, Path]) -> None:
    """The per-image raw scores reproduce the CSV's AUROC: the post-processing kept the ranking."""
    _, output_dir = smoke_run
    results = pd.read_csv(output_dir / "results.csv")
    for _, row in results.iterrows():
        scores = pd.read_csv(output_dir / row["scores_file"])
        assert len(scores) == row["test_images"]
        auroc = AUROC(fields=["pred_score", "gt_label"])
        auroc.update(
            ImageBatch(
                image=torch.zeros(len(scores), 3, 4, 4),
                pred_score=torch.tensor(scores["pred_score"].to_numpy()),
                gt_label=torch.tensor(scores["gt_label"].to_numpy()),
            )
        )
        assert auroc.compute().item() == pytest.approx(row["image_AUROC"], abs=1e-6)
        accuracy = (scores["pred_label"] == scores["gt_label"]).mean()
        assert accuracy == pytest.approx(row["image_Accuracy"], abs=1e-6)


def test_smoke_summary_and_checkpoint(smoke_run: tuple[subprocess.CompletedProcess, Path]) -> None:
    _, output_dir = smoke_run
    results = pd.read_csv(output_dir / "results.csv")
    summary = pd.read_csv(output_dir / "summary.csv")
    assert len(summary) == 2
    assert (summary["runs"] == 2).all()
    for column in ["image_AUROC", "image_BestF1Score", "train_throughput", "test_throughput"]:
        assert f"{column}_mean" in summary
        assert f"{column}_std" in summary
    salad = results[results["model.class_path"] == "anomalib_salad.Salad"]
    row = summary[summary["model.class_path"] == "anomalib_salad.Salad"].iloc[0]
    assert row["image_AUROC_mean"] == pytest.approx(salad["image_AUROC"].mean())
    assert row["image_AUROC_std"] == pytest.approx(salad["image_AUROC"].std(ddof=1))
    # SALAD's entry asks for a checkpoint; it reloads with the fitted threshold.
    checkpoint = output_dir / salad["checkpoint"].iloc[0]
    model = Salad.load_from_checkpoint(checkpoint, map_location="cpu")
    assert model.model.image_size == 32
    assert float(model.post_processor.image_threshold) == pytest.approx(salad["image_FittedThreshold"].iloc[0])
    assert results.loc[results["model.class_path"] == "Ganomaly", "checkpoint"].isna().all()


def test_models_and_data_build_from_any_class_path_without_touching_anomalibs_allow_list() -> None:
    before = set(ALLOWED_MODULES)
    # The last is the module path of the earlier flat layout, which still names the class (MOVED_MODULES).
    for class_path in (
        "anomalib_salad.Salad",
        "anomalib_salad.model.lightning_model.Salad",
        "anomalib_salad.lightning_model.Salad",
    ):
        assert isinstance(build_model({"class_path": class_path, "init_args": TINY_SALAD}), Salad)
    model = build_model(
        {
            "class_path": "Ganomaly",
            "name": "GANomaly",
            "image_size": 32,
            "init_args": {"n_features": 8, "latent_vec_size": 8},
        }
    )
    assert tuple(model.input_size) == (32, 32)
    # A top-level image_size rebuilds the pre-processor; Salad's antialias setting still reaches it.
    for antialias in (True, False):
        init_args = {**TINY_SALAD, "antialias": antialias}
        config = {"class_path": "anomalib_salad.Salad", "image_size": 48, "init_args": init_args}
        resize = build_model(config).pre_processor.transform.transforms[0]
        assert (tuple(resize.size), resize.antialias) == ((48, 48), antialias)
    assert (
        type(
            build_datamodule({"class_path": "Folder", "init_args": {"name": "x", "root": "x", "normal_dir": "x"}})
        ).__name__
        == "Folder"
    )
    assert set(ALLOWED_MODULES) == before
    # Classes are checked before they are called: nothing but a model (or datamodule) is built from a config.
    with pytest.raises(UnknownModelError, match="not a subclass of AnomalibModule"):
        build_model({"class_path": "pathlib.Path", "init_args": {}})
    with pytest.raises(UnknownModelError, match="names no class"):
        build_model({"class_path": "os.path.join", "image_size": 32})
    with pytest.raises(UnknownModelError, match="cannot import"):
        build_model({"class_path": "no_such_package.Model"})
    with pytest.raises(UnknownModelError, match="not a subclass of AnomalibDataModule"):
        build_datamodule({"class_path": "anomalib_salad.Salad", "init_args": {}})
    # Plain Python arguments, not OmegaConf nodes, reach the model (and its checkpoint's hyper-parameters).
    model = build_model({"class_path": "anomalib_salad.Salad", "init_args": {**TINY_SALAD, "feature_disc_hidden": [8]}})
    assert type(model.hparams["feature_disc_hidden"]) is list


def test_rank_preserving_post_processor_keeps_labels_and_order() -> None:
    raw = torch.tensor([-5.0, 0.1, 0.4, 0.5, 0.9, 3.0, 9.0])
    batches = []
    for processor in (PostProcessor(), RankPreservingPostProcessor()):
        processor.image_min.fill_(0.0)
        processor.image_max.fill_(1.0)
        processor._image_threshold.fill_(0.45)
        batch = ImageBatch(image=torch.zeros(len(raw), 3, 4, 4), pred_score=raw.clone())
        processor.post_process_batch(batch)
        batches.append(batch)
    clamped, preserved = batches
    assert torch.equal(clamped.pred_label, preserved.pred_label)
    assert torch.equal(preserved.pred_label, raw > 0.45)
    assert clamped.pred_score[-1] == clamped.pred_score[-2] == 1.0  # anomalib's clamp ties 3.0 and 9.0
    assert torch.all(preserved.pred_score.diff() > 0)
    assert torch.all((preserved.pred_score > 0) & (preserved.pred_score < 1))
    offset = raw - 0.45  # range 1
    assert torch.allclose(preserved.pred_score, 0.5 + 0.5 * offset / (1 + offset.abs()))


def test_summarize_by_hand() -> None:
    results = pd.DataFrame(
        {
            "accelerator": ["cpu"] * 4,
            "model.class_path": ["A", "A", "B", "B"],
            "model.init_args.k": [1, 1, None, None],  # B lacks A's argument
            "seed": [0, 1, 0, 1],
            "image_AUROC": [0.5, 0.7, 0.9, 0.9],
            "run_id": ["a0", "a1", "b0", "b1"],
        }
    )
    summary = summarize(results).set_index("model.class_path")
    assert summary.loc["A", "image_AUROC_mean"] == pytest.approx(0.6)
    assert summary.loc["A", "image_AUROC_std"] == pytest.approx(math.sqrt(0.02))  # ((-0.1)^2 + 0.1^2) / (2 - 1)
    assert summary.loc["B", "image_AUROC_std"] == pytest.approx(0.0)
    assert summary.loc["B", "seeds"] == "0 1"
    assert "run_id_mean" not in summary


@pytest.fixture
def smoke_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Generator[dict, None, None]:
    """The smoke grid's config, run from ``tmp_path`` with one torch thread (jobs run in this process)."""
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_config("smoke_synthetic.yaml")
    torch.set_num_threads(threads)


def test_a_broken_grid_point_fails_alone(tmp_path: Path, smoke_config: dict) -> None:
    """A point whose model cannot be built fails; the others still run and are saved; the run reports failure."""
    config = smoke_config
    good = config["benchmark"]["model"]["grid"][0]
    bad = {**good, "name": "broken", "init_args": {**good["init_args"], "image_size": 33}}
    config["benchmark"]["model"] = {"grid": [bad, good]}
    config["benchmark"]["seed"] = 0
    with pytest.raises(RuntimeError, match="failing jobs"):
        SaladBenchmark(output_dir=tmp_path / "out").run_config(config, redirect=False)
    results = pd.read_csv(tmp_path / "out" / "results.csv")
    assert list(results["model.name"]) == ["SALAD"]


def test_threshold_is_fitted_without_validation_in_fit(tmp_path: Path, smoke_config: dict) -> None:
    """anomalib's Engine.test never validates a one-class model; the job does when fit did not."""
    config = smoke_config
    config["benchmark"]["model"] = config["benchmark"]["model"]["grid"][0]
    config["benchmark"]["seed"] = 0
    config["benchmark"]["trainer"] = {"max_epochs": 1, "check_val_every_n_epoch": 3}
    SaladBenchmark(output_dir=tmp_path / "out").run_config(config, redirect=False)
    results = pd.read_csv(tmp_path / "out" / "results.csv")
    assert results["image_FittedThreshold"].notna().all()
    scores = pd.read_csv(tmp_path / "out" / results["scores_file"].iloc[0])
    assert scores["pred_label"].isin([0, 1]).all()


@pytest.mark.parametrize(
    ("name", "jobs"),
    [("smoke_synthetic.yaml", 4), ("braintumor.yaml", 9), ("pneumoniamnist.yaml", 9), ("ablation_braintumor.yaml", 27)],
)
def test_config_grids_build(name: str, jobs: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every distinct model and datamodule of each shipped config can be built (nothing is trained)."""
    monkeypatch.chdir(tmp_path)  # create_dirs and relative roots land here
    config = load_config(name)
    for folder in config.get("create_dirs", []):
        Path(folder).mkdir(parents=True, exist_ok=True)
    points = list(get_iterator_from_grid_dict(config["benchmark"]))
    assert len(points) == jobs
    seen: set[str] = set()
    for point in points:
        key = yaml.safe_dump(point["model"])
        if key in seen:
            continue
        seen.add(key)
        model = build_model(point["model"])
        assert model.trainer_arguments.get("max_epochs") is None  # the config's schedule applies
    assert build_datamodule(points[0]["data"]) is not None
    assert config["benchmark"]["trainer"]["max_epochs"] >= 1


def test_ablation_grid_covers_tables_three_to_five() -> None:
    grid = load_config("ablation_braintumor.yaml")["benchmark"]["model"]["grid"]
    defaults = {
        "structure_loss": "ssim",
        "latent_loss": "center",
        "center_weight": 10.0,
        "restoration_weight": 10.0,
        "restoration_shared_layers": 0,
        "score": "feature",
    }
    variants = {tuple(sorted({**defaults, **entry["init_args"]}.items())) for entry in grid}
    assert len(variants) == len(grid) == 9

    def has(**changes: object) -> bool:
        return tuple(sorted({**defaults, **changes}.items())) in variants

    no_ssl = {"restoration_weight": 0.0}
    assert has(structure_loss="l1", center_weight=0.0, **no_ssl)  # Table III
    assert has(center_weight=0.0, **no_ssl)
    assert has(latent_loss="kl", **no_ssl)
    assert has(**no_ssl)  # Lstr + Lct, Table IV's w/o SSL
    for shared in (-1, 2, 0):  # Table IV
        assert has(restoration_shared_layers=shared)
    for score in ("feature", "image", "center"):  # Table V
        assert has(score=score)


@pytest.mark.skipif(not (SHARED_DATA / "braintumor").is_dir(), reason="needs ../shared/data/braintumor")
def test_braintumor_config_finds_the_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # the configs' data roots are relative to the repository
    datamodule = build_datamodule(load_config("braintumor.yaml")["benchmark"]["data"])
    datamodule.setup()
    assert len(datamodule.train_data) == 1000
    assert len(datamodule.val_data) + len(datamodule.test_data) == 1200


def test_curve_figure_averages_seeds_per_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # examples/figures.py curves: one panel per model, the mean over seeds of each score at each epoch.
    script = Path(__file__).parents[1] / "examples" / "figures.py"
    spec = importlib.util.spec_from_file_location("salad_figures", script)
    figures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figures)
    rows = [
        {
            "model": model,
            "seed": seed,
            "epoch": epoch,
            "auroc_feature": 0.5 + 0.1 * seed + 0.01 * epoch,
            "auroc_image": 0.4,
            "auroc_center": 0.6,
            "latent_std": 0.01,
            "center_norm": 1.0,
        }
        for model in ("salad", "autoencoder")
        for seed in (0, 1)
        for epoch in (10, 20)
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "curves.csv", index=False)
    drawn = {}
    monkeypatch.setattr(figures, "_save", lambda fig, out: drawn.setdefault("fig", fig) and out)
    figures.figure_curves([tmp_path / "curves.csv"], tmp_path / "curves.png")
    fig = drawn["fig"]
    assert [ax.get_title().split(" ")[0] for ax in fig.axes[:2]] == ["salad", "autoencoder"]
    feature = fig.axes[0].lines[0]
    assert list(feature.get_xdata()) == [10, 20]
    assert list(feature.get_ydata()) == pytest.approx([0.65, 0.75])  # seeds 0 and 1 averaged

    # --models picks and orders the panels, which wrap into rows; a model with no rows is named in the error.
    drawn.clear()
    figures.figure_curves([tmp_path / "curves.csv"], tmp_path / "c.png", ["autoencoder", "salad"], columns=1)
    titled = [ax.get_title().split(" ")[0] for ax in drawn["fig"].axes if ax.get_title()]
    assert titled == ["autoencoder", "salad"]
    assert drawn["fig"].axes[0].get_gridspec().get_geometry() == (4, 1)  # two models, AUROC and health rows each
    with pytest.raises(ValueError, match=r"no curve rows for model\(s\) \['ganomaly'\]"):
        figures.figure_curves([tmp_path / "curves.csv"], tmp_path / "c.png", ["ganomaly"])


def test_protocol_rows_of_different_models_share_one_file(tmp_path: Path) -> None:
    # paper_protocol.py appends GANomaly's one score and SALAD's three to one curve file: no value may shift column.
    spec = importlib.util.spec_from_file_location(
        "paper_protocol", Path(__file__).parents[1] / "benchmarks" / "paper_protocol.py"
    )
    protocol = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(protocol)
    path = tmp_path / "curves.csv"
    protocol._append(path, [{"model": "salad", "epoch": 10, "auroc_feature": 0.7}], ["model", "epoch", "auroc_feature"])
    protocol._append(path, [{"model": "ganomaly", "epoch": 10, "auroc_score": 0.2}], ["model", "epoch", "auroc_score"])
    protocol._append(path, [{"model": "salad", "epoch": 20, "auroc_feature": 0.8}], ["model", "epoch", "auroc_feature"])
    rows = pd.read_csv(path)
    assert list(rows.columns) == ["model", "epoch", "auroc_feature", "auroc_score"]
    assert rows["auroc_feature"].tolist()[::2] == [0.7, 0.8]
    assert rows.loc[1, "auroc_score"] == 0.2
    assert pd.isna(rows.loc[1, "auroc_feature"])


def _load_benchmark_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return module


def test_brightness_response_moves_a_brightness_score_and_only_the_normals() -> None:
    # A stand-in model whose every score is the image's mean intensity; normals at 0.5, anomalies at 0.4..0.7.
    rescore = _load_benchmark_script("rescore")
    seen: list[torch.Tensor] = []

    class MeanIntensity:
        score = None

        def __call__(self, images: torch.Tensor) -> SimpleNamespace:
            seen.append(images)
            return SimpleNamespace(pred_score=images.mean(dim=(1, 2, 3)))

    model = SimpleNamespace(pre_processor=SimpleNamespace(transform=lambda images: images), model=MeanIntensity())
    levels = torch.tensor([0.5, 0.5, 0.5, 0.4, 0.6, 0.7])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    batch = SimpleNamespace(image=levels.view(-1, 1, 1, 1).expand(-1, 3, 4, 4).clone(), gt_label=labels)
    table = rescore.brightness_response(model, [batch], ["feature"], [1.0, 0.5, 2.0])
    # x1: 0.5 beats 0.4 only -> each normal loses to 2 of 3 anomalies: AUROC 6/9. x0.5 (0.25): all anomalies above.
    # x2 (clipped to 1.0): every normal above every anomaly: 0.
    assert table["feature"] == pytest.approx({1.0: 6 / 9, 0.5: 1.0, 2.0: 0.0})
    assert torch.equal(seen[0][3:], seen[1][3:])  # anomalous images untouched
    assert seen[2].max() == 1.0  # clipped, as an image cannot be brighter than white


def _tiny_protocol_config(tiny_scans: Path, tmp_path: Path) -> Path:
    """A SALAD protocol config on the tiny scans, written to ``tmp_path / "config.yaml"``."""
    config = {
        "model": {"init_args": {**TINY, "feature_disc_hidden": list(TINY["feature_disc_hidden"])}},
        "data": {
            "init_args": {
                "name": "tiny",
                "root": str(tiny_scans),
                "normal_dir": "train/normal",
                "abnormal_dir": "test/abnormal",
                "normal_test_dir": "test/normal",
                "train_batch_size": 16,
                "eval_batch_size": 16,
                "num_workers": 0,
                "val_split_mode": "from_test",
                "val_split_ratio": 0.5,
                "seed": 0,
            }
        },
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    return tmp_path / "config.yaml"


@pytest.mark.parametrize("cache", ["true", "false"])  # the validation split cached by the model, or not
def test_paper_protocol_end_to_end_with_label_free_rule(
    cache: str, tiny_scans: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_path = _tiny_protocol_config(tiny_scans, tmp_path)
    protocol, tables = _load_benchmark_script("paper_protocol"), _load_benchmark_script("protocol_tables")
    argv = ["paper_protocol.py", "--config", str(config_path), "--epochs", "2", "--every", "1"]
    argv += ["--csv", str(tmp_path / "rows.csv"), "--curve-csv", str(tmp_path / "curves.csv")]
    argv += ["--work-dir", str(tmp_path / "work"), "--set", "antialias=true", f"cache_images={cache}"]
    monkeypatch.setattr(sys, "argv", argv)
    protocol.main()

    rows, curves = pd.read_csv(tmp_path / "rows.csv"), pd.read_csv(tmp_path / "curves.csv")
    assert rows["score"].tolist() == ["feature", "image", "center"]
    assert rows["model"].unique().tolist() == [f"salad antialias=true cache_images={cache}"]
    assert curves["epoch"].tolist() == [1, 2]
    assert rows["auroc_intensity_matched"].between(0, 1).all()
    assert curves[["matched_feature", "matched_image", "matched_center"]].stack().between(0, 1).all()
    # L_str is 1 - SSIM of held-out normal images: finite, positive, and measured on images the model never fit.
    assert curves["heldout_normal_str"].between(1e-4, 2).all()
    table = tables.checkpoint_table(curves)
    picked = int(curves.loc[curves["heldout_normal_str"].idxmin(), "epoch"])
    cells = [cell.strip() for cell in table.splitlines()[2].strip("|").split("|")]
    assert cells[:3] == [f"salad antialias=true cache_images={cache}", "0", "2"]
    assert cells[6] == str(picked)  # model, seed, last epoch, its A_F / A_I / A_C, then the picked epoch
    if cache == "false":
        return
    # An interrupted run continues from its checkpoint: only the new epoch gets a curve row, and a second set of rows.
    (checkpoint,) = (tmp_path / "work").rglob("*.ckpt")
    argv[argv.index("--epochs") + 1] = "3"
    monkeypatch.setattr(sys, "argv", [*argv, "--resume", str(checkpoint)])
    protocol.main()
    curves = pd.read_csv(tmp_path / "curves.csv")
    assert curves["epoch"].tolist() == [1, 2, 3]
    rows = pd.read_csv(tmp_path / "rows.csv")
    assert rows["epochs"].tolist() == [2, 2, 2, 3, 3, 3]
    assert rows["train_images_per_s"].gt(0).all()


def test_paper_protocol_writes_no_final_rows_for_a_stopped_run(
    tiny_scans: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    protocol = _load_benchmark_script("paper_protocol")

    class StopAfterOneEpoch(protocol.ScoreCurves):
        def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
            super().on_train_epoch_end(trainer, pl_module)
            trainer.should_stop = True  # as an early stop would

    monkeypatch.setattr(protocol, "ScoreCurves", StopAfterOneEpoch)
    argv = ["paper_protocol.py", "--config", str(_tiny_protocol_config(tiny_scans, tmp_path)), "--epochs", "3"]
    argv += ["--every", "1", "--csv", str(tmp_path / "rows.csv"), "--curve-csv", str(tmp_path / "curves.csv")]
    monkeypatch.setattr(sys, "argv", [*argv, "--work-dir", str(tmp_path / "work")])
    with pytest.raises(SystemExit, match="stopped after epoch 1 of 3: no final rows"):
        protocol.main()
    # What it measured stays; nothing claims the full schedule.
    assert pd.read_csv(tmp_path / "curves.csv")["epoch"].tolist() == [1]
    assert not (tmp_path / "rows.csv").exists()


def test_paper_protocol_trains_ganomaly_from_the_image_cache(
    tiny_scans: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    data = {
        "name": "tiny",
        "root": str(tiny_scans),
        "normal_dir": "train/normal",
        "abnormal_dir": "test/abnormal",
        "normal_test_dir": "test/normal",
        "train_batch_size": 16,
        "eval_batch_size": 16,
        "num_workers": 0,
        "val_split_mode": "from_test",
        "val_split_ratio": 0.5,
        "seed": 0,
    }
    (tmp_path / "config.yaml").write_text(
        yaml.safe_dump({"model": {"init_args": {"image_size": 32}}, "data": {"init_args": data}})
    )
    argv = ["paper_protocol.py", "--config", str(tmp_path / "config.yaml"), "--model", "ganomaly", "--epochs", "1"]
    argv += ["--csv", str(tmp_path / "rows.csv"), "--curve-csv", str(tmp_path / "curves.csv")]
    argv += ["--scores-out", str(tmp_path / "scores"), "--every", "1"]  # validating writes the checkpoint
    monkeypatch.setattr(sys, "argv", [*argv, "--work-dir", str(tmp_path / "work")])
    with caplog.at_level(logging.INFO, logger="anomalib_salad.data.cache"):
        _load_benchmark_script("paper_protocol").main()
    assert "Image cache: 40 train images" in caplog.text
    rows, curves = pd.read_csv(tmp_path / "rows.csv"), pd.read_csv(tmp_path / "curves.csv")
    assert rows["score"].tolist() == ["score"]
    assert rows["auroc"].between(0, 1).all()
    # The per-image scores behind the row: the same AUROC, from files figures.py draws.
    scores = pd.read_csv(tmp_path / "scores" / "score.csv")
    assert len(scores) == 20  # the test half of the 40 tiny test scans
    assert scores["image_path"].map(lambda path: Path(path).is_file()).all()
    auroc = binary_auroc(torch.tensor(scores["pred_score"].values), torch.tensor(scores["gt_label"].values))
    assert float(auroc) == pytest.approx(rows["auroc"].iloc[0], abs=1e-4)
    assert curves["auroc_score"].between(0, 1).all()

    # rescore.py loads the checkpoint and gives the same per-image scores from the image files (the cache's pixels
    # are the pre-processor's), so GANomaly gets the same brightness test as SALAD.
    (checkpoint,) = (tmp_path / "work").rglob("model.ckpt")
    argv = ["rescore.py", "--model", "ganomaly", "--ckpt", str(checkpoint), "--root", str(tiny_scans)]
    monkeypatch.setattr(sys, "argv", [*argv, "--scores-out", str(tmp_path / "rescored"), "--normal-brightness", "0.5"])
    _load_benchmark_script("rescore").main()
    rescored = pd.read_csv(tmp_path / "rescored" / "score.csv").set_index("image_path")["pred_score"]
    assert len(rescored) == 40
    expected = scores.set_index("image_path")["pred_score"]
    assert rescored[expected.index].to_numpy() == pytest.approx(expected.to_numpy(), rel=1e-4, abs=1e-6)
    # A checkpoint of another model, or none, is named as such instead of failing deep inside load_state_dict.
    torch.save({"state_dict": {"model.encoder.weight": torch.zeros(1)}}, tmp_path / "other.ckpt")
    with pytest.raises(SystemExit, match=r"other\.ckpt: not a GANomaly checkpoint"):
        _load_benchmark_script("rescore").load_model(tmp_path / "other.ckpt", "ganomaly")
    with pytest.raises(SystemExit, match="no checkpoint at"):
        _load_benchmark_script("rescore").load_model(tmp_path / "missing.ckpt", "ganomaly")


def test_label_free_rule_picks_the_lowest_heldout_loss() -> None:
    tables = _load_benchmark_script("protocol_tables")
    curves = pd.DataFrame(
        {
            "model": ["salad"] * 3 + ["ganomaly"],
            "seed": [0, 0, 0, 0],
            "epoch": [10, 20, 30, 10],
            "auroc_feature": [0.6, 0.8, 0.5, None],
            "heldout_normal_str": [0.3, 0.1, 0.2, None],
        }
    )
    lines = tables.checkpoint_table(curves).splitlines()
    assert lines[0] == "| model | seed | last epoch | A_F | picked epoch | A_F |"
    assert lines[2:] == ["| salad | 0 | 30 | 0.500 | 20 | 0.800 |"]  # GANomaly logs no held-out loss: left out
    assert tables.checkpoint_table(curves.drop(columns="heldout_normal_str")) == ""
    # The brightness rule reads the correlation's size, whatever its sign.
    curves["normal_brightness_feature"] = [0.5, 0.3, -0.1, None]
    lines = tables.checkpoint_table(curves, "normal_brightness_feature").splitlines()
    assert lines[2:] == ["| salad | 0 | 30 | 0.500 | 30 | 0.500 |"]
    curves["normal_brightness_feature"] = [0.5, -0.05, 0.1, None]
    assert tables.checkpoint_table(curves, "normal_brightness_feature").splitlines()[2:] == [
        "| salad | 0 | 30 | 0.500 | 20 | 0.800 |"
    ]


def test_summary_table_lists_each_runs_speed() -> None:
    """Seeds may have trained on different CPU kinds: their speeds are listed, not averaged."""
    tables = _load_benchmark_script("protocol_tables")
    metrics = {"f1": 0.7, "accuracy": 0.6, "sensitivity": 0.9, "specificity": 0.3}
    results = pd.DataFrame(
        [
            {"model": "salad", "score": "feature", "seed": 0, "auroc": 0.5, "train_images_per_s": 60.0, **metrics},
            {"model": "salad", "score": "feature", "seed": 1, "auroc": 0.7, "train_images_per_s": None, **metrics},
            {"model": "salad", "score": "feature", "seed": 2, "auroc": 0.6, "train_images_per_s": 110.0, **metrics},
        ]
    )
    cells = tables.summary_table(results).splitlines()[2].split(" | ")
    assert cells[3:5] == ["0.600 ± 0.100", "0.500 / 0.700 / 0.600"]
    assert cells[-2:] == ["60.0 / 110.0", " |"]


def test_profile_step_names_each_network_and_loss() -> None:
    profile_step = _load_benchmark_script("profile_step")
    model = Salad(**TINY)
    profile_step.instrument(model)
    images = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.profiler.profile() as profiler:
        latent = model.model.encoder(images)
        model.structure_loss(images, model.model.decoder(latent))
        model.model.encoder(model.model.decoder(latent))
    counts = {event.key: event.count for event in profiler.key_averages() if event.key.startswith("salad.")}
    assert counts == {"salad.forward encoder": 2, "salad.forward decoder": 2, "salad.structure_loss": 1}


def test_profile_step_counts_the_first_step_only() -> None:
    profile_step = _load_benchmark_script("profile_step")
    counter = profile_step.CountFirstStep()
    images, weight = torch.rand(2, 1, 8, 8), torch.rand(4, 1, 3, 3)
    for step in range(2):
        trainer, batch = SimpleNamespace(global_step=step), SimpleNamespace(image=images)
        counter.on_train_batch_start(trainer, None, batch, step)
        torch.nn.functional.conv2d(images, weight)  # 2 images x 4 channels x 6x6 outputs x 9 taps, 2 FLOPs each
        counter.on_train_batch_end(trainer, None, None, batch, step)
    assert (counter.flops, counter.images) == (2 * 2 * 4 * 6 * 6 * 9, 2)


def test_profile_step_times_every_convolution_of_the_trained_networks() -> None:
    profile_step = _load_benchmark_script("profile_step")
    model = Salad(**TINY)
    rows = profile_step.layer_rates(model, batch=2, dtype=torch.float32)
    convolutions = [
        f"{network}.{name}"
        for network in ("encoder", "decoder", "image_discriminator")
        for name, layer in getattr(model.model, network).named_modules()
        if isinstance(layer, torch.nn.Conv2d | torch.nn.ConvTranspose2d)
    ]
    assert [row[0] for row in rows] == convolutions
    assert rows[0][1] == f"1->{TINY['base_channels']} on 32x32, stride 2"
    assert all(ms > 0 and rate > 0 for _, _, ms, rate in rows)
