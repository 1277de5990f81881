"""Unit tests of the networks and the scoring path."""

import pytest
import torch

from anomalib_salad.model.torch_model import (
    Decoder,
    Encoder,
    PatchDiscriminator,
    PhaseConvTranspose2d,
    SaladModel,
    num_levels,
    phase_decomposed,
)

from .conftest import TINY


@pytest.mark.parametrize("size", [32, 64, 128, 256, 512])
def test_encoder_decoder_shapes(size: int) -> None:
    encoder = Encoder(size, base_channels=4, max_channels=16, latent_dim=8)
    decoder = Decoder(size, base_channels=4, max_channels=16, latent_dim=8)
    latent = encoder(torch.rand(2, 1, size, size))
    assert latent.shape == (2, 8)
    image = decoder(latent)
    assert image.shape == (2, 1, size, size)
    assert image.abs().max() <= 1  # tanh output, the paper's [-1, 1]
    assert len(encoder.layers) == num_levels(size) == len(decoder.blocks)


def test_paper_default_has_eight_layers() -> None:
    model = SaladModel()
    assert len(model.encoder.layers) == 8
    assert len(model.decoder.blocks) == 8
    assert model.restoration_decoder is not model.decoder
    assert PatchDiscriminator()(torch.rand(1, 1, 256, 256)).shape == (1, 1, 30, 30)  # the 70x70 PatchGAN


@pytest.mark.parametrize("size", [16, 48, 100, 0, -64])
def test_rejects_unsupported_sizes(size: int) -> None:
    with pytest.raises(ValueError, match="power-of-two image_size"):
        SaladModel(image_size=size)


@pytest.mark.parametrize("channels", [1, 3])
def test_forward_returns_inference_batch(channels: int) -> None:
    model = SaladModel(**TINY).eval()
    out = model(torch.rand(4, channels, 32, 32) * 2 - 1)
    assert out.pred_score.shape == (4,)
    assert out.anomaly_map.shape == (4, 1, 32, 32)
    assert (out.pred_score >= 0).all()


