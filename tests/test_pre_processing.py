"""SALAD's pre-processor: the exportable antialiased resize equals torchvision's, in torch, ONNX and OpenVINO."""

import logging
from pathlib import Path

import openvino as ov
import pytest
import torch
from anomalib.pre_processing import PreProcessor
from torchvision.transforms.v2 import Compose, InterpolationMode, Normalize, Resize
from torchvision.transforms.v2.functional import resize

from anomalib_salad import Salad, SaladPreProcessor
from anomalib_salad.model.pre_processing import AntialiasedResize, antialiased_export, exportable_transform

SIZES = [(96, 80), (256, 256), (32, 32), (20, 50), (33, 17)]  # shrink, shrink 4x, unchanged, enlarge, mixed


@pytest.mark.parametrize("interpolation", [InterpolationMode.BICUBIC, InterpolationMode.BILINEAR])
@pytest.mark.parametrize("size", SIZES)
def test_antialiased_resize_is_torchvisions(size: tuple[int, int], interpolation: InterpolationMode) -> None:
    images = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))
    ours = AntialiasedResize((32, 24), interpolation)(images)
    theirs = resize(images, [32, 24], interpolation, antialias=True)
    assert ours.shape == (2, 3, 32, 24)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-6)


def test_antialiased_resize_leaves_an_image_at_its_size_alone() -> None:
    images = torch.rand(1, 3, 32, 24)
    torch.testing.assert_close(AntialiasedResize((32, 24))(images), images, rtol=0, atol=1e-6)


def test_unsupported_interpolation_is_refused() -> None:
    with pytest.raises(ValueError, match="AntialiasedResize supports"):
        AntialiasedResize((32, 32), InterpolationMode.NEAREST)
    with pytest.raises(TypeError, match=r"floating-point images, got torch\.uint8"):
        AntialiasedResize((32, 32))(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


def test_resize_keeps_full_precision_under_autocast_and_in_float64() -> None:
    images = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(0))
    expected = resize(images, [32, 32], InterpolationMode.BICUBIC, antialias=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed-precision inference must resize as training did
        ours = AntialiasedResize((32, 32))(images)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, expected, rtol=0, atol=2e-6)
    double = images.double()
    expected = resize(double, [32, 32], InterpolationMode.BICUBIC, antialias=True)
    torch.testing.assert_close(AntialiasedResize((32, 32))(double), expected, rtol=0, atol=1e-12)


def test_one_exported_graph_resizes_every_input_size_like_torchvision(tmp_path: Path) -> None:
    # Height and width are dynamic in the graph: the weights follow from the input's shape at run time.
    batch, height, width = (torch.export.Dim(name) for name in ("batch", "height", "width"))
    path = tmp_path / "resize.onnx"
    torch.onnx.export(
        AntialiasedResize((32, 32)),
        (torch.rand(2, 3, 48, 40),),
        str(path),
        dynamo=True,
        input_names=["input"],
        dynamic_shapes=({0: batch, 2: height, 3: width},),
    )
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    for size in SIZES:
        images = torch.rand(2, 3, *size)
        expected = resize(images, [32, 32], InterpolationMode.BICUBIC, antialias=True)
        torch.testing.assert_close(torch.from_numpy(compiled(images.numpy())[0]), expected, rtol=0, atol=2e-6)


def test_export_transform_keeps_antialiasing_and_only_that() -> None:
    transform = Compose([Resize((32, 32), antialias=True), Normalize([0.5] * 3, [0.5] * 3)])
    steps = exportable_transform(transform).transforms
    assert isinstance(steps[0], AntialiasedResize)
    assert isinstance(steps[1], Normalize)
    assert transform.transforms[0].antialias  # the training transform is left as it is
    plain = exportable_transform(Compose([Resize((32, 32), antialias=False)])).transforms[0]
    assert isinstance(plain, Resize)
    assert not plain.antialias


def test_salad_pre_processor_keeps_its_export_after_a_checkpoint_restore() -> None:
    trained = Salad(image_size=32, antialias=True).pre_processor
    assert isinstance(trained, SaladPreProcessor)
    restored = Salad(image_size=32, antialias=False).pre_processor  # built without it, then restored from a checkpoint
    assert isinstance(restored.export_transform.transforms[0], Resize)
    restored.load_checkpoint_config(trained.checkpoint_config())
    assert restored.transform.transforms[0].antialias
    assert isinstance(restored.export_transform.transforms[0], AntialiasedResize)
    images = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(restored(images), trained.transform(images), rtol=0, atol=2e-6)


def test_export_of_anomalibs_pre_processor_is_antialiased_too(caplog: pytest.LogCaptureFixture) -> None:
    # torchvision's Resize antialiases by default; anomalib's PreProcessor would export it without.
    pre_processor = PreProcessor(Compose([Resize((32, 32), interpolation=InterpolationMode.BICUBIC)]))
    images = torch.rand(1, 3, 64, 64)
    assert (pre_processor(images) - pre_processor.transform(images)).abs().max() > 1e-3
    with antialiased_export(pre_processor):
        torch.testing.assert_close(pre_processor(images), pre_processor.transform(images), rtol=0, atol=2e-6)
    assert isinstance(pre_processor.export_transform.transforms[0], Resize)  # restored afterwards
    # A resize it cannot reproduce (shorter side only) is exported as anomalib does, with a warning.
    with (
        caplog.at_level(logging.WARNING),
        antialiased_export(PreProcessor(Resize((32, 32), InterpolationMode.NEAREST))),
    ):
        pass
    assert not caplog.text  # torchvision never antialiases a nearest-neighbour resize: nothing is lost
    with caplog.at_level(logging.WARNING), antialiased_export(PreProcessor(Resize(32, antialias=True))):
        pass
    assert "the exported graph resizes without antialiasing" in caplog.text


def test_checkpoint_trained_with_the_plain_resize_keeps_it() -> None:
    # Written before antialiasing became the default (tests/data/README.md): its export must stay plain bicubic.
    old = Salad.load_from_checkpoint(Path(__file__).parent / "data" / "salad_tiny_4862592.ckpt").eval()
    step = old.pre_processor.export_transform.transforms[0]  # the default is antialiased; the checkpoint decides
    assert isinstance(step, Resize)
    assert not step.antialias
    images = torch.rand(2, 3, 64, 64)
    plain = resize(images, [32, 32], InterpolationMode.BICUBIC, antialias=False)
    torch.testing.assert_close(old.pre_processor(images), (plain - 0.5) / 0.5)
