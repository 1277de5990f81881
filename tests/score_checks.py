"""``salad-score`` on an exported tiny model: results, errors, resume after a kill, shards, scans, and no torch.

Every run goes through a fresh ``python`` whose import system refuses torch, torchvision, lightning and anomalib,
as on an inference-only machine. The archive mixes PNGs, a DICOM file from the pydicom wheel, a multi-frame and a
suffix-less DICOM file, NIfTI volumes, and three bad files. A second archive of DICOM series (some RLE) and NIfTI
volumes, with identifying elements filled in, checks ``scans.csv`` through resume, shards and ``merge``, the
heat-map volumes, and that no output holds patient data.
"""

import csv
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from anomalib.data import Folder
from anomalib.engine import Engine
from PIL import Image
from pydicom.uid import MPEG2MPML, generate_uid

from anomalib_salad import Salad
from anomalib_salad.data.reader import ReaderConfig, read_images, slice_to_plane
from anomalib_salad.deploy import SaladInferencer
from anomalib_salad.deploy.score import (
    SCAN_COLUMNS,
    SCORE_COLUMNS,
    UsageError,
    parse_shard,
    resolve_inputs,
    select_shard,
)
from anomalib_salad.deploy.score import main as score_main
from anomalib_salad.model.export import export_salad

from .conftest import TINY
from .medical_files import (
    PATIENT,
    PATIENT_STRINGS,
    encapsulated_copy,
    scan_volume,
    wheel_file,
    write_dicom,
    write_nifti,
    write_series,
)

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
from anomalib_salad.deploy.score import main
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
    assert rows[0] == (SCORE_COLUMNS if name == "scores.csv" else ("path", "reason"))
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
    assert sorted(item for item, *_ in rows) == sorted(expected)  # every file, frame and slice once
    assert len(rows) == 20 + 1 + 3 + 1 + 6
    assert {item.rsplit(":", 2)[0] for item, *_ in rows if ":frame:" in item} == {str(archive / "multi.dcm")}
    assert sum(item.startswith(f"{archive / 'volume.nii.gz'}:2:") for item, *_ in rows) == 6
    for item, score, label, *_ in rows:
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
    ((item, *_),) = _rows(tmp_path / "out")
    assert item == str(archive / "bad" / "deep.png")
    assert Image.open(tmp_path / "out" / "overlays" / "deep.png.png").size == (32, 32)
    result = _score(model_xml, f"{archive}/**/*.nii.gz", tmp_path / "vol", "--overlays", "--window", "lung")
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(_rows(tmp_path / "vol")) == 6
    overlays = sorted(path.name for path in (tmp_path / "vol" / "overlays").iterdir())
    assert overlays == ["volume.heatmap.nii.gz"] + [f"volume.nii.gz_2_{index}.png" for index in range(2, 8)]


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
    assert len({item for item, *_ in rows}) == len(rows)  # nothing written twice
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
        assert {item.split(":")[0] for item, *_ in _rows(output)} <= set(parts[part - 1])
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
    result = _score(model_xml, archive, tmp_path / "k", "--top-k", "2")
    assert result.returncode == 2
    assert "--top-k is the K of --scan-score mean-top-k" in result.stderr
    lines = (output / "scores.csv").read_text().splitlines()  # as an older salad-score wrote it: no scan columns
    (output / "scores.csv").write_text("".join(",".join(line.split(",")[:3]) + "\n" for line in lines))
    result = _score(model_xml, archive, output, "--resume")
    assert result.returncode == 2
    assert "has the columns path,score,label, not path,score,label,scan_kind" in result.stderr


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
    assert scripts.get("salad-score") == "anomalib_salad.deploy.score:main"


# --------------------------------------------------------------------------------------------------------------
# Scans: DICOM series and NIfTI volumes, their heat maps, and no patient data in any output
# --------------------------------------------------------------------------------------------------------------

AFFINE = np.array([[0.69, -0.4, 0.0, -12.5], [0.4, 0.69, 0.0, 30.0], [0.0, 0.0, 2.5, -40.0], [0.0, 0.0, 0.0, 1.0]])


