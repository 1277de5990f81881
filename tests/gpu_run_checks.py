"""Checks of benchmarks/gpu_run.py, run by tests/test_in_own_process.py in a process of their own (see there).

The smoke run covers every stage the GPU run has (throughput table, big-batch check, the three trainings, the
three SALAD scores, the JSON and markdown report); a run with a budget spent on the imports alone checks that every
stage is then skipped with its reason, and that the report is still written.
"""

import contextlib
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_run.py"
STAGES = {
    "throughput fp32",
    "throughput bf16",
    "throughput bf16+channels-last",
    "throughput bf16+compile",
    "train salad",
    "train ae",
    "train ganomaly",
}


@pytest.fixture(scope="module")
def gpu_run() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # No SIGALRM inside the suite's process: with OpenVINO's threads loaded by earlier test files, an alarm there
    # ended the whole pytest process (a segmentation fault). The alarm is tested in its own process below; the
    # planning tests here run the stages without it.
    module.time_limit = lambda seconds: contextlib.nullcontext()
    return module


def _trainer(max_epochs: int) -> SimpleNamespace:
    return SimpleNamespace(
        max_epochs=max_epochs,
        should_stop=False,
        current_epoch=0,
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
    )


def _clock_after_one_epoch(gpu_run: ModuleType, deadline_in: float, epoch_s: float):
    clock = gpu_run.FitClock(deadline=time.monotonic() + deadline_in, tail_s=1.0)
    now = time.monotonic()
    clock.start, clock.first_batch, clock.epoch_ends = now - 5 - epoch_s, now - 4 - epoch_s, [now - epoch_s]
    return clock


def test_guard_stops_a_fit_whose_remaining_epochs_would_overrun(gpu_run: ModuleType) -> None:
    trainer = _trainer(200)
    clock = _clock_after_one_epoch(gpu_run, deadline_in=60, epoch_s=0.5)
    clock.on_train_epoch_end(trainer, None)  # epoch 2: 198 more at 0.5 s need ~100 s, 60 s left
    assert trainer.should_stop
    assert clock.stop_reason.startswith("stopped after 2/200 epochs")
    assert clock.epoch_s == pytest.approx(0.5, abs=0.05)
    assert clock.one_time_s == pytest.approx(4.5, abs=0.1)  # first epoch (5 s) less a steady one


def test_guard_lets_a_fit_that_fits_run_on(gpu_run: ModuleType) -> None:
    trainer = _trainer(200)
    clock = _clock_after_one_epoch(gpu_run, deadline_in=150, epoch_s=0.5)
    clock.on_train_epoch_end(trainer, None)
    assert not trainer.should_stop
    assert clock.stop_reason is None
    clock.deadline = time.monotonic() + 0.5  # only the tail (1 s) is left: stop at the next batch
    clock.on_train_batch_end(trainer, None, None, None, 0)
    assert trainer.should_stop
    assert "deadline reached" in clock.stop_reason


ALARM_CHECK = f"""
import importlib.util, time
spec = importlib.util.spec_from_file_location("gpu_run", {str(SCRIPT)!r})
gpu_run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_run)
start = time.monotonic()
try:
    with gpu_run.time_limit(0.2):
        time.sleep(5)
except gpu_run.StageTimeoutError:
    pass
else:
    raise SystemExit("not interrupted")
assert time.monotonic() - start < 2, "interrupted late"
with gpu_run.time_limit(0.3):  # a stage that ends in time leaves no alarm behind
    pass
time.sleep(0.6)
print("ok")
"""


def test_time_limit_interrupts_a_stage() -> None:
    # In its own process: SIGALRM inside the whole suite's process ended that process (see the fixture).
    command = [sys.executable, "-c", ALARM_CHECK]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


# H200-like rates per variant: (one-time s, steady epoch s, wall s of the 4-epoch measurement).
FAST = {"fp32": (8, 1.6, 15), "bf16": (6, 1.0, 10), "bf16+channels-last": (6, 0.67, 9), "bf16+compile": (90, 0.5, 100)}
SLOW = {"fp32": (8, 4.0, 25), "bf16": (6, 2.5, 18), "bf16+channels-last": (6, 2.4, 17), "bf16+compile": (90, 1.8, 100)}


