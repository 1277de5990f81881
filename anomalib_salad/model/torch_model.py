"""SALAD's networks in plain PyTorch: encoder, decoders, discriminators and the scoring path.

Section IV-B of the paper: the encoder M_E and decoder M_D each have ``log2(size)`` convolutional layers
(eight at 256x256), kernel 4, stride 2, InstanceNorm and LeakyReLU, so the encoder ends in a 1-D latent
vector and the decoder grows it back to an image. The restoration decoder M'_D has M_D's structure and
its own weights; the image discriminator D_I is a PatchGAN and the feature discriminator D_F an MLP.

The eval forward returns :class:`anomalib.data.InferenceBatch` and contains no data-dependent Python
branches, so ``torch.export`` can trace it for ONNX / OpenVINO export.
"""

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import pairwise
from typing import Literal

import torch
from anomalib.data import InferenceBatch
from kornia.color import rgb_to_grayscale
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

__all__ = [
    "Decoder",
    "Encoder",
    "FeatureDiscriminator",
    "NonFiniteInputError",
    "PatchDiscriminator",
    "PhaseConvTranspose2d",
    "SaladModel",
    "ScoreType",
    "match_mean_intensity",
    "patch_discriminator_layers",
    "patch_receptive_field",
]

ScoreType = Literal["feature", "image", "center"]
MIN_IMAGE_SIZE = 32


class NonFiniteInputError(ValueError):
    """An image batch holds NaN or Inf values."""


def num_levels(image_size: int) -> int:
    """Number of stride-2 layers that take ``image_size`` down to 1x1.

    Args:
        image_size: Side of the square input.

    Returns:
        int: ``log2(image_size)``.

    Raises:
        ValueError: If ``image_size`` is not a power of two of at least 32.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int):
        msg = f"image_size must be an int, got {image_size!r}"
        raise TypeError(msg)
    if image_size < MIN_IMAGE_SIZE or image_size & (image_size - 1):
        msg = (
            f"SALAD needs a square power-of-two image_size of at least {MIN_IMAGE_SIZE} (e.g. 64, 128, 256), "
            f"got {image_size}: its encoder halves the image until it is a 1x1 latent vector."
        )
        raise ValueError(msg)
    return int(math.log2(image_size))


def patch_discriminator_layers(image_size: int) -> int:
    """PatchGAN depth whose patches cover about the fraction of the image that the paper's do at 256 px.

    pix2pix's 70x70 PatchGAN (3 stride-2 layers) sees 27 % of a 256-px side. A PatchGAN with ``n`` stride-2
    layers sees ``16, 34, 70, 142`` px for ``n = 1..4``, so ``n = log2(image_size) - 5`` keeps that fraction at
    25-28 % from 64 px up (16/64, 34/128, 70/256, 142/512); 32 px gets the smallest PatchGAN (``n = 1``, 50 %).
    At 64 px this removes the two widest layers, which cost more than the encoder and decoders together.

    Args:
        image_size: Side of the square input, a power of two >= 32.

    Returns:
        int: The number of stride-2 layers.
    """
    return max(1, num_levels(image_size) - 5)


def patch_receptive_field(num_layers: int) -> int:
    """Side in pixels of the input patch behind one PatchGAN logit (70 for ``num_layers=3``)."""
    size = 1
    for _ in range(2):  # the two stride-1 convolutions at the end
        size += 3
    for _ in range(num_layers):
        size = (size - 1) * 2 + 4
    return size


def channel_widths(levels: int, base_channels: int, max_channels: int) -> list[int]:
    """Feature widths of the encoder's hidden layers, doubling from ``base_channels`` up to ``max_channels``."""
    return [min(base_channels * 2**i, max_channels) for i in range(levels - 1)]


