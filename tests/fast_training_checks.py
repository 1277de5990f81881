"""The fast training path: PatchGAN scaled to the image, the decode-once image cache, precision, deferred checks."""

import logging
import time
from pathlib import Path

import pytest
import torch
from anomalib.data import Folder
from anomalib.engine import Engine
from jsonargparse import ArgumentParser
from torchvision.transforms.v2 import ColorJitter

from anomalib_salad import Salad
from anomalib_salad.data import cache as cache_module
from anomalib_salad.data.cache import CachedImages, CacheTooLargeError, ImageCache
from anomalib_salad.model import precision
from anomalib_salad.model.precision import PrecisionTiming, faster_in_bf16, native_bf16
from anomalib_salad.model.torch_model import patch_discriminator_layers, patch_receptive_field

from .conftest import TINY


def _folder(root: Path, **kwargs) -> Folder:
    args = {
        "name": "tiny",
        "root": root,
        "normal_dir": "train/normal",
        "abnormal_dir": "test/abnormal",
        "normal_test_dir": "test/normal",
        "train_batch_size": 16,
        "eval_batch_size": 16,
        "num_workers": 0,
        "seed": 0,
    }
    return Folder(**(args | kwargs))


def _engine(tmp_path: Path, epochs: int = 1, **kwargs) -> Engine:
    return Engine(max_epochs=epochs, default_root_dir=tmp_path, logger=False, enable_progress_bar=False, **kwargs)


def _disc_layers(model: Salad) -> int:
    return len(model.model.image_discriminator.layers) - 2


def test_patchgan_depth_keeps_the_papers_patch_fraction() -> None:
    assert patch_receptive_field(3) == 70  # pix2pix's 70x70 PatchGAN
    assert [patch_discriminator_layers(size) for size in (32, 64, 128, 256, 512)] == [1, 1, 2, 3, 4]
    for size in (64, 128, 256, 512):
        fraction = patch_receptive_field(patch_discriminator_layers(size)) / size
        assert 0.24 <= fraction <= 0.28
    assert _disc_layers(Salad(image_size=256)) == 3  # the paper's discriminator at the paper's size
    assert _disc_layers(Salad(image_size=64, base_channels=8, max_channels=32, latent_dim=16)) == 1
    assert _disc_layers(Salad(**TINY, disc_layers=2)) == 2
    with pytest.raises(ValueError, match="disc_layers"):
        Salad(**TINY, disc_layers=0)


def test_checkpoint_with_the_old_discriminator_loads(tiny_scans: Path, tmp_path: Path) -> None:
    # Written as before disc_layers existed: a 3-layer PatchGAN and no disc_layers in the hyper-parameters.
    engine = _engine(tmp_path)
    old = Salad(**TINY, disc_layers=3)
    del old.hparams["disc_layers"]
    engine.fit(old, datamodule=_folder(tiny_scans))
    checkpoint = Path(engine.trainer.checkpoint_callback.best_model_path)
    loaded = Salad.load_from_checkpoint(checkpoint)
    assert _disc_layers(loaded) == 3
    for name, tensor in old.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, equal_nan=True)
    # anomalib test --ckpt_path builds the model with today's defaults first, then restores the checkpoint.
    fresh = Salad(**TINY)
    assert _disc_layers(fresh) == 1
    engine.test(fresh, datamodule=_folder(tiny_scans), ckpt_path=checkpoint)
    assert _disc_layers(fresh) == 3


def test_cache_serves_the_pixels_the_pre_processor_would_see(tiny_scans: Path, tmp_path: Path) -> None:
    datamodule = _folder(tiny_scans, num_workers=1)
    model = Salad(**TINY)
    engine = _engine(tmp_path)
    engine.fit(model, datamodule=datamodule)
    assert isinstance(datamodule.train_data, CachedImages)
    assert isinstance(datamodule.val_data, CachedImages)
    assert datamodule.num_workers == 0
    cached = datamodule.val_data
    assert cached.images.dtype == torch.float32
    assert cached.images.shape[1] == 1  # the scans are grayscale saved as RGB: one channel kept
    batch = cached.__getitems__([3, 0, 5])
    originals = [cached.dataset[i] for i in (3, 0, 5)]
    assert batch.image.shape == (3, 3, 32, 32)
    assert batch.image_path == [item.image_path for item in originals]
    assert batch.gt_label.tolist() == [int(item.gt_label) for item in originals]
    assert torch.equal(batch.image, torch.stack([item.image for item in originals]))
    # The checkpointed pre-processor still resizes and scales: the export path is unchanged.
    assert model.pre_processor.transform is not None


