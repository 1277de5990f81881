"""Export and OpenVINO deployment of SALAD: exports from a reloaded checkpoint, graph contents, parity, bad input.

One tiny model is trained once per module (a second or two); exports run in fresh processes, as a user
would run them after training. Parity tests pin ``INFERENCE_PRECISION_HINT=f32``: OpenVINO's CPU default
on CPUs with AVX512-BF16 or AMX is bf16, which moves normalised scores by ~5e-2.
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning
import numpy as np
import onnx
import openvino as ov
import pytest
import torch
from anomalib.data import Folder
from anomalib.deploy import CompressionType, ExportType, OpenVINOInferencer
from anomalib.engine import Engine
from anomalib.models import Padim
from PIL import Image, UnidentifiedImageError
from torchmetrics.functional.classification import binary_auroc
from torchvision.transforms.v2 import InterpolationMode, Resize

from anomalib_salad import Salad, SaladOpenVINO
from anomalib_salad.data import reader
from anomalib_salad.deploy import (
    CheckpointError,
    InputImageError,
    SaladInferencer,
    read_image,
    score,
    to_model_input,
)
from anomalib_salad.evaluation.benchmark_job import SaladBenchmarkJob
from anomalib_salad.model.export import export_salad, load_salad_checkpoint
from anomalib_salad.model.export_hooks import _is_latent_end_convolution
from anomalib_salad.model.post_processing import RankPreservingPostProcessor

from .conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
# Tolerance of OpenVINO f32 against torch on the normalised outputs. Both run f32 but with different
# kernels and summation orders (oneDNN vs ATen): ~1e-6 relative on the raw score after 17 conv/norm
# layers; normalisation divides by (max - min) of the validation scores, which amplifies this ~10x for a
# barely trained model. 1e-4 relative + 2e-5 absolute leaves headroom yet catches bf16 (~5e-2) and any
# pre-processing mismatch (e.g. antialiased vs plain bicubic, ~1e-1).
RTOL, ATOL = 1e-4, 2e-5

EXPORT_IN_NEW_PROCESS = """
import json, sys
from anomalib.deploy import ExportType
from anomalib.engine import Engine
from anomalib_salad import Salad
checkpoint, root, tiny = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
engine = Engine(default_root_dir=root, logger=False)
paths = {}
for kind in (ExportType.TORCH, ExportType.ONNX, ExportType.OPENVINO):
    onnx_kwargs = None if kind == ExportType.TORCH else {"opset_version": 18}
    path = engine.export(model=Salad(**tiny), export_type=kind, export_root=root, ckpt_path=checkpoint,
                         onnx_kwargs=onnx_kwargs)
    paths[kind.value] = str(path)
print("PATHS=" + json.dumps(paths))
"""


def _run(command: list[str], cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    environment = os.environ | {"PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        command, check=False, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=environment
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _folder(root: Path) -> Folder:
    return Folder(
        name="tiny",
        root=root,
        normal_dir="train/normal",
        abnormal_dir="test/abnormal",
        normal_test_dir="test/normal",
        train_batch_size=16,
        eval_batch_size=16,
        num_workers=0,
        seed=0,
    )


@pytest.fixture(scope="module")
def checkpoint(tiny_scans: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SALAD (with discriminators and restoration decoder) trained for one epoch."""
    torch.manual_seed(0)
    engine = Engine(
        max_epochs=1, default_root_dir=tmp_path_factory.mktemp("run"), logger=False, enable_progress_bar=False
    )
    engine.fit(Salad(**TINY), datamodule=_folder(tiny_scans))
    return Path(engine.trainer.checkpoint_callback.best_model_path)