def _block(
    conv: nn.Module,
    out_channels: int,
    *,
    norm: bool = True,
    activation: nn.Module | None = None,
) -> nn.Sequential:
    layers = [conv]
    if norm:
        layers.append(nn.InstanceNorm2d(out_channels))
    layers.append(activation if activation is not None else nn.LeakyReLU(0.2, inplace=True))
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """M_E: image ``(B, C, S, S)`` to latent vector ``(B, latent_dim)``.

    ``log2(S)`` convolutions with kernel 4 and stride 2. Every hidden layer is followed by InstanceNorm and
    LeakyReLU(0.2); the last one is linear, because InstanceNorm is undefined on a 1x1 map and the latent
    must be free to match N(0, I).

    Args:
        image_size: Side of the square input, a power of two >= 32.
        in_channels: Image channels. Defaults to ``1`` (grayscale, as in the paper).
        base_channels: Width of the first layer. Defaults to ``64``.
        max_channels: Cap on the width of deeper layers. Defaults to ``512``.
        latent_dim: Size of the latent vector. Defaults to ``512``.
    """

    def __init__(
        self,
        image_size: int,
        in_channels: int = 1,
        base_channels: int = 64,
        max_channels: int = 512,
        latent_dim: int = 512,
    ) -> None:
        super().__init__()
        levels = num_levels(image_size)
        widths = channel_widths(levels, base_channels, max_channels)
        ins = [in_channels, *widths]
        self.layers = nn.Sequential(
            *(_block(nn.Conv2d(c_in, c_out, 4, 2, 1), c_out) for c_in, c_out in zip(ins[:-1], widths, strict=True)),
            nn.Conv2d(ins[-1], latent_dim, 4, 2, 1),
        )

    def forward(self, images: Tensor) -> Tensor:
        """Encode images to latent vectors."""
        return self.layers(images).flatten(1)


class Decoder(nn.Module):
    """M_D (or M'_D): latent vector ``(B, latent_dim)`` to image ``(B, C, S, S)`` in ``[-1, 1]``.

    The mirror of :class:`Encoder` with transposed convolutions. Hidden layers use InstanceNorm and
    LeakyReLU(0.2); the last uses tanh to land in the paper's ``[-1, 1]`` intensity range. ``blocks`` is a
    list so that another decoder can share its last layers (Table IV of the paper).

    Args:
        image_size: Side of the output image, a power of two >= 32.
        out_channels: Image channels. Defaults to ``1``.
        base_channels: Width of the last hidden layer. Defaults to ``64``.
        max_channels: Cap on the width of the first layers. Defaults to ``512``.
        latent_dim: Size of the latent vector. Defaults to ``512``.
        shared_blocks: Blocks taken from another decoder for the last ``len(shared_blocks)`` layers.
            Defaults to none.
    """

    def __init__(
        self,
        image_size: int,
        out_channels: int = 1,
        base_channels: int = 64,
        max_channels: int = 512,
        latent_dim: int = 512,
        shared_blocks: Sequence[nn.Module] = (),
    ) -> None:
        super().__init__()
        levels = num_levels(image_size)
        widths = channel_widths(levels, base_channels, max_channels)[::-1]
        ins, outs = [latent_dim, *widths], [*widths, out_channels]
        own = levels - len(shared_blocks)
        if own < 0:
            msg = f"Cannot share {len(shared_blocks)} layers of a {levels}-layer decoder"
            raise ValueError(msg)
        blocks: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(ins[:own], outs[:own], strict=True)):
            conv = nn.ConvTranspose2d(c_in, c_out, 4, 2, 1)
            last = i == levels - 1
            blocks.append(_block(conv, c_out, norm=not last, activation=nn.Tanh() if last else None))
        self.blocks = nn.ModuleList([*blocks, *shared_blocks])

    def forward(self, latent: Tensor) -> Tensor:
        """Decode latent vectors to images."""
        out = latent[..., None, None]
        for block in self.blocks:
            out = block(out)
        return out