def _simulate(
    gpu_run: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    rates: dict,
    budget_s: float,
    train_s: float = 100.0,
    stages: tuple[str, ...] | None = None,
) -> dict:
    """The GPU run's plan with stages replaced by fakes that advance a fake clock (25 s of imports first)."""
    now = [1000.0]
    monkeypatch.setattr(gpu_run, "time", SimpleNamespace(monotonic=lambda: now[0]))

    def variant(ctx, name: str) -> None:
        one_time, epoch, wall = rates[name]
        now[0] += wall
        row = {
            "variant": name,
            "compile_networks": "compile" in name,
            "settings": gpu_run.VARIANTS[name],
            "precision": "bf16 autocast",
            "one_time_s": one_time,
            "epoch_s": epoch,
            "images_per_s": 1000 / epoch,
            "wall_s": wall,
            "peak_gib": 10.0,
            "note": None,
        }
        ctx.report["throughput"].append(row | {"projected_s": gpu_run.projected_s(row, ctx.size.epochs)})

    def big_batch(ctx) -> dict:
        now[0] += 8
        return {"batch": 256, "variant": "bf16", "fits": True, "peak_gib": 40.0, "steps": 3, "images_per_s": 2e3}

    def train(ctx, kind: str) -> None:
        trained_with[kind] = ctx.fastest["variant"]
        now[0] += min(train_s, ctx.left())

    trained_with = {}
    monkeypatch.setattr(gpu_run, "throughput_variant", variant)
    monkeypatch.setattr(gpu_run, "big_batch_check", big_batch)
    monkeypatch.setattr(gpu_run, "train_stage", train)
    args = SimpleNamespace(out=tmp_path, stages=list(stages or gpu_run.STAGES), seed=0, train_variant=None)
    report = gpu_run.new_report(args, gpu_run.GPU, tmp_path, torch.device("cpu"), budget_s)
    deadline = now[0] - 25 + budget_s - gpu_run.GPU.reserve_s
    ctx = gpu_run.Context(args, gpu_run.GPU, tmp_path, tmp_path, torch.device("cpu"), report, deadline=deadline)
    gpu_run.run(ctx)
    return report | {"trained_with": trained_with}


def test_plan_on_a_fast_gpu_runs_every_stage(gpu_run, monkeypatch, tmp_path: Path) -> None:
    report = _simulate(gpu_run, monkeypatch, tmp_path, FAST, budget_s=480)
    assert [(stage["stage"], stage["status"]) for stage in report["stages"]] == [
        ("throughput fp32", "done"),
        ("throughput bf16", "done"),
        ("throughput bf16+channels-last", "done"),
        ("batch 256", "done"),
        ("throughput bf16+compile", "done"),
        ("train salad", "done"),
        ("train ae", "done"),
        ("train ganomaly", "done"),
    ]
    assert report["fastest"]["variant"] == "bf16+channels-last"  # compile is faster per epoch, not over 200
    assert report["skipped"] == []


def test_plan_keeps_time_for_salad_before_compiling(gpu_run, monkeypatch, tmp_path: Path) -> None:
    report = _simulate(gpu_run, monkeypatch, tmp_path, FAST, budget_s=300)
    skipped = {item["stage"]: item["reason"] for item in report["skipped"]}
    assert "kept for the 200-epoch SALAD run" in skipped.pop("throughput bf16+compile")
    statuses = {stage["stage"]: stage["status"] for stage in report["stages"]}
    assert statuses["train salad"] == "done"
    assert report["fastest"]["variant"] == "bf16+channels-last"
    assert all("allowed" in reason for reason in skipped.values())


def test_plan_on_a_slow_gpu_reports_that_salad_does_not_fit(gpu_run, monkeypatch, tmp_path: Path) -> None:
    report = _simulate(gpu_run, monkeypatch, tmp_path, SLOW, budget_s=480)
    statuses = {stage["stage"]: stage["status"] for stage in report["stages"]}
    # SALAD would not fit at any configuration measured so far, so no time is held back from measuring the others
    assert all(statuses[f"throughput {name}"] == "done" for name in SLOW)
    assert report["fastest"]["variant"] == "bf16+compile"
    assert statuses["train salad"] == "skipped"
    assert report["skipped"][0]["stage"] == "train salad"
    assert report["skipped"][0]["reason"].startswith("needs ~")
    assert statuses["train ae"] == "done"  # the cheaper trainings still start; their guard stops them if need be
    markdown = (tmp_path / "gpu_run.md").read_text()
    assert "train salad: skipped: needs ~" in markdown


def _run(out: Path, *args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "gpu_run.md").is_file()
    return json.loads((out / "gpu_run.json").read_text())