def test_rgb_is_reduced_to_grayscale() -> None:
    model = SaladModel(**TINY).eval()
    gray = torch.rand(2, 1, 32, 32) * 2 - 1
    torch.testing.assert_close(model(gray.expand(-1, 3, -1, -1)).pred_score, model(gray).pred_score)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((2, 2, 32, 32), "1 \\(grayscale\\) or 3 \\(RGB\\) channels"),
        ((2, 4, 32, 32), "channels"),
        ((2, 3, 64, 64), "built for 32x32 inputs, got 64x64"),
        ((3, 32, 32), "shape \\(B, C, H, W\\)"),
    ],
)
def test_bad_input_names_the_problem(shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SaladModel(**TINY).eval()(torch.zeros(shape))


def test_scores_follow_their_definitions() -> None:
    model = SaladModel(**TINY).eval()
    images = torch.rand(3, 1, 32, 32) * 2 - 1
    model.center.fill_(0.25)
    latent, reconstruction = model.reconstruct(images)
    expected = {
        "feature": (latent - model.encoder(reconstruction)).abs().mean(1),
        "image": (images - reconstruction).abs().mean((1, 2, 3)),
        "center": (latent - 0.25).abs().mean(1),
    }
    for score, value in expected.items():
        model.score = score
        out = model(images)
        torch.testing.assert_close(out.pred_score, value)
        torch.testing.assert_close(out.anomaly_map, (images - reconstruction).abs())


@pytest.mark.parametrize(("shared", "expected_shared"), [(0, 0), (2, 2), (-1, 5)])
def test_restoration_decoder_sharing(shared: int, expected_shared: int) -> None:
    model = SaladModel(**TINY, restoration_shared_layers=shared)
    own = {id(p) for p in model.decoder.parameters()}
    restoration = list(model.restoration_decoder.blocks)
    shared_blocks = [b for b in restoration if all(id(p) in own for p in b.parameters())]
    assert len(shared_blocks) == expected_shared
    # Shared layers are the decoder's last ones, so the two decoders differ only in their first layers.
    assert shared_blocks == list(model.decoder.blocks)[len(restoration) - expected_shared :]


def test_optional_parts_are_not_built() -> None:
    model = SaladModel(**TINY, restoration_decoder=False, discriminators=False)
    assert model.restoration_decoder is None
    assert len(model.discriminator_modules()) == 0


def test_center_is_a_buffer_in_the_state_dict() -> None:
    model = SaladModel(**TINY)
    assert "center" in model.state_dict()
    assert all(name != "center" for name, _ in model.named_parameters())


def test_mean_intensity_removes_whole_image_brightness() -> None:
    unit = torch.rand(3, 1, 32, 32) * 0.5  # dark enough that doubling clips nothing
    dark, bright = unit * 2 - 1, unit * 2 * 2 - 1
    matched = SaladModel(**TINY, mean_intensity=0.3).eval()
    plain = SaladModel(**TINY).eval()
    plain.load_state_dict(matched.state_dict())
    torch.testing.assert_close(matched(dark).pred_score, matched(bright).pred_score)
    assert not torch.allclose(plain(dark).pred_score, plain(bright).pred_score)
    network_input = matched.to_network_input(dark)
    torch.testing.assert_close(((network_input + 1) / 2).mean(dim=(1, 2, 3)), torch.full((3,), 0.3))
    assert network_input.max() <= 1
    torch.testing.assert_close(matched.to_network_input(-torch.ones(1, 1, 32, 32)), -torch.ones(1, 1, 32, 32))
    exported = torch.export.export(matched, (dark,))
    torch.testing.assert_close(exported.module()(bright).pred_score, matched(bright).pred_score)


@pytest.mark.parametrize("value", [0.0, 1.0, -0.2, 40.0])
def test_mean_intensity_outside_the_unit_scale_is_refused(value: float) -> None:
    with pytest.raises(ValueError, match=r"mean_intensity must be in \(0, 1\)"):
        SaladModel(**TINY, mean_intensity=value)


def test_eval_forward_is_exportable() -> None:
    model = SaladModel(**TINY).eval()
    exported = torch.export.export(model, (torch.rand(2, 3, 32, 32),))
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(exported.module()(images).pred_score, model(images).pred_score)


@pytest.mark.parametrize(
    ("in_channels", "out_channels", "height", "width", "bias"),
    [(8, 5, 7, 6, True), (3, 1, 1, 1, True), (16, 4, 2, 3, False), (1, 2, 32, 32, True)],
)
def test_phase_conv_transpose_equals_conv_transpose(
    in_channels: int, out_channels: int, height: int, width: int, bias: bool
) -> None:
    conv = torch.nn.ConvTranspose2d(in_channels, out_channels, 4, 2, 1, bias=bias)
    inputs = torch.randn(3, in_channels, height, width)
    with torch.no_grad():
        expected, actual = conv(inputs), PhaseConvTranspose2d(conv)(inputs)
    assert actual.shape == expected.shape == (3, out_channels, 2 * height, 2 * width)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def test_phase_conv_transpose_refuses_other_layers() -> None:
    with pytest.raises(ValueError, match="kernel 4, stride 2, padding 1"):
        PhaseConvTranspose2d(torch.nn.ConvTranspose2d(4, 4, 3, 2, 1))


def test_phase_decomposed_decoder_is_equal_and_restored() -> None:
    model = SaladModel(**TINY).eval()
    originals = [block[0] for block in model.decoder.blocks]
    images = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        expected = model(images)
        with phase_decomposed(model.decoder):
            assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in model.decoder.modules())
            actual = model(images)
    torch.testing.assert_close(actual.pred_score, expected.pred_score, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(actual.anomaly_map, expected.anomaly_map, rtol=1e-5, atol=1e-6)
    assert [block[0] for block in model.decoder.blocks] == originals
