"""AUROC of a trained SALAD checkpoint in torch, as an FP32 OpenVINO IR and as INT8 (NNCF PTQ) IRs.

Exports the FP32 IR and the INT8 IR that ``anomalib export --compression_type INT8_PTQ`` writes for Salad
(its latent-end layers in floating point, asymmetric activations), and, for comparison, quantises the FP32
IR with anomalib's defaults for other models; both calibrate on the Folder's validation split. Scores every
test image with each at f32 inference precision, and prints the image AUROC and the largest score change,
in one run. Where the CPU's default precision is not f32 (bf16 with AVX512-BF16 or AMX), the FP32 IR and
Salad's INT8 IR are also scored at that default, which is what a deployment without a hint runs.

Usage:
    python benchmarks/int8_accuracy.py --ckpt runs/benchmark/braintumor_cpu/checkpoints/<run>.ckpt \
        --root ../shared/data/braintumor
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import openvino as ov
import torch
from anomalib.data import Folder
from anomalib.models.components.base.export_mixin import ExportMixin
from torchmetrics.functional.classification import binary_auroc

from anomalib_salad.deploy import (
    SaladInferencer,
    list_images,
    precision_name,
    read_image,
)
from anomalib_salad.model.export import export_salad, load_salad_checkpoint


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Image AUROC of raw scores."""
    return float(binary_auroc(torch.from_numpy(scores).float(), torch.from_numpy(labels).int()))


def main() -> None:
    """Export, score and compare."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, type=Path)
    parser.add_argument("--root", required=True, type=Path, help="Folder dataset: train/normal, test/{normal,abnormal}")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    paths = list_images(args.root / "test" / "normal") + list_images(args.root / "test" / "abnormal")
    labels = np.array([p.parent.name == "abnormal" for p in paths])
    images = np.stack([read_image(p) for p in paths])  # (N, H, W, 3) float in [0, 1]
    batches = [images[i : i + args.batch_size] for i in range(0, len(images), args.batch_size)]

    model = load_salad_checkpoint(args.ckpt)
    with torch.no_grad():
        torch_scores = np.concatenate(
            [model(torch.from_numpy(b).permute(0, 3, 1, 2).contiguous()).pred_score.numpy() for b in batches]
        )
    results = {"torch fp32": torch_scores}
    calibration = Folder(
        name="calibration",
        root=args.root,
        normal_dir="train/normal",
        abnormal_dir="test/abnormal",
        normal_test_dir="test/normal",
        train_batch_size=32,
        eval_batch_size=32,
        num_workers=0,
        seed=0,
    )

    def score_ir(xml: Path, hint: str | None = "f32") -> np.ndarray:
        inferencer = SaladInferencer(xml, precision_hint=hint)
        return np.concatenate([inferencer.predict(b).pred_score for b in batches])

    # The plugin's own choice when no hint is given: bf16 on CPUs with AVX512-BF16 or AMX, what deployments get.
    default = precision_name(ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT"))
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_salad(args.ckpt, Path(tmp) / "fp32", "openvino")
        results["openvino fp32 IR (f32)"] = score_ir(fp32)
        if default != "f32":
            results[f"openvino fp32 IR ({default})"] = score_ir(fp32, None)
        start = time.perf_counter()
        salad = export_salad(
            args.ckpt, Path(tmp) / "int8", "openvino", compression_type="int8_ptq", datamodule=calibration
        )
        size_mb = salad.with_suffix(".bin").stat().st_size / 1e6
        print(f"INT8_PTQ export in {time.perf_counter() - start:.0f} s ({size_mb:.1f} MB)")
        results["int8, Salad's INT8_PTQ"] = score_ir(salad)
        if default != "f32":
            results[f"int8, Salad's ({default})"] = score_ir(salad, None)
        # What anomalib's INT8_PTQ does for other models (NNCF's defaults), on the same FP32 IR.
        nncf_defaults = Path(tmp) / "int8_default" / "model.xml"
        quantized = ExportMixin._post_training_quantization_ov(ov.Core().read_model(fp32), calibration)
        ov.save_model(quantized, nncf_defaults, compress_to_fp16=False)
        results["int8, anomalib's defaults"] = score_ir(nncf_defaults)

    print(f"{len(paths)} test images ({labels.sum()} abnormal) from {args.root}")
    print(f"{'model':<30} {'AUROC':>7} {'d AUROC':>8} {'max |d score|':>14}")
    reference = auroc(results["torch fp32"], labels)
    for name, scores in results.items():
        value = auroc(scores, labels)
        diff = np.abs(scores - results["torch fp32"]).max()
        print(f"{name:<30} {value:>7.4f} {value - reference:>+8.4f} {diff:>14.2e}")


if __name__ == "__main__":
    main()