def test_cached_and_uncached_training_match(tiny_scans: Path, tmp_path: Path) -> None:
    results = {}
    for cache_images in (False, True):
        torch.manual_seed(0)
        model = Salad(**TINY, cache_images=cache_images)
        engine = _engine(tmp_path / str(cache_images))
        engine.fit(model, datamodule=_folder(tiny_scans))
        results[cache_images] = model.model.encoder.layers[0][0].weight.detach().clone()
    # Same batches in the same order, same pixels.
    torch.testing.assert_close(results[True], results[False], atol=1e-6, rtol=1e-5)


def test_cache_leaves_random_augmentations_alone(tiny_scans: Path, tmp_path: Path) -> None:
    datamodule = _folder(tiny_scans, train_augmentations=ColorJitter(brightness=0.2))
    _engine(tmp_path).fit(Salad(**TINY), datamodule=datamodule)
    assert not isinstance(datamodule.train_data, CachedImages)
    assert isinstance(datamodule.val_data, CachedImages)


def test_cache_too_large_is_refused_before_training(
    tiny_scans: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cache_module, "free_memory_bytes", lambda device: 1000)
    with pytest.raises(CacheTooLargeError, match=r"GiB.*--model.cache_images false"):
        _engine(tmp_path).fit(Salad(**TINY), datamodule=_folder(tiny_scans))


def test_cache_device_is_the_training_device() -> None:
    assert ImageCache().device is None
    assert ImageCache(device="cpu").device == torch.device("cpu")


