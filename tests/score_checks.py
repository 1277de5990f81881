"""``salad-score`` on an exported tiny model: results, errors, resume after a kill, shards, and no torch.

Every run goes through a fresh ``python`` whose import system refuses torch, torchvision, lightning and anomalib,
as on an inference-only machine. The archive mixes PNGs, a DICOM file from the pydicom wheel, a multi-frame and a
suffix-less DICOM file, NIfTI volumes, and three bad files.
"""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
from anomalib.data import Folder
from anomalib.engine import Engine
from PIL import Image

from anomalib_salad import Salad
from anomalib_salad.deploy import SaladInferencer
from anomalib_salad.export import export_salad
from anomalib_salad.reader import ReaderConfig, read_images
from anomalib_salad.score import UsageError, parse_shard, resolve_inputs, select_shard

from .conftest import TINY
from .medical_files import scan_volume, wheel_file, write_dicom, write_nifti

ROOT = Path(__file__).resolve().parents[1]
# Runs salad-score's main() with the training stack made unimportable, and checks it stayed out.
RUNNER = """
import sys
BLOCKED = {"torch", "torchvision", "lightning", "anomalib"}
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"salad-score imported {name}")
sys.meta_path.insert(0, Block())
from anomalib_salad.score import main
code = main(sys.argv[1:])
assert not [m for m in sys.modules if m.split(".")[0] in BLOCKED]
sys.exit(code)
"""


def _command(*args: object) -> list[str]:
    return [sys.executable, "-c", RUNNER, *map(str, args), "--no-progress"]


