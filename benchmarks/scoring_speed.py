"""Scoring throughput of ``salad-score`` on PNG, DICOM per transfer syntax and NIfTI, and against the example script.

Writes the same synthetic scans (:func:`anomalib_salad.data.synthetic_scan`) as 8-bit PNG, as 12-bit DICOM with
rescale and window in each transfer syntax there is an encoder for here (uncompressed, RLE, JPEG-LS lossless,
JPEG 2000 lossless, JPEG lossless SV1, 12-bit JPEG extended, and 8-bit JPEG baseline), and as one NIfTI volume,
then prints three tables:

* reading: milliseconds per image and images/s through :mod:`anomalib_salad.data.reader` (the reader of training and
  scoring), best of ``--repeats``, with the ratios to uncompressed DICOM and to PNG;
* scoring: images/s of ``salad-score`` run as a user runs it (a fresh process, model compiled, CSV written) on
  each input, end to end and in steady state (``(N - 1) / (t(N) - t(1))``: process start and model compilation
  removed), side by side as ratios to uncompressed DICOM;
* the same for ``examples/deploy_openvino.py`` on PNG and uncompressed DICOM, with ``salad-score``'s ratio to it.

All use f32 and no overlays. RLE and JPEG 2000 are written by pydicom's own encoders, the JPEG family and JPEG-LS
by imagecodecs (installed with anomalib) and Pillow; a syntax without an encoder here is left out and named.
Decoding uses whatever pydicom plugins are installed (the declared pylibjpeg ones).

Without ``--model`` it trains a SALAD of ``--image-size`` for one step and exports it (needs torch and anomalib);
pass the ``model.xml`` of a real export to measure that model. Run it on an idle machine: the numbers move with
any other load. The defaults take a few minutes on 2 cores.

Usage:
    python benchmarks/scoring_speed.py                                  # 200 images of 256 px, a 64 px model
    python benchmarks/scoring_speed.py --model exports/weights/openvino/model.xml --images 1000 --size 512
    python benchmarks/scoring_speed.py --images 8 --size 64 --repeats 1 # a quick look that it runs
"""

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anomalib_salad.data import reader, synthetic_scan  # noqa: E402  (after the path insert: a checkout runs as is)

UNCOMPRESSED = "dicom"  # the folder every DICOM ratio is taken to
# Short names of the transfer syntaxes (pydicom's names run to 90 characters).
LABELS = {
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2.5": "RLE Lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless",
    "1.2.840.10008.1.2.4.50": "JPEG Baseline (8-bit)",
    "1.2.840.10008.1.2.4.51": "JPEG Extended (12-bit)",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless SV1",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
}


def _pillow_jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)  # baseline (process 1)
    return buffer.getvalue()


def _codecs() -> dict[str, tuple[str, int, Callable[[np.ndarray], bytes] | None]]:
    """``folder: (transfer syntax UID, bits stored, encoder of one frame)``; encoder ``None``: pydicom's own."""
    from pydicom import uid  # noqa: PLC0415

    codecs: dict[str, tuple[str, int, Callable[[np.ndarray], bytes] | None]] = {
        "dicom_rle": (uid.RLELossless, 12, None),
        "dicom_j2k": (uid.JPEG2000Lossless, 12, None),
        "dicom_jpeg_baseline": (uid.JPEGBaseline8Bit, 8, _pillow_jpeg),
    }
    try:
        import imagecodecs  # noqa: PLC0415  (anomalib installs it; the reader does not need it)
    except ImportError:
        return codecs
    codecs["dicom_jpeg_ls"] = (uid.JPEGLSLossless, 12, imagecodecs.jpegls_encode)
    codecs["dicom_jpeg_lossless"] = (
        uid.JPEGLosslessSV1,
        12,
        lambda pixels: imagecodecs.jpeg8_encode(pixels, lossless=True, predictor=1, bitspersample=12),
    )
    codecs["dicom_jpeg_extended"] = (
        uid.JPEGExtended12Bit,
        12,
        lambda pixels: imagecodecs.jpeg8_encode(pixels, level=90, bitspersample=12),
    )
    return codecs


