"""Scoring throughput of ``salad-score`` against ``examples/deploy_openvino.py``, and the cost of reading DICOM vs PNG.

Writes the same synthetic scans (:func:`anomalib_salad.data.synthetic_scan`) as 8-bit PNG, as 12-bit DICOM with
rescale and window (uncompressed and RLE), and as one NIfTI volume, then prints two tables:

* reading: milliseconds per image through :mod:`anomalib_salad.reader` (the reader of training and scoring),
  best of ``--repeats``, and the ratio to PNG;
* scoring: images/s of each command run as a user runs it (a fresh process, model compiled, CSV written),
  end to end, and in steady state (``(N - 1) / (t(N) - t(1))``: process start and model compilation removed),
  with the ratio to the example script. Both use f32 and no overlays.

Without ``--model`` it trains a SALAD of ``--image-size`` for one step and exports it (needs torch and anomalib);
pass the ``model.xml`` of a real export to measure that model. Run it on an idle machine: the numbers move with
any other load. The defaults take about a minute on 2 cores.

Usage:
    python benchmarks/scoring_speed.py                                  # 200 images of 256 px, a 64 px model
    python benchmarks/scoring_speed.py --model exports/weights/openvino/model.xml --images 1000 --size 512
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anomalib_salad import reader  # noqa: E402  (after the path insert, so that a checkout runs as is)
from anomalib_salad.data import synthetic_scan  # noqa: E402


def write_images(folder: Path, count: int, size: int, seed: int = 0) -> dict[str, Path]:
    """The same scans as PNG, DICOM, RLE DICOM and one NIfTI volume; returns the folder of each."""
    import nibabel as nib  # noqa: PLC0415
    import pydicom  # noqa: PLC0415
    from pydicom.dataset import Dataset, FileMetaDataset  # noqa: PLC0415
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RLELossless, generate_uid  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    folders = {name: folder / name for name in ("png", "dicom", "dicom_rle", "nifti")}
    for path in folders.values():
        path.mkdir(parents=True, exist_ok=True)
    volume = np.zeros((size, size, count), np.int16)
    for index in range(count):
        scan = synthetic_scan(rng, size, lesion=index % 2 == 1)
        Image.fromarray(scan).save(folders["png"] / f"{index:05d}.png")
        stored = scan.astype(np.uint16) * 16  # 12-bit, as a CT or MR export stores it
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID = CTImageStorage, ExplicitVRLittleEndian
        meta.MediaStorageSOPInstanceUID = generate_uid()
        ds = Dataset()
        ds.file_meta, ds.SOPClassUID, ds.SOPInstanceUID = meta, CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality = "CT"
        ds.set_pixel_data(stored, photometric_interpretation="MONOCHROME2", bits_stored=12)
        ds.RescaleSlope, ds.RescaleIntercept, ds.WindowCenter, ds.WindowWidth = 1, -1024, 1024, 4096
        ds.save_as(folders["dicom"] / f"{index:05d}.dcm", enforce_file_format=True)
        compressed = pydicom.dcmread(folders["dicom"] / f"{index:05d}.dcm")
        compressed.compress(RLELossless)
        compressed.save_as(folders["dicom_rle"] / f"{index:05d}.dcm")
        volume[..., index] = stored
    nib.save(nib.Nifti1Image(volume, np.eye(4)), folders["nifti"] / "volume.nii.gz")
    return folders


def reading_cost(folders: dict[str, Path], repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` milliseconds per image through the reader, per format."""
    config = reader.ReaderConfig(min_tissue=0)  # every slice, so the NIfTI count matches the others
    costs = {}
    for name, folder in folders.items():
        files = reader.list_files(folder)
        best = float("inf")
        for _ in range(repeats):
            reader.clear_cache()  # cold, as scoring reads each volume once
            start = time.perf_counter()
            images = sum(len(reader.read_images(path, config)) for path in files)
            best = min(best, (time.perf_counter() - start) / images)
        costs[name] = 1000 * best
    return costs


