"""Inference speed of the full exported SALAD model on this machine: torch eager against OpenVINO variants.

One run measures, on the same inputs and machine, images/s and latency at batch 1 and batch 32 for:

* torch eager (CPU, f32): ``Salad.forward``, i.e. pre-processor, networks and post-processor;
* OpenVINO, FP32 IR, with ``INFERENCE_PRECISION_HINT=f32`` (exact), with no hint (the plugin's default: bf16
  where AVX512-BF16 / AMX exist, else f32) and with ``bf16`` where the CPU has it; each row names the
  precision the plugin actually ran;
* OpenVINO, FP16 IR (weights stored in f16; the CPU computes in the hint's precision, here f32);
* OpenVINO, INT8 IR (NNCF post-training quantisation calibrated on synthetic scans), hint f32 and no hint
  (the layers left in floating point then run in the plugin's default precision).

All graphs hold the pre- and post-processing (resize, scaling, normalisation, thresholds). The FP32 IR comes
from anomalib's ``to_openvino``; the FP16 and INT8 IRs are derived from it exactly as anomalib derives them
(``ov.save_model(compress_to_fp16=True)`` and ``Salad._post_training_quantization_ov``), which
saves two more traces of a large model. The last column is the largest score difference to torch eager on
the largest batch, relative to the largest torch score (normalised scores in [0, 1]; an untrained model gets
placeholder normalisation constants from four random images, see :func:`fit_placeholder_normalisation`).
The GFLOP/s column counts the scoring path's convolutions only, to compare with the CPU's peak.

Usage:
    python benchmarks/inference_speed.py                      # untrained default 256x256 SALAD
    python benchmarks/inference_speed.py --checkpoint model.ckpt --seconds 5
"""

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openvino as ov
import torch

from anomalib_salad import Salad, SyntheticScans
from anomalib_salad.deploy import precision_name
from anomalib_salad.model.export import load_salad_checkpoint


@dataclass
class Result:
    """Timing of one configuration at one batch size."""

    name: str
    batch: int
    latency_ms: float
    images_per_s: float
    score_diff: float
    size_mb: float | None