@pytest.fixture(scope="module")
def exports(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """TORCH, ONNX and OPENVINO exports made by ``Engine.export(ckpt_path=...)`` in a new process."""
    root = tmp_path_factory.mktemp("export")
    tiny = json.dumps({key: list(value) if isinstance(value, tuple) else value for key, value in TINY.items()})
    result = _run([sys.executable, "-c", EXPORT_IN_NEW_PROCESS, str(checkpoint), str(root), tiny], cwd=root)
    line = next(line for line in result.stdout.splitlines() if line.startswith("PATHS="))
    return {kind: Path(path) for kind, path in json.loads(line.removeprefix("PATHS=")).items()}


@pytest.fixture(scope="module")
def torch_model(checkpoint: Path) -> Salad:
    return load_salad_checkpoint(checkpoint)


@pytest.fixture(scope="module")
def inferencer(exports: dict[str, Path]) -> SaladInferencer:
    return SaladInferencer(exports["openvino"], device="CPU", precision_hint="f32")


@pytest.fixture(scope="module")
def images(tiny_scans: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Grayscale scans as they are, and tinted RGB copies of another size (the graph resizes them)."""
    gray = (
        sorted((tiny_scans / "test" / "abnormal").glob("*.png"))[:3]
        + sorted(
            (tiny_scans / "test" / "normal").glob("*.png"),
        )[:3]
    )
    folder = tmp_path_factory.mktemp("rgb")
    rgb = []
    for index, path in enumerate(gray):
        value = np.asarray(Image.open(path), dtype=np.float32)
        tinted = np.stack([value, value * 0.8, value * 0.6], axis=-1).round().astype(np.uint8)
        rgb.append(folder / f"rgb_{index}.png")
        Image.fromarray(tinted).resize((48, 40), Image.Resampling.BILINEAR).save(rgb[-1])
    return {"gray": gray, "rgb": rgb}


def _torch_predict(model: Salad, batch: np.ndarray) -> dict[str, np.ndarray]:
    """The reloaded model's full forward: pre-processor, network, post-processor."""
    with torch.no_grad():
        output = model(torch.from_numpy(batch))
    return {
        "pred_score": output.pred_score.numpy(),
        "pred_label": output.pred_label.numpy().astype(bool),
        "anomaly_map": output.anomaly_map.numpy()[:, 0],
    }


def _assert_parity(scores: np.ndarray, labels: np.ndarray, maps: np.ndarray | None, reference: dict) -> None:
    np.testing.assert_allclose(scores, reference["pred_score"], rtol=RTOL, atol=ATOL)
    # A score within the tolerance of the threshold (0.5) may fall either side in f32; every other label must match.
    decided = np.abs(reference["pred_score"] - 0.5) > 10 * ATOL
    np.testing.assert_array_equal(labels[decided], reference["pred_label"][decided])
    if maps is not None:
        np.testing.assert_allclose(maps, reference["anomaly_map"], rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------------------------------------------------------
# Export from a reloaded checkpoint
# ---------------------------------------------------------------------------------------------------------------


def test_engine_export_from_checkpoint_in_new_process(exports: dict[str, Path], torch_model: Salad) -> None:
    assert exports["torch"].suffix == ".pt"
    assert exports["onnx"].suffix == ".onnx"
    assert exports["openvino"].with_suffix(".bin").is_file()
    # The pre-processing is inside the graph: the antialiased bicubic resize from any size as two matrix products
    # (AntialiasedResize; no ONNX Resize, which OpenVINO would compute wrongly with antialiasing), then scaling.
    graph = onnx.load(exports["onnx"], load_external_data=False).graph
    op_types = [node.op_type for node in graph.node]
    assert op_types.count("Resize") == 0
    assert op_types.count("MatMul") == 2
    assert [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim][1] == 3
    ir = ov.Core().read_model(exports["openvino"])
    assert [op.get_type_name() for op in ir.get_ordered_ops()].count("Interpolate") == 0
    assert str(ir.inputs[0].get_partial_shape()) == "[?,3,?,?]"
    # The torch export pickles the whole module; it runs like the checkpoint.
    exported = torch.load(exports["torch"], weights_only=False)["model"].eval()
    batch = to_model_input(np.random.default_rng(0).random((2, 40, 48, 3), dtype=np.float32))
    reference = _torch_predict(torch_model, batch)
    np.testing.assert_allclose(_torch_predict(exported, batch)["pred_score"], reference["pred_score"], rtol=1e-6)


def test_cli_export_openvino_from_checkpoint(
    checkpoint: Path,
    tmp_path: Path,
    torch_model: Salad,
    images: dict[str, list[Path]],
) -> None:
    command = [
        str(Path(sys.executable).with_name("anomalib")),
        "export",
        "--model",
        "anomalib_salad.Salad",
        "--export_type",
        "openvino",
        "--ckpt_path",
        str(checkpoint),
        "--default_root_dir",
        str(tmp_path),
    ]
    _run(command, cwd=tmp_path)
    xml = tmp_path / "weights" / "openvino" / "model.xml"
    prediction = SaladInferencer(xml).predict(images["gray"])
    reference = _torch_predict(torch_model, to_model_input(np.stack([read_image(p) for p in images["gray"]])))
    _assert_parity(prediction.pred_score, prediction.pred_label, prediction.anomaly_map, reference)


def test_graph_holds_only_the_inference_path(exports: dict[str, Path]) -> None:
    reference = Salad(**TINY).model
    assert reference.image_discriminator is not None
    assert reference.restoration_decoder is not None
    inference_parameters = sum(p.numel() for m in (reference.encoder, reference.decoder) for p in m.parameters())
    ir = ov.Core().read_model(exports["openvino"])
    constants = [op for op in ir.get_ordered_ops() if op.get_type_name() == "Constant"]
    float_values = sum(
        int(np.prod(op.get_output_shape(0))) for op in constants if op.get_output_element_type(0).is_real()
    )
    # Encoder and decoder, plus a few scalars (Normalize, thresholds, slopes); the restoration decoder alone
    # has as many weights as the decoder, and the discriminators > 1000.
    assert inference_parameters <= float_values < inference_parameters + 200
    names = {name for op in constants for name in op.output(0).get_names()}
    assert any(name.startswith("model.encoder.") for name in names)
    assert any(name.startswith("model.decoder.") for name in names)
    assert not [name for name in names if "discriminator" in name or "restoration" in name]
    # Encoder twice (E(x) and E(D(E(x)))), decoder once with each transposed convolution as four phase
    # convolutions (PhaseConvTranspose2d); no PatchGAN convolutions.
    op_types = [op.get_type_name() for op in ir.get_ordered_ops()]
    levels = 5  # log2(32)
    assert op_types.count("Convolution") == 2 * levels + 4 * levels
    assert op_types.count("ConvolutionBackpropData") == 0
    # Post-processing as FittedPostProcessor: min-max scaling, then one comparison each for label and mask;
    # none of anomalib's where-selected cases for missing statistics or a zero range.
    assert op_types.count("Select") == 0
    assert op_types.count("Greater") == 2
    onnx_names = [init.name for init in onnx.load(exports["onnx"], load_external_data=False).graph.initializer]
    assert not [name for name in onnx_names if "discriminator" in name or "restoration" in name]


def test_int8_ptq_export(checkpoint: Path, tiny_scans: Path, tmp_path: Path, exports: dict[str, Path]) -> None:
    path = Engine(default_root_dir=tmp_path, logger=False).export(
        model=Salad(**TINY),
        export_type=ExportType.OPENVINO,
        export_root=tmp_path,
        ckpt_path=checkpoint,
        compression_type=CompressionType.INT8_PTQ,
        datamodule=_folder(tiny_scans),
        onnx_kwargs={"opset_version": 18},
    )
    ir = ov.Core().read_model(path)
    assert "FakeQuantize" in [op.get_type_name() for op in ir.get_ordered_ops()]
    # Salad's INT8_PTQ leaves the encoder's last two layers (2x2 and 1x1 outputs) of both passes unquantised.
    encoder = {}  # output size -> whether each encoder convolution of that size reads quantised input
    for op in ir.get_ordered_ops():
        if op.get_type_name() == "Convolution" and op.get_output_partial_shape(0)[2].get_length() < 16:
            size = op.get_output_partial_shape(0)[2].get_length()
            if op.input_value(0).get_partial_shape()[2].get_length() == 2 * size:  # halves: an encoder layer
                encoder.setdefault(size, []).append(op.input_value(0).get_node().get_type_name() == "FakeQuantize")
    assert encoder == {8: [True, True], 4: [True, True], 2: [False, False], 1: [False, False]}
    latent_end = [op for op in ir.get_ordered_ops() if _is_latent_end_convolution(op)]
    assert [op.get_output_partial_shape(0)[2].get_length() for op in latent_end] == [2, 1, 2, 1]
    # The antialiased resize (two MatMuls) reads no quantised input either.
    matmuls = [op for op in ir.get_ordered_ops() if op.get_type_name() == "MatMul"]
    assert len(matmuls) == 2
    inputs = [value.get_node().get_type_name() for op in matmuls for value in op.input_values()]
    assert "FakeQuantize" not in inputs
    prediction = SaladInferencer(path).predict(sorted((tiny_scans / "test" / "abnormal").glob("*.png"))[:4])
    assert np.isfinite(prediction.pred_score).all()
    assert ((prediction.pred_score >= 0) & (prediction.pred_score <= 1)).all()


# ---------------------------------------------------------------------------------------------------------------
# Parity: OpenVINO (f32) against the reloaded torch model
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gray", "rgb"])
def test_parity_single_image_paths(
    kind: str,
    images: dict[str, list[Path]],
    torch_model: Salad,
    inferencer: SaladInferencer,
    exports: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # anomalib's inferencer creates ./openvino_cache
    anomalib_inferencer = OpenVINOInferencer(
        exports["openvino"], device="CPU", config={"INFERENCE_PRECISION_HINT": "f32"}
    )
    for path in images[kind]:
        reference = _torch_predict(torch_model, to_model_input(read_image(path)))
        ours = inferencer.predict(path)
        _assert_parity(ours.pred_score, ours.pred_label, ours.anomaly_map, reference)
        theirs = anomalib_inferencer.predict(path)
        _assert_parity(
            np.ravel(theirs.pred_score),
            np.ravel(theirs.pred_label).astype(bool),
            np.asarray(theirs.anomaly_map).reshape(reference["anomaly_map"].shape),
            reference,
        )


def test_parity_numpy_arrays(images: dict[str, list[Path]], torch_model: Salad, inferencer: SaladInferencer) -> None:
    path = images["gray"][0]
    gray_uint8 = np.asarray(Image.open(path))
    assert gray_uint8.ndim == 2
    reference = _torch_predict(torch_model, to_model_input(read_image(path)))
    for array in (
        gray_uint8,
        gray_uint8[..., None],
        gray_uint8[None],
        np.repeat(gray_uint8[..., None], 3, axis=-1),
        gray_uint8.astype(np.float32) / 255,
        Image.open(path),
    ):
        prediction = inferencer.predict(array)
        _assert_parity(prediction.pred_score, prediction.pred_label, prediction.anomaly_map, reference)


def test_parity_batches(images: dict[str, list[Path]], torch_model: Salad, inferencer: SaladInferencer) -> None:
    for kind in ("gray", "rgb"):
        stacked = np.stack([read_image(path) for path in images[kind]])  # (N, H, W, 3)
        reference = _torch_predict(torch_model, to_model_input(stacked))
        for batch in (stacked, stacked.transpose(0, 3, 1, 2), images[kind]):
            prediction = inferencer.predict(batch)
            assert prediction.pred_score.shape == (len(images[kind]),)
            _assert_parity(prediction.pred_score, prediction.pred_label, prediction.anomaly_map, reference)
    # Mixed sizes in one list run one by one, in order.
    mixed = [images["gray"][0], images["rgb"][0], images["gray"][1]]
    prediction = inferencer.predict(mixed)
    expected = np.concatenate([inferencer.predict(path).pred_score for path in mixed])
    np.testing.assert_array_equal(prediction.pred_score, expected)


def test_default_precision_is_reported(exports: dict[str, Path]) -> None:
    # On CPUs with AVX512-BF16/AMX OpenVINO picks bf16 unless told otherwise; f32 must stick when asked for.
    assert SaladInferencer(exports["openvino"], precision_hint="f32").precision == "f32"
    assert SaladInferencer(exports["openvino"], precision_hint=None).precision in {"f32", "bf16"}


def test_example_script_scores_a_folder_without_torch(
    exports: dict[str, Path],
    images: dict[str, list[Path]],
    inferencer: SaladInferencer,
    tmp_path: Path,
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for path in images["gray"][:2] + images["rgb"][:2]:
        (folder / f"{path.parent.name}_{path.name}").write_bytes(path.read_bytes())
    (folder / "broken.png").write_text("not an image")
    out = tmp_path / "out"
    script = (
        "import runpy, sys\n"
        f"sys.argv = ['deploy_openvino.py', '--model', {str(exports['openvino'])!r}, '--input', {str(folder)!r},"
        f" '--output', {str(out)!r}]\n"
        "try:\n"
        f"    runpy.run_path({str(ROOT / 'examples' / 'deploy_openvino.py')!r}, run_name='__main__')\n"
        "except SystemExit as done:\n"
        "    assert done.code == 1, done.code  # the broken file is skipped and reported\n"
        "assert 'torch' not in sys.modules and 'anomalib' not in sys.modules, 'training stack imported'\n"
    )
    result = _run([sys.executable, "-c", script], cwd=tmp_path)
    assert "broken.png" in result.stderr
    rows = (out / "scores.csv").read_text().splitlines()
    assert rows[0] == "path,score,label"
    assert len(rows) == 5
    for row in rows[1:]:
        path, score, label = row.split(",")
        expected = inferencer.predict(path)
        assert float(score) == pytest.approx(float(expected.pred_score[0]), abs=1e-6)
        assert label == ("anomalous" if expected.pred_label[0] else "normal")
        overlay = Image.open(out / f"{Path(path).stem}_overlay.png")
        assert overlay.size == Image.open(path).size
        assert overlay.mode == "RGB"


# ---------------------------------------------------------------------------------------------------------------
# anomalib predict / test on the exported IR (SaladOpenVINO)
# ---------------------------------------------------------------------------------------------------------------


def _copy_images(paths: list[Path], folder: Path) -> Path:
    """One folder holding ``paths``, each renamed after its parent folder so that names stay unique."""
    folder.mkdir()
    for path in paths:
        (folder / f"{path.parent.name}_{path.name}").write_bytes(path.read_bytes())
    return folder


def test_cli_predict_runs_the_exported_ir(
    exports: dict[str, Path], images: dict[str, list[Path]], tmp_path: Path
) -> None:
    folder = _copy_images(images["gray"][:2] + images["rgb"][:2], tmp_path / "in")
    command = [
        str(Path(sys.executable).with_name("anomalib")),
        "predict",
        "--model",
        "anomalib_salad.SaladOpenVINO",
        "--model.path",
        str(exports["openvino"]),
        "--data",
        str(folder),
        "--default_root_dir",
        str(tmp_path),
    ]
    _run(command, cwd=tmp_path)
    overlays = sorted(path.name for path in (tmp_path / "SaladOpenVINO").rglob("*.png"))
    assert overlays == sorted(path.name for path in folder.iterdir())


def test_engine_predict_matches_the_inferencer(
    exports: dict[str, Path], images: dict[str, list[Path]], inferencer: SaladInferencer, tmp_path: Path
) -> None:
    # Two image sizes: one image per batch, resized by the graph.
    folder = _copy_images(images["gray"] + images["rgb"], tmp_path / "in")
    engine = Engine(default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    batches = engine.predict(SaladOpenVINO(exports["openvino"], visualizer=False), data_path=folder)
    for batch in batches:
        expected = inferencer.predict(batch.image_path[0])
        # anomalib's reader and ours turn uint8 into float in different orders: ~1e-7 on the input.
        reference = {"pred_score": expected.pred_score, "pred_label": expected.pred_label}
        _assert_parity(batch.pred_score.numpy(), batch.pred_label.numpy(), None, reference)
        assert batch.anomaly_map.shape[-2:] == batch.image.shape[-2:]  # resized to the input for overlays
    assert len(batches) == len(images["gray"]) + len(images["rgb"])


def test_engine_test_evaluates_the_exported_ir(
    exports: dict[str, Path], tiny_scans: Path, inferencer: SaladInferencer, tmp_path: Path
) -> None:
    datamodule = Folder(
        name="tiny",
        root=tiny_scans,
        normal_dir="train/normal",
        abnormal_dir="test/abnormal",
        normal_test_dir="test/normal",
        eval_batch_size=16,
        num_workers=0,
        val_split_mode="none",
    )
    engine = Engine(default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    metrics = engine.test(SaladOpenVINO(exports["openvino"], visualizer=False), datamodule=datamodule)[0]
    abnormal = sorted((tiny_scans / "test" / "abnormal").glob("*.png"))
    normal = sorted((tiny_scans / "test" / "normal").glob("*.png"))
    scores = torch.from_numpy(inferencer.predict(abnormal + normal).pred_score)
    labels = torch.tensor([1] * len(abnormal) + [0] * len(normal))
    assert metrics["image_AUROC"] == pytest.approx(float(binary_auroc(scores, labels)), abs=1e-6)


def test_one_auroc_for_one_checkpoint(
    checkpoint: Path, exports: dict[str, Path], tiny_scans: Path, tmp_path: Path
) -> None:
    """Engine.test from the checkpoint (what ``anomalib test --ckpt_path`` runs), the benchmark's job, the exported IR
    and the raw scores: one AUROC, because Salad's post-processor keeps the ranking (no clamp ties)."""

    def data() -> Folder:  # a fresh one each time: a model's pre-processor attaches its transform to the datasets
        return Folder(
            name="tiny",
            root=tiny_scans,
            normal_dir="train/normal",
            abnormal_dir="test/abnormal",
            normal_test_dir="test/normal",
            eval_batch_size=16,
            num_workers=0,
            val_split_mode="none",
        )

    def engine() -> Engine:  # likewise: a trainer keeps the callbacks its last model configured
        return Engine(default_root_dir=tmp_path, logger=False, enable_progress_bar=False)

    model = Salad(**TINY, visualizer=False)
    from_checkpoint = engine().test(model, datamodule=data(), ckpt_path=checkpoint)[0]["image_AUROC"]
    assert type(model.post_processor) is RankPreservingPostProcessor
    job = SaladBenchmarkJob(accelerator="cpu", model=model, datamodule=data(), seed=0, flat_cfg={})
    job._prepare_model()
    in_benchmark = engine().test(job.model, datamodule=job.datamodule)[0]["image_AUROC"]
    exported = engine().test(SaladOpenVINO(exports["openvino"], visualizer=False), datamodule=data())[0]["image_AUROC"]
    model.eval()
    datamodule = data()
    datamodule.setup()
    raw, labels = [], []
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            raw.append(model.model(model.pre_processor.export_transform(batch.image)).pred_score)
            labels.append(batch.gt_label)
    raw_auroc = float(binary_auroc(torch.cat(raw), torch.cat(labels).int()))
    assert 0 < raw_auroc < 1
    assert from_checkpoint == pytest.approx(raw_auroc, abs=1e-6)
    assert in_benchmark == pytest.approx(raw_auroc, abs=1e-6)
    assert exported == pytest.approx(raw_auroc, abs=1e-6)


def test_exported_ir_cannot_be_trained(exports: dict[str, Path], tiny_scans: Path, tmp_path: Path) -> None:
    engine = Engine(max_epochs=1, default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    with pytest.raises(TypeError, match="cannot be trained"):
        engine.fit(SaladOpenVINO(exports["openvino"]), datamodule=_folder(tiny_scans))


# ---------------------------------------------------------------------------------------------------------------
# Bad input: wrong checkpoints, missing files, wrong channel counts, unreadable images
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    padim = Padim(backbone="resnet18", pre_trained=False, layers=["layer1"], n_features=8)
    files = {name: root / f"{name}.ckpt" for name in ("padim", "plain", "state_dict", "garbage", "empty")}
    torch.save(
        {
            "state_dict": padim.state_dict(),
            "hyper_parameters": dict(padim.hparams),
            "pytorch-lightning_version": lightning.__version__,
        },
        files["padim"],
    )
    torch.save({"weights": torch.zeros(3), "epoch": 3}, files["plain"])
    torch.save(Salad(**TINY).state_dict(), files["state_dict"])
    files["garbage"].write_text("not a checkpoint")
    files["empty"].write_bytes(b"")
    return files


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("padim", r"not written by Salad.*model\.feature_extractor"),
        ("plain", r"dict with keys \['epoch', 'weights'\].*not a Lightning checkpoint"),
        ("state_dict", r"bare state_dict of \d+ tensors"),
        ("garbage", r"not a readable PyTorch checkpoint"),
        ("empty", r"not a readable PyTorch checkpoint"),
    ],
)
def test_wrong_checkpoint_is_named(name: str, message: str, bad_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=message):
        load_salad_checkpoint(bad_checkpoints[name])
    with pytest.raises(CheckpointError, match=message):
        export_salad(bad_checkpoints[name], tmp_path)


def test_missing_checkpoint(tmp_path: Path) -> None:
    missing = tmp_path / "nope.ckpt"
    # anomalib's own error already names the file.
    with pytest.raises(FileNotFoundError, match=r"nope\.ckpt"):
        Salad.load_from_checkpoint(missing)
    with pytest.raises(FileNotFoundError, match="Salad checkpoint not found"):
        load_salad_checkpoint(missing)


def test_missing_or_wrong_exported_model(exports: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"model\.xml"):
        SaladInferencer(tmp_path / "model.xml")
    lonely = tmp_path / "lonely.xml"
    lonely.write_bytes(exports["openvino"].read_bytes())
    with pytest.raises(FileNotFoundError, match=r"lonely\.bin"):
        SaladInferencer(lonely)
    with pytest.raises(CheckpointError, match=r"expected an OpenVINO IR"):
        SaladInferencer(exports["torch"])
    # An OpenVINO model that is not an anomalib export.
    parameter = ov.opset13.parameter([1, 3, 8, 8], ov.Type.f32, name="x")
    other = ov.Model([ov.opset13.relu(parameter)], [parameter], "other")
    ov.save_model(other, tmp_path / "other.xml")
    with pytest.raises(CheckpointError, match=r"not an anomalib export of SALAD"):
        SaladInferencer(tmp_path / "other.xml")


def test_layouts_and_uint8_run_in_the_graph(
    images: dict[str, list[Path]], torch_model: Salad, inferencer: SaladInferencer
) -> None:
    # OpenVINO's PrePostProcessor transposes and scales: NumPy hands batches over as they were read.
    rgb = np.stack([np.asarray(Image.open(path).convert("RGB")) for path in images["rgb"]])  # (N, H, W, 3) uint8
    reference = _torch_predict(torch_model, to_model_input(rgb))
    for batch, layout in ((rgb, "NHWC"), (rgb.transpose(0, 3, 1, 2), "NCHW"), (rgb / np.float32(255), "NHWC")):
        prediction = inferencer.predict(batch, layout=layout)
        _assert_parity(prediction.pred_score, prediction.pred_label, prediction.anomaly_map, reference)
    compiled = inferencer.compiled_for("u8", "NHWC")
    assert compiled.input(0).get_element_type() == ov.Type.u8
    assert str(compiled.input(0).get_partial_shape()[3]) == "3"  # channels last at the model's door
    # uint8 scaled in the graph equals uint8 scaled by the reader's rule, to float32 rounding.
    as_uint8 = inferencer.predict(rgb[:1]).pred_score
    as_float = inferencer.predict(to_model_input(rgb[:1])).pred_score
    np.testing.assert_allclose(as_uint8, as_float, rtol=0, atol=1e-6)
    # A layout the rule would misread, given explicitly: (3, 3, 3) channels first.
    cube = np.random.default_rng(0).integers(0, 256, (3, 3, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_model_input(cube, layout="CHW"), reader.uint8_to_float(cube)[None])
    np.testing.assert_array_equal(to_model_input(cube), reader.uint8_to_float(cube).transpose(2, 0, 1)[None])
    with pytest.raises(InputImageError, match="layout NHWC needs 4"):
        inferencer.predict(rgb[0], layout="NHWC")
    with pytest.raises(InputImageError, match=r"layout CHW gives \d+ channels"):
        inferencer.predict(rgb[0], layout="CHW")
    with pytest.raises(InputImageError, match="not one of"):
        inferencer.predict(rgb, layout="NWHC")


@pytest.mark.parametrize(
    "shape",
    [(32, 32, 2), (32, 32, 4), (2, 32, 32), (4, 32, 32), (2, 32, 32, 4), (2, 4, 32, 32), (1, 2, 32, 32, 3)],
)
def test_wrong_channel_count(shape: tuple[int, ...], inferencer: SaladInferencer) -> None:
    array = np.zeros(shape, dtype=np.uint8)
    match = r"5 dimensions" if len(shape) == 5 else r"got (2|4) channels"
    with pytest.raises(InputImageError, match=match):
        inferencer.predict(array)


def test_anomalib_inferencer_error_on_four_channels_is_obscure(
    exports: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Why SaladInferencer validates: anomalib passes (1, H, W, 4) on and OpenVINO rejects the shape.
    monkeypatch.chdir(tmp_path)
    anomalib_inferencer = OpenVINOInferencer(exports["openvino"], device="CPU")
    with pytest.raises(RuntimeError, match="incompatible"):
        anomalib_inferencer.predict(np.zeros((32, 32, 4), dtype=np.float32))


def test_bad_values(inferencer: SaladInferencer) -> None:
    with pytest.raises(InputImageError, match=r"must be in \[0, 1\]"):
        inferencer.predict(np.full((32, 32, 3), 200.0, dtype=np.float32))
    with pytest.raises(InputImageError, match="NaN"):
        inferencer.predict(np.full((32, 32), np.nan, dtype=np.float32))
    with pytest.raises(InputImageError, match="dtype int64"):
        inferencer.predict(np.zeros((32, 32), dtype=np.int64))
    with pytest.raises(InputImageError, match="No images"):
        inferencer.predict([])


def test_unreadable_images(
    tmp_path: Path,
    inferencer: SaladInferencer,
    exports: dict[str, Path],
    images: dict[str, list[Path]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = tmp_path / "text.png"
    text.write_text("not an image")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(images["gray"][0].read_bytes()[:100])
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((32, 32), 4000, dtype=np.uint16)).save(deep)
    with pytest.raises(InputImageError, match=r"Cannot read .*text\.png"):
        inferencer.predict(text)
    with pytest.raises(InputImageError, match=r"Cannot read .*truncated\.png"):
        inferencer.predict(truncated)
    with pytest.raises(InputImageError, match="16/32-bit"):
        inferencer.predict(deep)
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        inferencer.predict(tmp_path / "missing.png")
    # anomalib's own reader already names an undecodable file clearly.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnidentifiedImageError, match=r"text\.png"):
        OpenVINOInferencer(exports["openvino"], device="CPU").predict(text)


def test_checkpoint_written_before_the_layers_exports_the_same(tmp_path: Path) -> None:
    # tests/data/README.md: a checkpoint of commit 4862592 and what that code computed.
    old = Path(__file__).parent / "data" / "salad_tiny_4862592.ckpt"
    expected = json.loads(old.with_suffix(".json").read_text())
    xml = export_salad(old, tmp_path, "openvino")
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)).numpy()
    prediction = SaladInferencer(xml, precision_hint="f32").predict(images, layout="NCHW")
    np.testing.assert_allclose(prediction.pred_score, expected["pred_score"], atol=1e-5)
    assert float(prediction.anomaly_map.sum()) == pytest.approx(expected["anomaly_map_sum"], rel=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# A model trained with an antialiased resize: the graph computes that resize itself (AntialiasedResize)
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def antialiased(tiny_scans: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny ``Salad(antialias=True)`` trained for one epoch, reloaded, its ONNX and IR exports, and 96x80 scans."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("antialiased")
    engine = Engine(max_epochs=1, default_root_dir=root, logger=False, enable_progress_bar=False)
    engine.fit(Salad(**TINY, antialias=True), datamodule=_folder(tiny_scans))
    model = load_salad_checkpoint(engine.trainer.checkpoint_callback.best_model_path).eval()
    paths = {
        kind: engine.export(model=model, export_type=kind, export_root=root / kind.value)
        for kind in (ExportType.ONNX, ExportType.OPENVINO)
    }
    large = root / "large"
    large.mkdir()
    for index, path in enumerate(sorted((tiny_scans / "test" / "abnormal").glob("*.png"))[:3]):
        Image.open(path).resize((80, 96), Image.Resampling.BICUBIC).save(large / f"scan_{index}.png")
    files = sorted(large.glob("*.png"))
    batch = to_model_input(np.stack([np.asarray(Image.open(path).convert("RGB")) for path in files]))  # 96x80
    # What validation sees: the pre-processor's own (torchvision, antialiased) resize, then the network.
    resize = model.pre_processor.transform.transforms[0]
    assert resize.antialias
    reference = _torch_predict(model, resize(torch.from_numpy(batch)).numpy())
    return {
        "model": model,
        "root": root,
        "large": large,
        "files": files,
        "batch": batch,
        "reference": reference,
        "onnx": paths[ExportType.ONNX],
        "openvino": paths[ExportType.OPENVINO],
    }


def test_antialiased_model_deploys_with_its_training_pixels(
    antialiased: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch, files, reference = antialiased["batch"], antialiased["files"], antialiased["reference"]
    # The graph resizes 96x80 inputs as training did: SaladInferencer (float, uint8, files), anomalib's
    # OpenVINOInferencer, salad-score and the torch module's forward all get validation's scores.
    inferencer = SaladInferencer(antialiased["openvino"], precision_hint="f32")
    for images, layout in ((batch, "NCHW"), ((batch * 255).round().astype(np.uint8).transpose(0, 2, 3, 1), "NHWC")):
        prediction = inferencer.predict(images, layout=layout)
        atol = ATOL if images.dtype == np.float32 else 1e-3  # uint8 rounding of the input
        np.testing.assert_allclose(prediction.pred_score, reference["pred_score"], rtol=RTOL, atol=atol)
    by_path = inferencer.predict([str(path) for path in files])
    np.testing.assert_allclose(by_path.pred_score, reference["pred_score"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(
        _torch_predict(antialiased["model"], batch)["pred_score"], reference["pred_score"], rtol=RTOL, atol=ATOL
    )
    monkeypatch.chdir(tmp_path)  # anomalib's inferencer creates ./openvino_cache
    theirs = OpenVINOInferencer(antialiased["openvino"], device="CPU", config={"INFERENCE_PRECISION_HINT": "f32"})
    for index, path in enumerate(files):
        np.testing.assert_allclose(
            np.ravel(theirs.predict(path).pred_score), reference["pred_score"][index], rtol=RTOL, atol=ATOL
        )
    assert (
        score.main(
            [
                "--model",
                str(antialiased["openvino"]),
                "--input",
                str(antialiased["large"]),
                "--output",
                str(tmp_path / "scored"),
                "--no-progress",
            ]
        )
        == 0
    )
    with (tmp_path / "scored" / "scores.csv").open() as handle:
        scored = {Path(row["path"]).name: float(row["score"]) for row in csv.DictReader(handle)}
    np.testing.assert_allclose([scored[path.name] for path in files], reference["pred_score"], rtol=RTOL, atol=ATOL)
    # anomalib's own export transform (a plain bicubic resize) misses them: the checks above can fail.
    plain = Resize((32, 32), interpolation=InterpolationMode.BICUBIC, antialias=False)
    plain_scores = _torch_predict(antialiased["model"], plain(torch.from_numpy(batch)).numpy())["pred_score"]
    assert np.abs(plain_scores - reference["pred_score"]).max() > 100 * ATOL


def test_export_that_expected_a_resize_in_front_is_refused(exports: dict[str, Path], tmp_path: Path) -> None:
    # Exports of 2026-12-01 named their size in this entry and relied on the deployment to resize first.
    model = ov.Core().read_model(exports["openvino"])
    model.set_rt_info("32,32", ["framework", "salad_antialias_resize"])
    ov.save_model(model, tmp_path / "old.xml")
    with pytest.raises(CheckpointError, match="export it again from its checkpoint"):
        SaladInferencer(tmp_path / "old.xml")


def test_antialiased_model_exports_at_a_fixed_size_and_keeps_the_resize(
    antialiased: dict[str, Any], tmp_path: Path
) -> None:
    graph = onnx.load(antialiased["onnx"], load_external_data=False).graph
    # Matrix products, not ONNX's antialiased Resize (which OpenVINO 2026.4 computes wrongly).
    op_types = [node.op_type for node in graph.node]
    assert (op_types.count("Resize"), op_types.count("MatMul")) == (0, 2)
    fixed = antialiased["model"].to_openvino(tmp_path, input_size=(96, 80))
    prediction = SaladInferencer(fixed, precision_hint="f32").predict(antialiased["batch"], layout="NCHW")
    np.testing.assert_allclose(prediction.pred_score, antialiased["reference"]["pred_score"], rtol=RTOL, atol=ATOL)