@pytest.fixture(scope="module")
def scan_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DICOM series (every second file RLE; one series over three folders, one of its files multi-frame), a DICOM
    file without a series, two NIfTI volumes (one not square, rotated), a PNG, and two DICOM files that cannot be
    decoded. Every DICOM file carries :data:`PATIENT`'s identifying elements, the volume's description some too.
    """
    root = tmp_path_factory.mktemp("scans")
    chest, head, split, study, other_study = (generate_uid() for _ in range(5))
    write_series(root / "ct" / "chest", 5, chest, study, "CT", seed=1, **PATIENT)
    write_series(root / "mr" / "head", 3, head, other_study, "MR", seed=2, **PATIENT)
    write_series(root / "split" / "a", 2, split, study, "CT", seed=3, **PATIENT)
    write_series(root / "split" / "b", 2, split, study, "CT", seed=4, **PATIENT)
    frames = np.random.default_rng(5).integers(0, 4096, (3, 24, 20), dtype=np.uint16)
    uids = {"SeriesInstanceUID": split, "StudyInstanceUID": study, "Modality": "CT"}
    write_dicom(root / "split" / "c" / "multi.dcm", frames, bits_stored=12, **uids, **PATIENT)
    write_series(root / "loose", 1, None, study, "US", seed=6, **PATIENT)
    volume = scan_volume(depth=10, empty=2, size=40)[:, 4:36, :]  # 40 x 32: a transposed slice would not fit
    image = nib.Nifti1Image(volume, AFFINE)
    image.header.set_qform(AFFINE, code=1)
    image.header.set_sform(AFFINE, code=2)
    image.header["descrip"] = b"Xqzvorth PID7Q3X9Z"
    (root / "nifti").mkdir()
    nib.save(image, root / "nifti" / "head.nii.gz")
    write_nifti(root / "nifti" / "knee.nii", scan_volume(depth=6, empty=1))
    Image.fromarray(np.random.default_rng(7).integers(0, 256, (28, 30), dtype=np.uint8)).save(root / "photo.png")
    (bad,) = write_series(root / "bad", 1, generate_uid(), study, "CT", seed=8, **PATIENT)
    encapsulated_copy(bad, root / "bad" / "video.dcm", MPEG2MPML, [b"\x00\x00\x01\xb3" + bytes(60)])
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) - 300])  # cut off inside the pixel data
    return root


TOP2 = ("--scan-score", "mean-top-k", "--top-k", "2")
SCANNED_ROWS = 5 + 3 + (2 + 2 + 3) + 1 + 6 + 4 + 1  # chest, head, split, loose, head.nii.gz, knee.nii, photo


@pytest.fixture(scope="module")
def scan_reference(model_xml: Path, scan_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """One uninterrupted run with overlays: its output folder and its process (stdout, stderr)."""
    output = tmp_path_factory.mktemp("scan_reference")
    result = _score(model_xml, scan_archive, output, "--overlays")
    assert result.returncode == 1, result.stderr[-3000:]  # the two bad files
    return output, result


def _table(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_scans_csv_aggregates_every_series_and_volume_once(
    scan_archive: Path, scan_reference: tuple, tmp_path: Path
) -> None:
    output, _ = scan_reference
    rows = _table(output / "scores.csv")
    assert len(rows) == SCANNED_ROWS
    assert len({row["path"] for row in rows}) == len(rows)
    for row in rows:
        path = row["path"].split(":")[0]
        if path.endswith(".dcm"):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            assert (row["study_uid"], row["modality"]) == (ds.StudyInstanceUID, ds.Modality)
            key = ("dicom_series", ds.SeriesInstanceUID) if "SeriesInstanceUID" in ds else ("dicom_file", path)
        else:
            key = ("nifti_volume" if ".nii" in path else "image", path)
        assert (row["scan_kind"], row["scan"]) == key
    scans = _table(output / "scans.csv")
    assert [tuple(scan) for scan in scans[:1]] == [SCAN_COLUMNS]
    slices: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        slices.setdefault(row["scan"], []).append(row)
    assert sorted(scan["scan"] for scan in scans) == sorted(slices)  # one row per scan
    assert len(scans) == 7
    split = pydicom.dcmread(scan_archive / "split" / "c" / "multi.dcm", stop_before_pixels=True).SeriesInstanceUID
    for scan in scans:
        members = slices[scan["scan"]]
        top = max(members, key=lambda row: (float(row["score"]), row["label"] == "anomalous"))
        assert scan["slices"] == str(len(members))
        assert (scan["aggregate"], scan["score"], scan["top_slice_score"]) == ("max", top["score"], top["score"])
        assert scan["top_slice"] == top["path"]
        assert (scan["label"] == "anomalous") == any(row["label"] == "anomalous" for row in members)
        assert (scan["study_uid"], scan["modality"]) == (members[0]["study_uid"], members[0]["modality"])
        assert scan["series_uid"] == (scan["scan"] if scan["scan_kind"] == "dicom_series" else "")
    assert {scan["scan"]: scan["slices"] for scan in scans}[split] == "7"  # three folders, a multi-frame file
    kinds = sorted(scan["scan_kind"] for scan in scans)
    assert kinds == ["dicom_file", "dicom_series", "dicom_series", "dicom_series", "image"] + ["nifti_volume"] * 2
    # mean-top-k, recomputed from the same run by merge: the mean of each scan's 2 highest slice scores.
    assert score_main(["merge", "--output", str(tmp_path / "top2"), str(output), *TOP2]) == 1
    for scan in _table(tmp_path / "top2" / "scans.csv"):
        highest = sorted((float(row["score"]) for row in slices[scan["scan"]]), reverse=True)[:2]
        assert float(scan["score"]) == pytest.approx(sum(highest) / len(highest), abs=1e-6)
        assert scan["label"] == ("anomalous" if float(scan["score"]) > 0.5 else "normal")
        assert scan["aggregate"] == "mean-top-2"


def test_nifti_inputs_get_a_heat_map_volume_with_their_shape_and_affine(
    model_xml: Path, scan_archive: Path, scan_reference: tuple
) -> None:
    output, _ = scan_reference
    inferencer = SaladInferencer(model_xml, precision_hint="f32")
    for name in ("head.nii.gz", "knee.nii"):
        source = nib.load(scan_archive / "nifti" / name)
        heat = nib.load(output / "overlays" / "nifti" / (name.split(".")[0] + ".heatmap.nii.gz"))
        assert heat.shape == source.shape
        np.testing.assert_allclose(heat.affine, source.affine, atol=1e-6)
        for code in ("qform_code", "sform_code"):
            assert int(heat.header[code]) == int(source.header[code])
        voxels = heat.get_fdata()
        kept = {int(item.rsplit(":", 1)[1]): image for item, image in read_images(scan_archive / "nifti" / name)}
        assert sorted(kept) == [index for index in range(source.shape[2]) if voxels[..., index].any()]
        for index, image in kept.items():  # each map resized to its slice, put back in voxel order
            anomaly_map = inferencer.predict(image).anomaly_map[0]
            resized = np.asarray(Image.fromarray(anomaly_map).resize(image.shape[1::-1], Image.Resampling.BILINEAR))
            np.testing.assert_allclose(voxels[..., index], slice_to_plane(resized), rtol=1e-3, atol=1e-4)
    # DICOM keeps its PNG overlays, one per image at the image's size.
    assert Image.open(output / "overlays" / "ct" / "chest" / "IM0001.dcm.png").size == (20, 24)
    assert (output / "overlays" / "split" / "c" / "multi.dcm_frame_2.png").is_file()
    assert sorted(path.name for path in (output / "overlays").rglob("*.nii.gz")) == [
        "head.heatmap.nii.gz",
        "knee.heatmap.nii.gz",
    ]


def test_no_output_holds_patient_data(scan_archive: Path, scan_reference: tuple) -> None:
    output, result = scan_reference
    for name in ("ct/chest/IM0001.dcm", "ct/chest/IM0002.dcm", "bad/video.dcm"):  # plain and RLE, and a failure
        assert all(text.encode() in (scan_archive / name).read_bytes() for text in PATIENT_STRINGS)
    errors = dict(_rows(output, "errors.csv"))
    assert sorted(errors) == [str(scan_archive / "bad" / name) for name in ("IM0001.dcm", "video.dcm")]
    video = errors[str(scan_archive / "bad" / "video.dcm")]
    assert video.startswith(f"DICOM pixel data in MPEG2 Main Profile / Main Level ({MPEG2MPML}) cannot be decoded")
    assert "gdcmconv --raw" in video
    written = {"stdout": result.stdout.encode(), "stderr": result.stderr.encode()}
    for path in output.rglob("*"):
        written[f"name {path}"] = str(path.relative_to(output)).encode()
        if path.is_file():
            data = path.read_bytes()
            written[str(path)] = gzip.decompress(data) if path.name.endswith(".gz") else data
    assert any(name.endswith("head.heatmap.nii.gz") for name in written)
    for text in PATIENT_STRINGS:
        found = [name for name, data in written.items() if text.lower().encode() in data.lower()]
        assert not found, f"{text!r} is in {found}"


def test_resumed_run_gives_the_same_scans_and_heat_maps(
    model_xml: Path, scan_archive: Path, scan_reference: tuple, tmp_path: Path
) -> None:
    reference, _ = scan_reference
    output = Path(shutil.copytree(reference, tmp_path / "out"))
    # As a kill leaves it: the last slices of a volume and of a series unwritten, a row cut off mid-line, neither
    # file complete, no scans.csv and no heat-map volume yet.
    head, chest = str(scan_archive / "nifti" / "head.nii.gz"), str(scan_archive / "ct" / "chest")
    lines = (output / "scores.csv").read_text().splitlines(keepends=True)
    cut = [line for line in lines[1:] if line.startswith(head)][-3:] + [
        line for line in lines[1:] if line.startswith(chest)
    ][-2:]
    kept = [line for line in lines if line not in cut]
    (output / "scores.csv").write_text("".join(kept) + cut[0][:12])
    completed = (output / "completed_files.txt").read_text().splitlines()
    unfinished = {head} | {line.split(",")[0] for line in cut}
    (output / "completed_files.txt").write_text("".join(f"{path}\n" for path in completed if path not in unfinished))
    (output / "scans.csv").unlink()
    (output / "overlays" / "nifti" / "head.heatmap.nii.gz").unlink()
    result = _score(model_xml, scan_archive, output, "--resume", "--overlays")
    assert result.returncode == 1, result.stderr[-3000:]
    assert sorted(_rows(output)) == sorted(_rows(reference))
    assert (output / "scans.csv").read_bytes() == (reference / "scans.csv").read_bytes()
    heat = nib.load(output / "overlays" / "nifti" / "head.heatmap.nii.gz").get_fdata()
    expected = nib.load(reference / "overlays" / "nifti" / "head.heatmap.nii.gz").get_fdata()
    np.testing.assert_allclose(heat, expected, atol=1e-6)  # whole: the slices scored before were run again
    # Nothing left to score: --resume only writes scans.csv again, here with another aggregate.
    result = _score(model_xml, scan_archive, output, "--resume", *TOP2)
    assert result.returncode == 1, result.stderr[-3000:]
    assert sorted(_rows(output)) == sorted(_rows(reference))
    assert score_main(["merge", "--output", str(tmp_path / "top2"), str(reference), *TOP2]) == 1
    assert (output / "scans.csv").read_bytes() == (tmp_path / "top2" / "scans.csv").read_bytes()


def test_shards_merged_give_the_scans_of_one_run(
    model_xml: Path, scan_archive: Path, scan_reference: tuple, tmp_path: Path
) -> None:
    reference, _ = scan_reference
    folders = []
    for part in (1, 2):
        folders.append(tmp_path / f"shard{part}")
        result = _score(model_xml, scan_archive, folders[-1], "--shard", f"{part}/2")
        assert result.returncode == 1, result.stderr[-3000:]
        assert not (folders[-1] / "scans.csv").exists()  # its series may go on in the other shard
        assert "'salad-score merge' over all 2 shards" in result.stderr
    split = {row["scan"] for row in _table(folders[0] / "scores.csv")} & {
        row["scan"] for row in _table(folders[1] / "scores.csv")
    }
    assert len(split) >= 3  # series and volumes split between the shards (files alternate)
    assert score_main(["merge", "--output", str(tmp_path / "merged"), str(folders[1]), str(folders[0])]) == 1
    merged = tmp_path / "merged"
    assert (merged / "scans.csv").read_bytes() == (reference / "scans.csv").read_bytes()
    assert _rows(merged) == sorted(_rows(reference))
    assert _rows(merged, "errors.csv") == sorted(_rows(reference, "errors.csv"))
