"""Score a folder of images with an exported SALAD model, using OpenVINO, NumPy and Pillow only.

A short example of the inference API, one image at a time. For archives use the ``salad-score`` command
(:mod:`anomalib_salad.deploy.score`): DICOM frames and NIfTI slices, asynchronous inference on every core, a progress
bar, ``errors.csv``, ``--resume`` and ``--shard K/N``. Both read files with :mod:`anomalib_salad.data.reader`, the
reader that training uses.

Writes ``scores.csv`` (``path,score,label``) and one heat-map overlay PNG per image into the output folder.
``score`` is the normalised anomaly score in ``[0, 1]``: the threshold fitted on the validation set maps
to 0.5, so ``label`` is ``anomalous`` for scores above 0.5 and ``normal`` otherwise.

Export the model first, e.g.::

    anomalib export --model anomalib_salad.Salad --export_type openvino --ckpt_path results/.../model.ckpt

then::

    python examples/deploy_openvino.py --model results/.../weights/openvino/model.xml \
        --input datasets/salad_synthetic/test/abnormal --output predictions

No torch, Lightning or anomalib is imported: ``anomalib_salad.deploy`` needs only NumPy, Pillow and OpenVINO,
and the package loads its training classes lazily. On an inference-only machine
``pip install --no-deps anomalib-salad openvino numpy pillow`` is enough. (``anomalib.deploy.
OpenVINOInferencer`` would do as well, but it imports torch and ``anomalib.data``, i.e. the training stack,
and rejects grayscale arrays.)

Precision: OpenVINO's CPU plugin runs an FP32 IR in bfloat16 by default on CPUs with AVX512-BF16 or AMX
(e.g. Xeon Cooper Lake, Sapphire Rapids and later; AMD Zen 4 and later). That is faster but moves scores
by ~1e-2, enough to flip images near the threshold. This script therefore defaults to ``--precision f32``, which matches
the torch model to ~1e-5; pass ``--precision default`` (OpenVINO's choice) or ``bf16`` for speed.
"""

import argparse
import csv
import sys
from pathlib import Path

from PIL import Image


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="model.xml (with model.bin) or model.onnx")
    parser.add_argument("--input", required=True, type=Path, help="folder of images, or one image")
    parser.add_argument("--output", required=True, type=Path, help="folder for scores.csv and overlays")
    parser.add_argument("--device", default="CPU", help="OpenVINO device: CPU, GPU, NPU, AUTO (default: CPU)")
    parser.add_argument(
        "--precision",
        default="f32",
        choices=["f32", "bf16", "f16", "default"],
        help="INFERENCE_PRECISION_HINT; 'default' lets OpenVINO choose, which is bf16 on CPUs with AVX512-BF16/AMX "
        "(faster, scores drift ~1e-2). Default: f32 (matches torch)",
    )
    parser.add_argument("--alpha", type=float, default=0.4, help="heat-map opacity in the overlays (default: 0.4)")
    parser.add_argument("--no-overlays", action="store_true", help="write only scores.csv")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Score the images; bad images are reported and skipped, the exit status is 1 if any were.

    Args:
        argv: Arguments instead of ``sys.argv[1:]``.

    Returns:
        int: Exit status.
    """
    args = parse_args(argv)
    from anomalib_salad import deploy  # noqa: PLC0415  (after argument parsing, so --help is instant)

    try:
        inferencer = deploy.SaladInferencer(
            args.model,
            device=args.device,
            precision_hint=None if args.precision == "default" else args.precision,
        )
        files = deploy.list_images(args.input)
    except (FileNotFoundError, deploy.CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{args.model} on {args.device}, inference precision {inferencer.precision}: {len(files)} image(s)")

    args.output.mkdir(parents=True, exist_ok=True)
    failures, overlay_names = 0, set()
    with (args.output / "scores.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "score", "label"])
        for path in files:
            # One image per call: files in a folder may differ in size; the graph resizes each one.
            try:
                image = deploy.read_image(path)
                prediction = inferencer.predict(image)
            except (deploy.InputImageError, FileNotFoundError) as error:
                print(f"skipped: {error}", file=sys.stderr)
                failures += 1
                continue
            score, anomalous = float(prediction.pred_score[0]), bool(prediction.pred_label[0])
            writer.writerow([str(path), f"{score:.6f}", "anomalous" if anomalous else "normal"])
            if not args.no_overlays:
                overlay = deploy.heatmap_overlay(image, prediction.anomaly_map[0], alpha=args.alpha)
                name = f"{path.stem}_overlay.png"
                if name in overlay_names:  # a.png and a.jpg in one folder
                    name = f"{path.stem}_{path.suffix.lstrip('.')}_overlay.png"
                overlay_names.add(name)
                Image.fromarray(overlay).save(args.output / name)
    scored = len(files) - failures
    print(f"scored {scored} image(s) -> {args.output / 'scores.csv'}" + (f"; {failures} skipped" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