class PhaseConvTranspose2d(nn.Module):
    """The decoder's ``ConvTranspose2d(kernel 4, stride 2, padding 1)`` as four 2x2 convolutions, for export.

    Each output pixel parity (row even/odd x column even/odd) of a stride-2 transposed convolution sees only a
    2x2 part of its kernel, so the layer equals four ordinary convolutions with those parts, each on the input
    padded on its own sides, whose outputs are interleaved (a reshape that OpenVINO runs as ``DepthToSpace``).
    Same multiply-adds and the same outputs to float rounding (~1e-7). The reason is deployment: OpenVINO's
    CPU plugin runs ``ConvolutionBackpropData`` in f32 on CPUs without AVX-512 even in an INT8 IR, while
    ordinary convolutions run in int8 (docs/results.md).

    Args:
        conv: The transposed convolution to copy (kernel 4, stride 2, padding 1, no groups or dilation).

    Raises:
        ValueError: For any other transposed convolution.
    """

    def __init__(self, conv: nn.ConvTranspose2d) -> None:
        super().__init__()
        shape = (conv.kernel_size, conv.stride, conv.padding, conv.output_padding, conv.dilation, conv.groups)
        if shape != ((4, 4), (2, 2), (1, 1), (0, 0), (1, 1), 1):
            msg = f"PhaseConvTranspose2d copies ConvTranspose2d(kernel 4, stride 2, padding 1) only, got {conv}"
            raise ValueError(msg)
        weight = conv.weight.detach()  # (in, out, 4, 4)
        self.out_channels = conv.out_channels
        self.phases = nn.ModuleList()
        self.pads: list[tuple[int, int, int, int]] = []
        for row in range(2):
            for col in range(2):
                # Output row 2m + row takes input rows m - 1 + row and m + row with kernel rows 3 - row and 1 - row.
                phase = nn.Conv2d(conv.in_channels, conv.out_channels, 2, bias=False)
                taps = weight[:, :, [3 - row, 1 - row]][:, :, :, [3 - col, 1 - col]]
                phase.weight.data.copy_(taps.transpose(0, 1))
                self.phases.append(phase)
                self.pads.append((1 - col, col, 1 - row, row))  # F.pad order: left, right, top, bottom
        self.bias = nn.Parameter(conv.bias.detach().clone()) if conv.bias is not None else None

    def forward(self, inputs: Tensor) -> Tensor:
        """Same as the copied ``ConvTranspose2d``: ``(B, C, H, W)`` to ``(B, out_channels, 2H, 2W)``."""
        batch, _, height, width = inputs.shape
        outputs = torch.cat([phase(F.pad(inputs, pad)) for phase, pad in zip(self.phases, self.pads, strict=True)], 1)
        # (B, row, col, C, H, W) -> (B, C, H, row, W, col): pixel (2m + row, 2n + col).
        outputs = outputs.view(batch, 2, 2, self.out_channels, height, width).permute(0, 3, 4, 1, 5, 2)
        outputs = outputs.reshape(batch, self.out_channels, 2 * height, 2 * width)
        return outputs if self.bias is None else outputs + self.bias[:, None, None]


@contextmanager
def phase_decomposed(module: nn.Module) -> Iterator[nn.Module]:
    """Temporarily replace every ``ConvTranspose2d`` inside ``module`` with its :class:`PhaseConvTranspose2d`.

    Args:
        module: A network holding transposed convolutions (e.g. :class:`Decoder`); restored on exit.

    Yields:
        nn.Module: ``module``, rewritten.
    """
    swapped = [
        (parent, name, child)
        for parent in module.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.ConvTranspose2d)
    ]
    try:
        for parent, name, child in swapped:
            setattr(parent, name, PhaseConvTranspose2d(child).to(child.weight.device, child.weight.dtype))
        yield module
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