@pytest.mark.slow
def test_smoke_run_covers_every_stage(tmp_path: Path) -> None:
    report = _run(tmp_path)
    rows = {row["variant"]: row for row in report["throughput"]}
    assert set(rows) == {"fp32", "bf16", "bf16+channels-last"}
    for row in rows.values():
        assert row["images_per_s"] > 0
        assert row["epoch_s"] > 0
        assert row["one_time_s"] >= 0
        assert "peak_gib" in row  # None on a CPU
    assert report["batch_256"]["fits"] is True
    assert report["fastest"]["variant"] in rows
    skipped = {item["stage"]: item for item in report["skipped"]}
    assert set(skipped) == {"throughput bf16+compile"}  # torch.compile is left to the GPU
    assert skipped["throughput bf16+compile"]["reason"]
    training = report["training"]
    assert set(training) == {"salad", "ae", "ganomaly"}
    for kind in ("salad", "ae"):
        assert set(training[kind]["scores"]) == {"A_F", "A_I", "A_C"}
    assert set(training["ganomaly"]["scores"]) == {"GANomaly"}
    for result in training.values():
        assert result["epochs_trained"] == result["epochs_planned"] == 2
        assert result["stopped"] is None
        images = result["per_image"]
        count = result["test_images"]
        assert len(images["image_path"]) == len(images["label"]) == len(images["mean_intensity"]) == count
        assert 0 < sum(images["label"]) < count  # both classes in the test half
        for name, metrics in result["scores"].items():
            assert len(images[name]) == count  # every raw score kept, so the run can be rescored later
            assert 0.0 <= metrics["matched_auroc"] <= 1.0
            assert set(metrics) >= {"auroc", "f1", "accuracy", "sensitivity", "specificity"}
            assert all(0.0 <= metrics[key] <= 1.0 for key in ("auroc", "f1", "accuracy", "sensitivity", "specificity"))
    assert {stage["stage"] for stage in report["stages"]} == STAGES | {"batch 32"}
    assert report["finished"]
    markdown = (tmp_path / "gpu_run.md").read_text()
    assert "| SALAD |" in markdown
    assert "A_C" in markdown
    assert "throughput bf16+compile: skipped" in markdown


def test_a_spent_budget_skips_every_stage_with_its_reason(tmp_path: Path) -> None:
    report = _run(tmp_path, "--budget-min", "0.05")  # 3 s: gone before the first stage
    assert report["throughput"] == []
    assert report["training"] == {}
    assert report["batch_256"] is None
    skipped = {item["stage"]: item for item in report["skipped"]}
    assert set(skipped) == STAGES | {"batch 32"}
    for name, item in skipped.items():
        assert item["status"] == "skipped"
        if name != "throughput bf16+compile":
            assert "allowed" in item["reason"]
    assert report["targets"]["salad_2_epochs_in_budget"] is False
    assert "train salad: skipped" in (tmp_path / "gpu_run.md").read_text()


def test_chosen_stages_run_in_the_order_given(gpu_run, monkeypatch, tmp_path: Path) -> None:
    # A short second call: one training first, then the compiled variant, which need not keep time for SALAD.
    report = _simulate(gpu_run, monkeypatch, tmp_path, FAST, budget_s=480, stages=("ae", "bf16+compile"))
    assert [(stage["stage"], stage["status"]) for stage in report["stages"]] == [
        ("train ae", "done"),
        ("throughput bf16+compile", "done"),
    ]
    assert report["fastest"]["variant"] == "bf16"  # nothing measured before the training: the default
    assert "no throughput stage had run" in report["fastest"]["chosen_by"]
    assert report["trained_with"] == {"ae": "bf16"}
    assert report["targets"]["salad_200_epochs_in_budget"] is None  # not asked for, so neither met nor missed


def test_unknown_stage_is_refused_with_the_choices(gpu_run, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        gpu_run.parse_args(["--out", "x", "--stages", "ae,salda"])
    error = capsys.readouterr().err
    assert "unknown stage(s) salda" in error
    assert "ganomaly" in error


def test_compiling_keeps_time_for_salad_only_when_salad_is_to_come(gpu_run, monkeypatch, tmp_path: Path) -> None:
    with_salad = _simulate(gpu_run, monkeypatch, tmp_path, FAST, budget_s=300, stages=("bf16", "bf16+compile", "salad"))
    without = _simulate(gpu_run, monkeypatch, tmp_path, FAST, budget_s=300, stages=("bf16", "bf16+compile", "ae"))
    statuses = [{stage["stage"]: stage["status"] for stage in report["stages"]} for report in (with_salad, without)]
    assert statuses[0]["throughput bf16+compile"] == "skipped"
    assert statuses[1]["throughput bf16+compile"] == "done"