def _run(command: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if result.returncode not in {0, 1}:
        raise RuntimeError(result.stderr[-2000:])
    return elapsed


def _commands(model: Path, source: Path, output: Path) -> dict[str, list[str]]:
    return {
        "example script": [
            sys.executable,
            str(ROOT / "examples" / "deploy_openvino.py"),
            "--model",
            str(model),
            "--input",
            str(source),
            "--output",
            str(output / "example"),
            "--no-overlays",
        ],
        "salad-score": [
            sys.executable,
            "-m",
            "anomalib_salad.score",
            "--model",
            str(model),
            "--input",
            str(source),
            "--output",
            str(output / "score"),
            "--no-progress",
        ],
    }


def scoring_throughput(model: Path, folders: dict[str, Path], work: Path, repeats: int) -> list[tuple]:
    """``(command, input, images, end-to-end images/s, steady images/s)`` rows."""
    rows = []
    single = work / "single"
    single.mkdir(exist_ok=True)
    for name in ("png", "dicom"):
        one = single / name
        one.mkdir(exist_ok=True)
        first = sorted(folders[name].iterdir())[0]
        (one / first.name).write_bytes(first.read_bytes())
        count = len(list(folders[name].iterdir()))
        for command in ("example script", "salad-score"):
            totals, starts = [], []
            for attempt in range(repeats):
                output = work / f"out_{name}_{attempt}"
                totals.append(_run(_commands(model, folders[name], output)[command]))
                starts.append(_run(_commands(model, one, work / f"one_{name}_{attempt}")[command]))
            total, start = min(totals), min(starts)
            steady = (count - 1) / (total - start) if total > start else float("nan")  # nan: too few images
            rows.append((command, name, count, count / total, steady))
    return rows


def make_model(image_size: int, work: Path) -> Path:
    """A SALAD of ``image_size`` trained for one step on synthetic scans and exported to OpenVINO."""
    from anomalib.engine import Engine  # noqa: PLC0415  (only when no model is given)

    from anomalib_salad import Salad  # noqa: PLC0415
    from anomalib_salad.data import SyntheticScans  # noqa: PLC0415
    from anomalib_salad.export import export_salad  # noqa: PLC0415

    datamodule = SyntheticScans(
        root=work / "train", image_size=image_size, num_train=16, num_test=8, train_batch_size=8, eval_batch_size=8
    )
    engine = Engine(max_steps=1, default_root_dir=work / "run", logger=False, enable_progress_bar=False)
    engine.fit(Salad(image_size=image_size), datamodule=datamodule)
    return export_salad(engine.trainer.checkpoint_callback.best_model_path, work / "export", "openvino")


def main() -> None:
    """Measure and print both tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="an exported model.xml (default: make a one-step model)")
    parser.add_argument("--image-size", type=int, default=64, help="network input of the made model (default 64)")
    parser.add_argument("--images", type=int, default=200, help="images per format (default 200)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per measurement; the best counts (default 2)")
    parser.add_argument("--workdir", type=Path, help="keep the files here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        work = args.workdir or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        model = args.model or make_model(args.image_size, work)
        folders = write_images(work / "images", args.images, args.size)
        costs = reading_cost(folders, args.repeats)
        rows = scoring_throughput(model, folders, work, args.repeats)
    print(f"\n{os.cpu_count()} CPUs; {args.images} images of {args.size}x{args.size}; model {model}")
    print("\nreading through anomalib_salad.reader (per image)")
    print(f"{'format':<12} {'ms/image':>9} {'x PNG':>7}")
    for name, cost in costs.items():
        print(f"{name:<12} {cost:9.3f} {cost / costs['png']:7.2f}")
    print("\nscoring (fresh process per run, f32, no overlays)")
    print(f"{'command':<15} {'input':<6} {'images':>6} {'images/s':>9} {'x script':>8} {'steady/s':>9} {'x script':>8}")
    baseline = {name: (end, steady) for command, name, _, end, steady in rows if command == "example script"}
    for command, name, count, end, steady in rows:
        base_end, base_steady = baseline[name]
        print(
            f"{command:<15} {name:<6} {count:6d} {end:9.1f} {end / base_end:8.2f} {steady:9.1f} "
            f"{steady / base_steady:8.2f}"
        )


if __name__ == "__main__":
    main()