def _dicom(scan: np.ndarray, bits: int) -> object:
    """An uncompressed CT dataset of the 8-bit ``scan`` stored with ``bits`` (8 or 12), rescale and window set."""
    from pydicom.dataset import Dataset, FileMetaDataset  # noqa: PLC0415
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid  # noqa: PLC0415

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID = CTImageStorage, ExplicitVRLittleEndian
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta, ds.SOPClassUID, ds.SOPInstanceUID = meta, CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    stored = scan if bits == 8 else scan.astype(np.uint16) * 16  # 12-bit, as a CT or MR export stores it
    ds.set_pixel_data(stored, photometric_interpretation="MONOCHROME2", bits_stored=bits)
    scale = 2 ** (bits - 8)
    ds.RescaleSlope, ds.RescaleIntercept, ds.WindowCenter, ds.WindowWidth = 1, -1024, 64 * scale, 256 * scale
    return ds


def write_images(folder: Path, count: int, size: int, seed: int = 0) -> tuple[dict[str, Path], dict[str, str]]:
    """The same scans as PNG, DICOM in each transfer syntax with an encoder, and one NIfTI volume.

    Returns:
        tuple[dict[str, Path], dict[str, str]]: The folder of each input, and the transfer syntax of each DICOM one
        (``"no encoder: ..."`` for those left out).
    """
    import nibabel as nib  # noqa: PLC0415
    import pydicom  # noqa: PLC0415
    from pydicom.encaps import encapsulate  # noqa: PLC0415
    from pydicom.uid import UID, ExplicitVRLittleEndian  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    codecs = _codecs()
    names = ["png", UNCOMPRESSED, *sorted(codecs), "nifti"]
    folders = {name: folder / name for name in names}
    syntaxes = {UNCOMPRESSED: f"{LABELS[ExplicitVRLittleEndian]} ({ExplicitVRLittleEndian})"}
    for path in folders.values():
        path.mkdir(parents=True, exist_ok=True)
    volume = np.zeros((size, size, count), np.int16)
    for index in range(count):
        scan = synthetic_scan(rng, size, lesion=index % 2 == 1)
        name = f"{index:05d}.dcm"
        Image.fromarray(scan).save(folders["png"] / f"{index:05d}.png")
        plain = _dicom(scan, 12)
        plain.save_as(folders[UNCOMPRESSED] / name, enforce_file_format=True)
        for folder_name, (syntax, bits, encode) in codecs.items():
            if folder_name not in folders:
                continue  # its encoder failed on an earlier image
            ds = _dicom(scan, bits)  # a fresh dataset: compress() changes it in place
            try:
                if encode is None:
                    ds.compress(syntax)
                else:
                    ds.PixelData = encapsulate([encode(ds.pixel_array)])
                    ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
                    ds.file_meta.TransferSyntaxUID = syntax
            except Exception as error:  # a missing plugin or an imagecodecs build without that mode
                syntaxes[folder_name] = f"no encoder: {type(error).__name__}: {error}"[:100]
                del folders[folder_name]
                continue
            ds.save_as(folders[folder_name] / name, enforce_file_format=True)
            syntaxes[folder_name] = f"{LABELS.get(syntax, UID(syntax).name)} ({syntax})"
        volume[..., index] = scan.astype(np.int16) * 16
    nib.save(nib.Nifti1Image(volume, np.eye(4)), folders["nifti"] / "volume.nii.gz")
    for folder_name, path in list(folders.items()):
        if folder_name.startswith("dicom_") and not any(path.iterdir()):
            del folders[folder_name]
        elif folder_name.startswith("dicom"):
            stored = pydicom.dcmread(next(path.iterdir()), stop_before_pixels=True).file_meta.TransferSyntaxUID
            assert f"({stored})" in syntaxes[folder_name], (folder_name, stored)
    return folders, syntaxes