def _score(model: Path, source: Path, output: Path, *args: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        _command("--model", model, "--input", source, "--output", output, *args),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _rows(output: Path, name: str = "scores.csv") -> list[tuple[str, ...]]:
    with (output / name).open(newline="") as handle:
        rows = [tuple(row) for row in csv.reader(handle)]
    assert rows[0] == (("path", "score", "label") if name == "scores.csv" else ("path", "reason"))
    return rows[1:]


@pytest.fixture(scope="module")
def model_xml(tiny_scans: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SALAD trained for one epoch and exported to OpenVINO (f32 IR)."""
    datamodule = Folder(
        name="tiny",
        root=tiny_scans,
        normal_dir="train/normal",
        abnormal_dir="test/abnormal",
        normal_test_dir="test/normal",
        train_batch_size=16,
        eval_batch_size=16,
        num_workers=0,
        seed=0,
    )
    engine = Engine(
        max_epochs=1, default_root_dir=tmp_path_factory.mktemp("run"), logger=False, enable_progress_bar=False
    )
    engine.fit(Salad(**TINY), datamodule=datamodule)
    checkpoint = engine.trainer.checkpoint_callback.best_model_path
    return export_salad(checkpoint, tmp_path_factory.mktemp("export"), "openvino")


@pytest.fixture(scope="module")
def archive(tiny_scans: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("archive")
    (root / "png" / "sub").mkdir(parents=True)
    for index, path in enumerate(sorted((tiny_scans / "test").rglob("*.png"))[:20]):
        shutil.copy(path, root / "png" / ("sub" if index % 4 == 0 else "") / f"{index:02d}.png")
    shutil.copy(wheel_file("MR_small.dcm"), root / "mr.dcm")
    frames = np.random.default_rng(0).integers(0, 4096, (3, 24, 24), dtype=np.uint16)
    write_dicom(root / "multi.dcm", frames, bits_stored=12, WindowCenter=2048, WindowWidth=4096)
    write_dicom(root / "series" / "IM0001", frames[0], bits_stored=12)
    write_nifti(root / "volume.nii.gz", scan_volume(depth=10, empty=2))
    (root / "bad").mkdir()
    (root / "bad" / "broken.png").write_text("not an image")
    (root / "bad" / "report.dcm").write_text("not DICOM either")
    Image.fromarray(np.full((32, 32), 3000, np.uint16)).save(root / "bad" / "deep.png")
    return root


@pytest.fixture(scope="module")
def reference(model_xml: Path, archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run over the archive."""
    output = tmp_path_factory.mktemp("reference")
    result = _score(model_xml, archive, output)
    assert result.returncode == 1, result.stderr[-3000:]  # the bad files
    return output


def test_every_image_is_scored_as_the_inferencer_scores_it(model_xml: Path, archive: Path, reference: Path) -> None:
    rows = _rows(reference)
    inferencer = SaladInferencer(model_xml, precision_hint="f32")
    expected = {}
    for path in resolve_inputs(archive):
        if "/bad/" not in path:
            for item, image in read_images(path, ReaderConfig(require_bit_depth=True)):
                expected[item] = inferencer.predict(image)
    assert sorted(item for item, _, _ in rows) == sorted(expected)  # every file, frame and slice once
    assert len(rows) == 20 + 1 + 3 + 1 + 6
    assert {item.rsplit(":", 2)[0] for item, _, _ in rows if ":frame:" in item} == {str(archive / "multi.dcm")}
    assert sum(item.startswith(f"{archive / 'volume.nii.gz'}:2:") for item, _, _ in rows) == 6
    for item, score, label in rows:
        prediction = expected[item]
        # export_checks' f32 tolerance: the THROUGHPUT hint's one-thread streams sum in another order than the
        # inferencer's (~1e-6, amplified by the normalisation), and 6 decimals are written.
        assert float(score) == pytest.approx(float(prediction.pred_score[0]), rel=1e-4, abs=2e-5)
        if abs(float(score) - 0.5) > 2e-4:  # a score at the threshold may fall either side
            assert label == ("anomalous" if prediction.pred_label[0] else "normal")
    errors = dict(_rows(reference, "errors.csv"))
    assert sorted(errors) == sorted(str(archive / "bad" / name) for name in ("broken.png", "deep.png", "report.dcm"))
    assert errors[str(archive / "bad" / "broken.png")].startswith("cannot be decoded as an image")
    assert errors[str(archive / "bad" / "deep.png")].startswith("16/32-bit grayscale image")
    assert errors[str(archive / "bad" / "report.dcm")].startswith("not a DICOM file")
    completed = (reference / "completed_files.txt").read_text().splitlines()
    assert sorted(completed) == sorted(path for path in resolve_inputs(archive) if "/bad/" not in path)
    run = json.loads((reference / "run.json").read_text())
    assert run["shard"] == "1/1"
    assert run["reader"]["window"] == "file"


def test_bit_depth_flag_and_overlays(model_xml: Path, archive: Path, tmp_path: Path) -> None:
    result = _score(model_xml, archive / "bad" / "deep.png", tmp_path / "out", "--bit-depth", "12", "--overlays")
    assert result.returncode == 0, result.stderr[-3000:]
    ((item, _, _),) = _rows(tmp_path / "out")
    assert item == str(archive / "bad" / "deep.png")
    assert Image.open(tmp_path / "out" / "overlays" / "deep.png.png").size == (32, 32)
    result = _score(model_xml, f"{archive}/**/*.nii.gz", tmp_path / "vol", "--overlays", "--window", "lung")
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(_rows(tmp_path / "vol")) == 6
    assert sorted(path.name for path in (tmp_path / "vol" / "overlays").iterdir())[0] == "volume.nii.gz_2_2.png"


def _truncate(path: Path, keep_rows: int, partial: bool) -> None:
    lines = path.read_text().splitlines(keepends=True)
    text = "".join(lines[: keep_rows + 1])
    if partial:
        text += lines[keep_rows + 1][:7]  # a row cut off mid-line, as a kill during the write leaves it
    path.write_text(text)


def test_resume_after_truncated_outputs_gives_the_same_rows(
    model_xml: Path, archive: Path, reference: Path, tmp_path: Path
) -> None:
    output = Path(shutil.copytree(reference, tmp_path / "out"))
    _truncate(output / "scores.csv", keep_rows=9, partial=True)
    _truncate(output / "errors.csv", keep_rows=1, partial=False)
    completed = (output / "completed_files.txt").read_text().splitlines()
    (output / "completed_files.txt").write_text("\n".join(completed[:3]) + "\n" + completed[3][:5])
    result = _score(model_xml, archive, output, "--resume")
    assert result.returncode == 1, result.stderr[-3000:]
    assert sorted(_rows(output)) == sorted(_rows(reference))
    assert sorted(_rows(output, "errors.csv")) == sorted(_rows(reference, "errors.csv"))
    assert sorted((output / "completed_files.txt").read_text().splitlines()) == sorted(completed)


def test_killed_run_resumed_gives_exactly_the_rows_of_an_uninterrupted_one(
    model_xml: Path, archive: Path, tmp_path: Path
) -> None:
    source = Path(shutil.copytree(archive / "png", tmp_path / "in"))
    write_nifti(source / "long.nii.gz", scan_volume(depth=400, empty=2))  # 396 slices: a kill lands mid-volume
    complete = tmp_path / "complete"
    assert _score(model_xml, source, complete).returncode == 0
    output = tmp_path / "killed"
    process = subprocess.Popen(
        _command("--model", model_xml, "--input", source, "--output", output),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    scores = output / "scores.csv"
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if scores.is_file() and scores.read_text().count("\n") > 40:
            break
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    written = _rows(output) if scores.read_text().endswith("\n") else _rows(output)[:-1]
    assert 40 <= len(written) < len(_rows(complete))
    result = _score(model_xml, source, output, "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _rows(output)
    assert len({item for item, _, _ in rows}) == len(rows)  # nothing written twice
    assert sorted(rows) == sorted(_rows(complete))  # nothing lost, same scores


def test_shards_cover_every_file_exactly_once(model_xml: Path, archive: Path, reference: Path, tmp_path: Path) -> None:
    files = resolve_inputs(archive)
    parts = [select_shard(files, part, 3) for part in (1, 2, 3)]
    assert sorted(path for part in parts for path in part) == files
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    rows, errors = [], []
    for part in (1, 2, 3):
        output = tmp_path / f"shard{part}"
        result = _score(model_xml, archive, output, "--shard", f"{part}/3")
        assert result.returncode in {0, 1}, result.stderr[-3000:]
        rows += _rows(output)
        errors += _rows(output, "errors.csv")
        assert {item.split(":")[0] for item, _, _ in _rows(output)} <= set(parts[part - 1])
    assert sorted(rows) == sorted(_rows(reference))
    assert sorted(errors) == sorted(_rows(reference, "errors.csv"))


def test_wrong_use_is_refused_with_status_2(model_xml: Path, archive: Path, reference: Path, tmp_path: Path) -> None:
    output = Path(shutil.copytree(reference, tmp_path / "out"))
    result = _score(model_xml, archive, output)
    assert result.returncode == 2
    assert "already holds scores.csv" in result.stderr
    result = _score(model_xml, archive, output, "--resume", "--shard", "1/2")
    assert result.returncode == 2
    assert "--resume with other settings" in result.stderr
    assert "shard: '1/1' -> '1/2'" in result.stderr
    assert _score(model_xml, archive, tmp_path / "x", "--shard", "3/2").returncode == 2
    assert _score(tmp_path / "missing.xml", archive, tmp_path / "y").returncode == 2
    assert _score(model_xml, tmp_path / "nothing*.png", tmp_path / "z").returncode == 2


def test_inputs_and_shards(archive: Path, tmp_path: Path) -> None:
    listing = tmp_path / "files.txt"
    listing.write_text(f"# scans\n{archive / 'mr.dcm'}\n\nrelative.png\n{archive / 'mr.dcm'}\n")
    assert resolve_inputs(listing) == sorted([str(archive / "mr.dcm"), str(tmp_path / "relative.png")])
    assert resolve_inputs(f"{archive}/png/**/*.png") == sorted(str(p) for p in (archive / "png").rglob("*.png"))
    assert str(archive / "series" / "IM0001") in resolve_inputs(archive)
    with pytest.raises(UsageError, match="names no file"):
        resolve_inputs(tmp_path / "none")
    assert parse_shard("2/4") == (2, 4)
    for bad in ("0/4", "5/4", "2", "a/b"):
        with pytest.raises(UsageError, match="--shard must be K/N"):
            parse_shard(bad)


def test_console_script_is_declared() -> None:
    scripts = {script.name: script.value for script in entry_points(group="console_scripts")}
    assert scripts.get("salad-score") == "anomalib_salad.score:main"