def cpu_name() -> str:
    """CPU model as ``lscpu`` prints it (``Model name``)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def time_calls(run: Callable[[], np.ndarray], batch: int, seconds: float, min_calls: int) -> tuple[float, float]:
    """Median latency (ms) and throughput (images/s) of ``run`` after at least one second of warm-up."""
    # Warm-up: allocations, oneDNN primitive creation, OpenVINO shape inference for a new batch size; torch
    # eager needs a few dozen calls of a small model before it settles.
    start = time.perf_counter()
    run()
    while time.perf_counter() - start < 1.0:
        run()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < seconds:
        begin = time.perf_counter()
        run()
        times.append(time.perf_counter() - begin)
    return statistics.median(times) * 1e3, batch * len(times) / sum(times)


def ir_size_mb(xml: Path) -> float:
    """Size of ``model.xml`` plus ``model.bin`` in MB (10^6 bytes)."""
    return (xml.stat().st_size + xml.with_suffix(".bin").stat().st_size) / 1e6


def fit_placeholder_normalisation(model: Salad, image_size: int) -> None:
    """Give an untrained model finite normalisation constants, as validation would.

    An unfitted post-processor holds NaN min/max/thresholds; the graph then differs from a trained one, and
    OpenVINO cannot compile its INT8 version (the ``ClampTransformation`` fails on NaN bounds).
    """
    with torch.inference_mode():
        images = torch.rand(4, 3, image_size, image_size, generator=torch.Generator().manual_seed(1))
        raw = model.model(model.pre_processor(images))
    post = model.post_processor
    for name, values in (("image", raw.pred_score), ("pixel", raw.anomaly_map)):
        getattr(post, f"{name}_min").fill_(values.min().item())
        getattr(post, f"{name}_max").fill_(values.max().item())
        getattr(post, f"_{name}_threshold").fill_(values.median().item())


def build_irs(model: Salad, work: Path, image_size: int, calibration_images: int) -> dict[str, Path]:
    """FP32, FP16 and INT8 IRs of ``model`` under ``work``."""
    fp32 = model.to_openvino(work / "fp32", onnx_kwargs={"opset_version": 18})
    core = ov.Core()
    fp16 = work / "fp16" / "model.xml"
    ov.save_model(core.read_model(fp32), fp16, compress_to_fp16=True)
    # Half of the synthetic test split becomes the validation split that anomalib calibrates on.
    datamodule = SyntheticScans(
        root=work / "scans",
        image_size=image_size,
        num_train=4,
        num_test=calibration_images,
        eval_batch_size=8,
    )
    int8 = work / "int8" / "model.xml"
    # The INT8_PTQ step that to_openvino(compression_type=INT8_PTQ) runs after the conversion (Salad's own).
    quantized = model._post_training_quantization_ov(core.read_model(fp32), datamodule)
    ov.save_model(quantized, int8, compress_to_fp16=False)
    return {"fp32": fp32, "fp16": fp16, "int8": int8}


def compile_variants(irs: dict[str, Path], threads: int) -> tuple[dict[str, ov.CompiledModel], dict[str, float]]:
    """Compiled OpenVINO models by row name, and their IR sizes in MB."""
    core = ov.Core()
    requests = [("FP32 IR", irs["fp32"], "f32"), ("FP32 IR", irs["fp32"], None)]
    if "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        requests.append(("FP32 IR", irs["fp32"], "bf16"))
    else:
        print("this CPU has no bf16 support in OpenVINO (no AVX512-BF16/AMX): a bf16 hint would run f32")
    # INT8 IRs keep some layers in floating point (Salad's latent end); the hint decides their precision.
    requests += [("FP16 IR", irs["fp16"], "f32"), ("INT8 IR", irs["int8"], "f32"), ("INT8 IR", irs["int8"], None)]
    compiled, sizes = {}, {}
    for ir_name, xml, hint in requests:
        properties = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
        if hint is not None:
            properties["INFERENCE_PRECISION_HINT"] = hint
        model_on_cpu = core.compile_model(xml, "CPU", properties)
        # The precision the plugin runs, which is not always the one asked for.
        ran = precision_name(model_on_cpu.get_property("INFERENCE_PRECISION_HINT"))
        name = f"OpenVINO {ir_name}, {'default=' if hint is None else ''}{ran}"
        compiled[name], sizes[name] = model_on_cpu, ir_size_mb(xml)
    return compiled, sizes


def gflop_per_image(model: Salad, image_size: int) -> float:
    """Convolution GFLOP (2 x multiply-adds) of one image through the scoring path, counted with forward hooks."""
    macs = 0

    def count(module: torch.nn.Module, _: tuple, output: torch.Tensor) -> None:
        nonlocal macs
        # Per output element: in_channels x kernel area multiply-adds (transposed: per input element instead).
        if isinstance(module, torch.nn.ConvTranspose2d):
            macs += module.in_channels * module.out_channels * module.weight[0, 0].numel() * output[0, 0].numel() // 4
        else:
            macs += output[0].numel() * module.in_channels * module.weight[0, 0].numel()

    convolutions = [m for m in model.model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)]
    hooks = [m.register_forward_hook(count) for m in convolutions]
    with torch.inference_mode():
        model(torch.rand(1, 3, image_size, image_size))
    for hook in hooks:
        hook.remove()
    return 2 * macs / 1e9


def print_table(results: list[Result], gflop: float) -> None:
    """Markdown table with ratios to torch eager at the same batch size and the convolution GFLOP/s reached."""
    header = (
        f"| {'configuration':<30} | {'IR MB':>6} | {'batch':>5} | {'latency ms':>10} | {'images/s':>8} | "
        f"{'x torch':>7} | {'GFLOP/s':>7} | {'score diff':>10} |"
    )
    print(header)
    print("|" + "|".join("-" * len(cell) for cell in header.split("|")[1:-1]) + "|")
    eager = {r.batch: r.images_per_s for r in results if r.name.startswith("torch")}
    # Score differences from the largest batch: one image's normalised score is often clamped to 0 or 1.
    largest = max(r.batch for r in results)
    drift = {r.name: r.score_diff for r in results if r.batch == largest}
    for r in results:
        size = f"{r.size_mb:.1f}" if r.size_mb is not None else "-"
        print(
            f"| {r.name:<30} | {size:>6} | {r.batch:>5} | {r.latency_ms:>10.1f} | {r.images_per_s:>8.2f} | "
            f"{r.images_per_s / eager[r.batch]:>7.2f} | {gflop * r.images_per_s:>7.0f} | {drift[r.name]:>10.1e} |"
        )


def main() -> None:
    """Export, time every configuration, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="Salad .ckpt; default: an untrained default Salad()")
    parser.add_argument("--image-size", type=int, default=256, help="input side in pixels (default: 256)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--seconds", type=float, default=3.0, help="timing budget per configuration (default: 3)")
    parser.add_argument("--min-calls", type=int, default=3, help="timed calls at least (default: 3)")
    parser.add_argument("--calibration-images", type=int, default=64, help="INT8 calibration images (default: 64)")
    parser.add_argument("--work-dir", type=Path, help="where IRs go (default: a temporary folder)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch and OpenVINO (default: all cores)")
    args = parser.parse_args()
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    load_before = os.getloadavg()[0]

    torch.manual_seed(0)
    if args.checkpoint:
        model = load_salad_checkpoint(args.checkpoint)
    else:
        model = Salad().eval()
        fit_placeholder_normalisation(model, args.image_size)
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work_dir or Path(temporary)
        start = time.perf_counter()
        irs = build_irs(model, work, args.image_size, args.calibration_images)
        print(f"exported FP32/FP16/INT8 IRs in {time.perf_counter() - start:.0f} s")
        compiled, sizes = compile_variants(irs, threads)
        results: list[Result] = []
        rng = np.random.default_rng(0)
        for batch in args.batch_sizes:
            images = rng.random((batch, 3, args.image_size, args.image_size), dtype=np.float32)
            tensor = torch.from_numpy(images)

            def torch_run(tensor: torch.Tensor = tensor) -> np.ndarray:
                with torch.inference_mode():
                    return model(tensor).pred_score.numpy()

            reference = torch_run()
            latency, throughput = time_calls(torch_run, batch, args.seconds, args.min_calls)
            results.append(Result("torch eager, f32", batch, latency, throughput, 0.0, None))
            for name, model_on_cpu in compiled.items():
                request = model_on_cpu.create_infer_request()

                def ov_run(request: ov.InferRequest = request, images: np.ndarray = images) -> np.ndarray:
                    return request.infer({0: images})["pred_score"]

                latency, throughput = time_calls(ov_run, batch, args.seconds, args.min_calls)
                scores = ov_run()
                diff = float(np.abs(scores - reference).max() / max(np.abs(reference).max(), 1e-12))
                results.append(Result(name, batch, latency, throughput, diff, sizes[name]))
            print(f"batch {batch} done")

    print()
    # Other processes on the machine stretch latencies (threads wait for each other at every layer).
    print(f"load average (1 min) before/after: {load_before:.1f}/{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(
        f"CPU: {cpu_name()}; {threads} threads for torch and OpenVINO; torch {torch.__version__}, "
        f"OpenVINO {ov.__version__}; model input {args.image_size}x{args.image_size}, "
        f"{'checkpoint ' + str(args.checkpoint) if args.checkpoint else 'untrained default Salad()'}"
    )
    gflop = gflop_per_image(model, args.image_size)
    print(f"scoring path E, D, E: {gflop:.2f} GFLOP of convolutions per image")
    print_table(results, gflop)


if __name__ == "__main__":
    main()