def reading_cost(folders: dict[str, Path], repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` milliseconds per image through the reader, per input."""
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
            "anomalib_salad.deploy.score",
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
    """``(command, input, images, end-to-end images/s, steady images/s)`` rows.

    ``salad-score`` runs on every image input, the example script on PNG and uncompressed DICOM.
    """
    rows = []
    single = work / "single"
    single.mkdir(exist_ok=True)
    for name, folder in folders.items():
        if name == "nifti":
            continue  # one volume: no steady state to take
        one = single / name
        one.mkdir(exist_ok=True)
        first = sorted(folder.iterdir())[0]
        (one / first.name).write_bytes(first.read_bytes())
        count = len(list(folder.iterdir()))
        commands = ("example script", "salad-score") if name in {"png", UNCOMPRESSED} else ("salad-score",)
        for command in commands:
            totals, starts = [], []
            for attempt in range(repeats):
                output = work / f"out_{name}_{attempt}"
                totals.append(_run(_commands(model, folder, output)[command]))
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
    from anomalib_salad.model.export import export_salad  # noqa: PLC0415

    datamodule = SyntheticScans(
        root=work / "train", image_size=image_size, num_train=16, num_test=8, train_batch_size=8, eval_batch_size=8
    )
    engine = Engine(max_steps=1, default_root_dir=work / "run", logger=False, enable_progress_bar=False)
    engine.fit(Salad(image_size=image_size), datamodule=datamodule)
    return export_salad(engine.trainer.checkpoint_callback.best_model_path, work / "export", "openvino")


def main() -> None:
    """Measure and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="an exported model.xml (default: make a one-step model)")
    parser.add_argument("--image-size", type=int, default=64, help="network input of the made model (default 64)")
    parser.add_argument("--images", type=int, default=200, help="images per input (default 200)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per measurement; the best counts (default 2)")
    parser.add_argument("--reading-only", action="store_true", help="only the reading table (no model, no scoring)")
    parser.add_argument("--workdir", type=Path, help="keep the files here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        work = args.workdir or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        model = None if args.reading_only else args.model or make_model(args.image_size, work)
        folders, syntaxes = write_images(work / "images", args.images, args.size)
        costs = reading_cost(folders, args.repeats)
        rows = [] if model is None else scoring_throughput(model, folders, work, args.repeats)
    print(f"\n{os.cpu_count()} CPUs; {args.images} images of {args.size}x{args.size}; model {model}")
    for name, syntax in syntaxes.items():
        if syntax.startswith("no encoder"):
            print(f"left out {name}: {syntax}")
    print("\nreading through anomalib_salad.data.reader (per image; x: images/s relative to uncompressed DICOM, PNG)")
    print(f"{'input':<20} {'transfer syntax':<48} {'ms/image':>9} {'images/s':>9} {'x uncompr.':>10} {'x PNG':>6}")
    for name, cost in costs.items():
        syntax = syntaxes.get(name, "-")
        ratio, png = costs[UNCOMPRESSED] / cost, costs["png"] / cost
        print(f"{name:<20} {syntax:<48} {cost:9.3f} {1000 / cost:9.1f} {ratio:10.2f} {png:6.2f}")
    if not rows:
        return
    print("\nsalad-score (fresh process per run, f32, no overlays; x: relative to uncompressed DICOM)")
    print(f"{'input':<20} {'images':>6} {'images/s':>9} {'x uncompr.':>10} {'steady/s':>9} {'x uncompr.':>10}")
    scored = {name: (end, steady) for command, name, _, end, steady in rows if command == "salad-score"}
    base_end, base_steady = scored[UNCOMPRESSED]
    for command, name, count, end, steady in rows:
        if command == "salad-score":
            print(f"{name:<20} {count:6d} {end:9.1f} {end / base_end:10.2f} {steady:9.1f} {steady / base_steady:10.2f}")
    print("\nagainst examples/deploy_openvino.py")
    print(f"{'command':<15} {'input':<6} {'images':>6} {'images/s':>9} {'x script':>8} {'steady/s':>9} {'x script':>8}")
    baseline = {name: (end, steady) for command, name, _, end, steady in rows if command == "example script"}
    for command, name, count, end, steady in rows:
        if name in baseline:
            base_end, base_steady = baseline[name]
            print(
                f"{command:<15} {name:<6} {count:6d} {end:9.1f} {end / base_end:8.2f} {steady:9.1f} "
                f"{steady / base_steady:8.2f}"
            )


if __name__ == "__main__":
    main()