def test_bf16_without_native_support_is_refused(
    tiny_scans: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(precision, "native_bf16", lambda device: (False, "CPU has avx2 but none of ..."))
    with pytest.raises(ValueError, match=r"no native bf16 .*avx2.*27x slower"):
        _engine(tmp_path).fit(Salad(**TINY, train_precision="bf16"), datamodule=_folder(tiny_scans))
    with pytest.raises(ValueError, match=r"--trainer.precision bf16"):
        _engine(tmp_path, precision="bf16-mixed").fit(Salad(**TINY), datamodule=_folder(tiny_scans))
    model = Salad(**TINY)
    _engine(tmp_path).fit(model, datamodule=_folder(tiny_scans))
    assert not model.bf16  # auto: fp32 here


def test_auto_precision_trains_in_bf16_where_native(
    tiny_scans: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(precision, "native_bf16", lambda device: (True, "CPU flags amx_bf16"))
    monkeypatch.setattr(precision, "faster_in_bf16", lambda forward, device: PrecisionTiming(True, 2.0, 1.0))
    monkeypatch.setattr(precision, "_PRECISION_TIMINGS", {})  # nothing measured earlier in the process
    model = Salad(**TINY, shuffle_tiles=10)
    seen = []
    encoder_forward = model.model.encoder.forward

    def spy(images: torch.Tensor) -> torch.Tensor:
        out = encoder_forward(images)
        seen.append(out.dtype)
        return out

    model.model.encoder.forward = spy
    _engine(tmp_path).fit(model, datamodule=_folder(tiny_scans, train_batch_size=40))
    assert model.bf16
    assert torch.bfloat16 in seen  # training ran under autocast ...
    assert seen[-1] == torch.float32  # ... validation did not
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_auto_precision_keeps_fp32_where_bf16_is_measured_slower(
    tiny_scans: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The flag alone is not enough: an AVX512-BF16 Xeon without AMX trained SALAD 0.85x as fast in bf16.
    monkeypatch.setattr(precision, "native_bf16", lambda device: (True, "CPU flags avx512_bf16"))
    monkeypatch.setattr(precision, "faster_in_bf16", lambda forward, device: PrecisionTiming(False, 0.8, 1.0))
    monkeypatch.setattr(precision, "_PRECISION_TIMINGS", {})  # nothing measured earlier in the process
    model = Salad(**TINY)
    with caplog.at_level(logging.INFO, logger="anomalib_salad.model.precision"):
        _engine(tmp_path).fit(model, datamodule=_folder(tiny_scans))
    assert not model.bf16
    assert "training in fp32 (CPU flags avx512_bf16; a probe step took 0.800 s in fp32, 1.000 s in bf16" in caplog.text
    assert "0.800 s in fp32" in model.precision_evidence
    # Pinned precisions are not second-guessed by the probe.
    model = Salad(**TINY, train_precision="bf16")
    _engine(tmp_path).fit(model, datamodule=_folder(tiny_scans))
    assert model.bf16


@pytest.mark.parametrize(("fp32_s", "bf16_s", "chosen"), [(0.03, 0.01, True), (0.01, 0.03, False), (0.02, 0.02, False)])
def test_faster_in_bf16_times_both_precisions(fp32_s: float, bf16_s: float, chosen: bool) -> None:
    weight = torch.ones(1, requires_grad=True)
    calls = []

    def forward() -> torch.Tensor:
        bf16 = torch.is_autocast_enabled("cpu")
        calls.append(bf16)
        time.sleep(bf16_s if bf16 else fp32_s)
        return weight.sum()

    timing = faster_in_bf16(forward, torch.device("cpu"), repeats=2)
    assert timing.bf16_is_faster is chosen  # (0.02, 0.02): even, so the 1.1x margin keeps fp32
    assert timing.fp32_seconds == pytest.approx(fp32_s, abs=0.01)
    assert timing.bf16_seconds == pytest.approx(bf16_s, abs=0.01)
    assert calls == [False, True] * 3  # a warm-up each, then alternating
    assert weight.grad is not None  # the backward pass is part of what is timed


def test_precision_probe_leaves_the_model_and_the_random_stream_alone() -> None:
    model = Salad(**TINY)
    weights = {name: value.clone() for name, value in model.model.state_dict().items()}
    random_state = torch.get_rng_state()
    timing = model._time_precisions(torch.device("cpu"))
    assert timing.fp32_seconds > 0
    assert timing.bf16_seconds > 0
    assert torch.equal(torch.get_rng_state(), random_state)  # a seeded fit draws the same numbers as without it
    assert all(torch.equal(weights[name], value) for name, value in model.model.state_dict().items())
    assert all(parameter.grad is None for parameter in model.parameters())
    assert model._time_precisions(torch.device("cpu")) is timing  # measured once per process and shape


def test_train_precision_32_from_yaml_is_the_string_32() -> None:
    # YAML (a config file, or paper_protocol.py's --set) reads 32 as a number; it must mean fp32, not an error.
    parser = ArgumentParser()
    parser.add_class_arguments(Salad, "model")
    config = parser.parse_string("model:\n  train_precision: 32\n")
    assert config.model.train_precision == 32
    assert Salad(**TINY, train_precision=config.model.train_precision).train_precision == "32"
    with pytest.raises(ValueError, match="train_precision must be 'auto', '32' or 'bf16', got '16'"):
        Salad(**TINY, train_precision=16)


def test_native_bf16_reads_the_cpu_flags() -> None:
    supported, evidence = native_bf16(torch.device("cpu"))
    assert isinstance(supported, bool)
    assert "CPU" in evidence


def test_deferred_nan_check_names_the_step(tiny_scans: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The accelerator path (flags kept on the device, read at the epoch's last batch), exercised on the CPU.
    monkeypatch.setattr(Salad, "_defer_checks", lambda self: True)
    model = Salad(**TINY, lr=1e30)
    with pytest.raises(FloatingPointError, match=r"non-finite loss at epoch 0, global step \d+; loss terms \["):
        _engine(tmp_path).fit(model, datamodule=_folder(tiny_scans))


# compile_networks is not trained here: torch.compile inside the suite's process, after the OpenVINO tests, ended
# pytest with a segmentation fault (it passes alone); benchmarks/gpu_run.py --smoke reports it as skipped on CPU.
@pytest.mark.parametrize("option", [{"channels_last": True}])
def test_speed_options_train_and_leave_plain_networks(option: dict, tiny_scans: Path, tmp_path: Path) -> None:
    model = Salad(**TINY, **option)
    engine = _engine(tmp_path)
    engine.fit(model, datamodule=_folder(tiny_scans))
    assert all(network._compiled_call_impl is None for network in model._networks())
    assert model.model.encoder.layers[0][0].weight.is_contiguous()
    engine.test(model, datamodule=_folder(tiny_scans))