class PatchDiscriminator(nn.Module):
    """D_I: the pix2pix PatchGAN, one real/fake logit per overlapping patch.

    Args:
        in_channels: Image channels. Defaults to ``1``.
        base_channels: Width of the first layer. Defaults to ``64``.
        num_layers: Stride-2 layers. Defaults to ``3`` (the 70x70 PatchGAN).
    """

    def __init__(self, in_channels: int = 1, base_channels: int = 64, num_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [_block(nn.Conv2d(in_channels, base_channels, 4, 2, 1), base_channels, norm=False)]
        width = base_channels
        for i in range(1, num_layers + 1):
            stride = 2 if i < num_layers else 1
            new_width = base_channels * min(2**i, 8)
            layers.append(_block(nn.Conv2d(width, new_width, 4, stride, 1), new_width))
            width = new_width
        layers.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        """Patch logits ``(B, 1, h, w)``."""
        return self.layers(images)


class FeatureDiscriminator(nn.Module):
    """D_F: an MLP that tells encoded latents from samples of N(0, I).

    Args:
        latent_dim: Size of the latent vector. Defaults to ``512``.
        hidden_dims: Widths of the hidden layers. Defaults to ``(512, 256)``.
    """

    def __init__(self, latent_dim: int = 512, hidden_dims: Sequence[int] = (512, 256)) -> None:
        super().__init__()
        dims = [latent_dim, *hidden_dims]
        layers: list[nn.Module] = []
        for d_in, d_out in pairwise(dims):
            layers += [nn.Linear(d_in, d_out), nn.LeakyReLU(0.2, inplace=True)]
        layers.append(nn.Linear(dims[-1], 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, latent: Tensor) -> Tensor:
        """One logit per latent vector, ``(B, 1)``."""
        return self.layers(latent)


def match_mean_intensity(images: Tensor, target: float) -> Tensor:
    """Scale each ``[-1, 1]`` image's intensities (as ``[0, 1]``) so that their mean is ``target``; clip at white.

    A multiplicative change keeps black background black and every contrast ratio, so anatomy is unchanged while
    the whole-image brightness, which differs between scanners and collections, is gone. An all-black image stays
    black.

    Example:
        >>> images = torch.tensor([[[[-1.0, 0.0]]], [[[-1.0, -0.5]]]])  # [0, 1] means 0.25 and 0.125
        >>> match_mean_intensity(images, 0.25).flatten().tolist()
        [-1.0, 0.0, -1.0, 0.0]
    """
    unit = (images + 1) / 2
    mean = unit.mean(dim=(1, 2, 3), keepdim=True)
    return (unit * (target / mean.clamp(min=1e-6))).clamp(max=1) * 2 - 1


class SaladModel(nn.Module):
    """SALAD's networks and its test-time scoring.

    Args:
        image_size: Side of the square network input, a power of two >= 32. Defaults to ``256``.
        base_channels: Width of the first encoder layer. Defaults to ``64`` (pix2pix).
        max_channels: Cap on layer widths. Defaults to ``512`` (pix2pix).
        latent_dim: Size of the latent vector z. The paper does not state it; ``512`` is the width of the
            pix2pix bottleneck that the encoder mirrors. Defaults to ``512``.
        restoration_decoder: Build M'_D for the self-supervised task. Defaults to ``True``.
        restoration_shared_layers: How many of M_D's last layers M'_D shares (Table IV): ``0`` shares only
            the encoder (the paper's choice), ``k`` also the last ``k`` decoder layers, ``-1`` the whole
            decoder. Defaults to ``0``.
        discriminators: Build D_I and D_F. Defaults to ``True``.
        disc_channels: Width of the PatchGAN's first layer. Defaults to ``64``.
        disc_layers: Stride-2 layers of the PatchGAN; ``None`` scales them to ``image_size`` by
            :func:`patch_discriminator_layers` (3, the 70x70 PatchGAN, at 256 px). Defaults to ``None``.
        feature_disc_hidden: Hidden widths of the MLP discriminator. Defaults to ``(512, 256)``.
        score: Anomaly score (Table V): ``"feature"`` is A_F = mean |E(x) - E(D(E(x)))| (the paper's
            choice), ``"image"`` A_I = mean |x - D(E(x))|, ``"center"`` A_C = mean |E(x) - C|.
            Defaults to ``"feature"``.
        mean_intensity: Scale every image so that its mean intensity (on the [0, 1] scale, where black stays
            black) is this value, clipping at white, before the networks see it: :func:`match_mean_intensity`.
            It removes whole-image brightness, a cue that separates collections rather than anatomy.
            ``None`` (the paper) leaves images as they are. Defaults to ``None``.
    """

    def __init__(
        self,
        image_size: int = 256,
        base_channels: int = 64,
        max_channels: int = 512,
        latent_dim: int = 512,
        restoration_decoder: bool = True,
        restoration_shared_layers: int = 0,
        discriminators: bool = True,
        disc_channels: int = 64,
        disc_layers: int | None = None,
        feature_disc_hidden: Sequence[int] = (512, 256),
        score: ScoreType = "feature",
        mean_intensity: float | None = None,
    ) -> None:
        super().__init__()
        levels = num_levels(image_size)
        if mean_intensity is not None and not 0 < mean_intensity < 1:
            msg = f"mean_intensity must be in (0, 1) (the [0, 1] intensity scale) or None, got {mean_intensity}"
            raise ValueError(msg)
        if score not in {"feature", "image", "center"}:
            msg = f"score must be 'feature', 'image' or 'center', got {score!r}"
            raise ValueError(msg)
        if not -1 <= restoration_shared_layers <= levels:
            msg = f"restoration_shared_layers must be in [-1, {levels}] for image_size {image_size}"
            raise ValueError(msg)
        self.image_size = image_size
        self.latent_dim = latent_dim
        self.score = score
        self.mean_intensity = mean_intensity
        widths = {"base_channels": base_channels, "max_channels": max_channels, "latent_dim": latent_dim}
        self.encoder = Encoder(image_size, **widths)
        self.decoder = Decoder(image_size, **widths)
        self.restoration_decoder: nn.Module | None = None
        if restoration_decoder:
            shared = levels if restoration_shared_layers == -1 else restoration_shared_layers
            if shared == levels:
                self.restoration_decoder = self.decoder
            else:
                shared_blocks = list(self.decoder.blocks)[levels - shared :] if shared else []
                self.restoration_decoder = Decoder(image_size, **widths, shared_blocks=shared_blocks)
        self.image_discriminator: nn.Module | None = None
        self.feature_discriminator: nn.Module | None = None
        if discriminators:
            if disc_layers is None:
                disc_layers = patch_discriminator_layers(image_size)
            if disc_layers < 1:
                msg = f"disc_layers must be at least 1, got {disc_layers}"
                raise ValueError(msg)
            self.image_discriminator = PatchDiscriminator(base_channels=disc_channels, num_layers=disc_layers)
            self.feature_discriminator = FeatureDiscriminator(latent_dim, feature_disc_hidden)
        # The normal-class center C of the center loss: state, not a parameter (Wen et al. 2016).
        self.register_buffer("center", torch.zeros(latent_dim))

    def generator_modules(self) -> nn.ModuleList:
        """E, D and M'_D (shared layers appear once in ``.parameters()``)."""
        modules = [self.encoder, self.decoder]
        if self.restoration_decoder is not None:
            modules.append(self.restoration_decoder)
        return nn.ModuleList(modules)

    def discriminator_modules(self) -> nn.ModuleList:
        """D_I and D_F, empty when the model has no discriminators."""
        return nn.ModuleList([m for m in (self.image_discriminator, self.feature_discriminator) if m is not None])

    def to_network_input(self, images: Tensor, check_finite: bool = True) -> Tensor:
        """Check an image batch and reduce it to the one grayscale channel the networks use.

        Args:
            images: ``(B, 1, S, S)`` or ``(B, 3, S, S)`` in ``[-1, 1]``; RGB is converted with ITU-R 601 weights.
            check_finite: Look for NaN/Inf values (reads the batch back to the host). Defaults to ``True``.

        Returns:
            Tensor: ``(B, 1, S, S)``, brightness-matched when the model has a ``mean_intensity``.

        Raises:
            TypeError: If ``images`` is not a floating-point tensor.
            ValueError: On a wrong rank, channel count or size, or NaN/Inf values.
        """
        if not isinstance(images, Tensor):
            msg = f"SALAD expects a torch.Tensor batch of images, got {type(images).__name__}"
            raise TypeError(msg)
        if not images.is_floating_point():
            msg = (
                f"SALAD expects floating-point images in [-1, 1], got dtype {images.dtype}; convert them first "
                "(uint8: images.float() / 127.5 - 1) or pass [0, 1] images through Salad's pre-processor"
            )
            raise TypeError(msg)
        if images.ndim != 4:
            msg = f"SALAD expects a batch of shape (B, C, H, W), got shape {tuple(images.shape)}"
            raise ValueError(msg)
        channels, height, width = images.shape[1:]
        if channels not in {1, 3}:
            msg = f"SALAD expects 1 (grayscale) or 3 (RGB) channels, got {channels} in shape {tuple(images.shape)}"
            raise ValueError(msg)
        if (height, width) != (self.image_size, self.image_size):
            msg = (
                f"SALAD was built for {self.image_size}x{self.image_size} inputs, got {height}x{width}; "
                "resize in the pre-processor (Salad.configure_pre_processor does) or build it with that image_size"
            )
            raise ValueError(msg)
        # Reads values, so not while torch.export / torch.compile traces (a graph cannot branch on data).
        tracing = torch.compiler.is_compiling() or torch.jit.is_tracing()
        if check_finite and not tracing and not torch.isfinite(images).all():
            msg = f"SALAD got NaN or Inf pixel values in a batch of shape {tuple(images.shape)}"
            raise NonFiniteInputError(msg)
        if images.dtype != self.center.dtype:  # float16/float64 input on a float32 model (dtype is static)
            images = images.to(self.center.dtype)
        images = rgb_to_grayscale(images) if channels == 3 else images
        return images if self.mean_intensity is None else match_mean_intensity(images, self.mean_intensity)

    def reconstruct(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """One image -> latent -> image pass: ``(z, x_hat)`` for network-ready images."""
        latent = self.encoder(images)
        return latent, self.decoder(latent)

    def forward(self, images: Tensor) -> InferenceBatch:
        """Score images: ``pred_score`` per the chosen score, ``anomaly_map`` = |x - D(E(x))|.

        Args:
            images: Pre-processed ``(B, 1 or 3, S, S)`` batch in ``[-1, 1]``.

        Returns:
            InferenceBatch: ``pred_score`` ``(B,)`` and ``anomaly_map`` ``(B, 1, S, S)``.
        """
        images = self.to_network_input(images)
        latent, reconstruction = self.reconstruct(images)
        anomaly_map = (images - reconstruction).abs()
        if self.score == "feature":
            pred_score = (latent - self.encoder(reconstruction)).abs().mean(dim=1)
        elif self.score == "image":
            pred_score = anomaly_map.flatten(1).mean(dim=1)
        else:
            pred_score = (latent - self.center).abs().mean(dim=1)
        return InferenceBatch(pred_score=pred_score, anomaly_map=anomaly_map)
