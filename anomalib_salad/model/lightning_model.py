"""SALAD as an anomalib model: the :class:`Salad` AnomalibModule.

Zhao et al., "Anomaly Detection for Medical Images Using Self-Supervised and Translation-Consistent
Features", IEEE TMI 2021. Trained on normal images only; the generator side (encoder, decoder,
restoration decoder) and the discriminator side (PatchGAN D_I, MLP D_F) are optimised alternately
with Adam, as in the paper.

Example:
    >>> from anomalib.data import Folder
    >>> from anomalib.engine import Engine
    >>> from anomalib_salad import Salad
    >>> datamodule = Folder(name="scans", root="scans", normal_dir="train/normal",
    ...                     abnormal_dir="test/abnormal", normal_test_dir="test/normal", seed=0)
    >>> Engine(max_epochs=200).train(Salad(), datamodule=datamodule)  # doctest: +SKIP
"""

import logging
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import ImageVisualizer, Visualizer
from lightning.pytorch import Callback
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import Tensor, optim
from torchvision.transforms.v2 import Compose, InterpolationMode, Normalize, Resize

from ..data.cache import ImageCache
from ..data.file_check import ImageFileCheck
from ..data.visualizer import ReaderVisualizer
from ..evaluation.metrics import AUROC, NormalBrightnessCorrelation, NormalBrightnessShortcut, PixelAUROC, paper_metrics
from .checkpoint import CheckpointHooks
from .export_hooks import ExportHooks
from .loss import (
    TERMS,
    CenterLoss,
    GeneratorLoss,
    LatentKLLoss,
    StructureLoss,
    discriminator_loss,
    generator_adversarial_loss,
)
from .nonfinite import NonFiniteLossGuard
from .post_processing import RankPreservingPostProcessor
from .pre_processing import SaladPreProcessor
from .precision import TrainingSpeed
from .proxy_tasks import RandomBezierIntensity, RandomInPainting, RandomLocalPixelShuffle, RandomProxyTask
from .torch_model import NonFiniteInputError, SaladModel, ScoreType
from .weight_averaging import NetworkAveraging

logger = logging.getLogger(__name__)

__all__ = ["AUTOENCODER", "LinearDecay", "Salad"]

#: Salad arguments of the SSIM autoencoder of Table III: every loss weight but L_str's at zero (the networks that
#: only those terms use are not built).
AUTOENCODER = {"adv_weight": 0.0, "feature_weight": 0.0, "center_weight": 0.0, "restoration_weight": 0.0}


class LinearDecay:
    """Learning-rate factor: 1 for the first ``constant_epochs``, then linear towards 0 at ``total_epochs``.

    The rule of CycleGAN, whose settings the paper follows: with 200 epochs and 100 constant ones, epoch 100
    runs at 100/101 of the rate and epoch 199 at 1/101. A class rather than a lambda so that
    ``LambdaLR.state_dict`` saves it and a resumed run continues the schedule.

    Args:
        total_epochs: Length of training.
        constant_epochs: Epochs at the initial rate.
    """

    def __init__(self, total_epochs: int, constant_epochs: int) -> None:
        self.total_epochs = total_epochs
        self.constant_epochs = constant_epochs

    def __call__(self, epoch: int) -> float:
        """Factor applied to the base learning rate in ``epoch`` (0-based)."""
        decay_epochs = self.total_epochs - self.constant_epochs + 1
        return max(0.0, 1.0 - max(0, epoch + 1 - self.constant_epochs) / decay_epochs)


class Salad(CheckpointHooks, ExportHooks, TrainingSpeed, NonFiniteLossGuard, AnomalibModule):
    """SALAD: self-supervised, translation-consistent features for medical anomaly detection.

    The defaults are the paper's (Sec. IV-B): 256x256 grayscale input in [-1, 1], eight-layer encoder and
    decoders, loss weights alpha=1 and beta=gamma=delta=eta=10, Adam with lr 2e-4 and betas (0.5, 0.999),
    constant for the first half of ``max_epochs`` then linearly decayed to zero (the paper: 200 epochs,
    batch 64). Each ablation of Tables III-V is an argument; a zero loss weight skips that term's compute.

    Four parts live in modules of their own: checkpoint loading and saving
    (:class:`~anomalib_salad.model.checkpoint.CheckpointHooks`), export to ONNX / OpenVINO and INT8
    (:class:`~anomalib_salad.model.export_hooks.ExportHooks`), the choice of training precision
    (:class:`~anomalib_salad.model.precision.TrainingSpeed`) and what a NaN/Inf loss does
    (:class:`~anomalib_salad.model.nonfinite.NonFiniteLossGuard`).

    Args:
        image_size: Side of the square network input; a power of two >= 32. Defaults to ``256``.
        base_channels: Width of the first encoder layer (doubling up to ``max_channels``). Defaults to ``64``.
        max_channels: Cap on layer widths. Defaults to ``512``.
        latent_dim: Size of the latent vector; the paper does not state it, ``512`` matches the pix2pix
            bottleneck. Defaults to ``512``.
        adv_weight: alpha, weight of the LSGAN generator loss L_adv. ``0`` also drops both discriminators.
            Defaults to ``1.0``.
        structure_weight: beta, weight of the image reconstruction loss L_str, or ``"l1_matched"`` (not in the
            paper): beta follows the training batches so that the term is as large as an L1 image error at the
            paper's weight of 10 would be (:class:`~anomalib_salad.model.loss.GeneratorLoss`; about 3.6 for SSIM on
            fitted brain MRI slices). Defaults to ``10.0``.
        feature_weight: gamma, weight of the latent reconstruction loss L_fea = |E(D(z)) - z|.
            Defaults to ``10.0``.
        center_weight: delta, weight of the latent compactness loss (center or KL). Defaults to ``10.0``.
        restoration_weight: eta, weight of the self-supervised restoration loss L_self. ``0`` also drops
            the restoration decoder. Defaults to ``10.0``.
        structure_loss: ``"ssim"`` (the paper) or ``"l1"`` (Table III). Defaults to ``"ssim"``.
        latent_loss: ``"center"`` (the paper) or ``"kl"`` (Table III). Defaults to ``"center"``.
        center_rate: Update rate of the class center (Wen et al. 2016). Defaults to ``0.5``.
        restoration_shared_layers: Decoder layers the restoration decoder shares with the main decoder
            (Table IV): ``0`` encoder only (the paper), ``k`` the last k, ``-1`` all. Defaults to ``0``.
        proxy_task_weights: Relative probabilities of in-painting, local pixel shuffling and the Bezier
            intensity map. Defaults to ``(1.0, 1.0, 1.0)``.
        inpainting_tiles: Tiles filled with noise per image. Defaults to ``5``.
        shuffle_tiles: Tiles shuffled per image. Defaults to ``300``.
        score: ``"feature"`` (A_F, the paper), ``"image"`` (A_I) or ``"center"`` (A_C), Table V.
            Defaults to ``"feature"``.
        disc_channels: Width of the PatchGAN's first layer. Defaults to ``64``.
        disc_layers: Stride-2 layers of the PatchGAN. ``None`` scales its patches to the image as the paper's
            70x70 patches are to 256 px: ``log2(image_size) - 5`` layers, at least 1 (3 at 256 px, 1 at 64 px,
            whose 16x16 patches cover 25 % of the side). Defaults to ``None``.
        feature_disc_hidden: Hidden widths of the MLP feature discriminator. Defaults to ``(512, 256)``.
        lr: Adam learning rate of both optimizers. Defaults to ``2e-4``.
        beta1: Adam beta1. Defaults to ``0.5``.
        beta2: Adam beta2. Defaults to ``0.999``.
        constant_lr_fraction: Fraction of ``max_epochs`` at the initial rate before the linear decay.
            Defaults to ``0.5``.
        nonfinite_loss: What a NaN/Inf loss does: ``"raise"`` stops training with an error naming the step and
            the term (checkpoints of earlier epochs stay), ``"skip"`` drops that batch's updates, warns, and
            counts it in the logged ``nonfinite_steps``. Defaults to ``"raise"``.
        cache_images: Decode and resize the train and validation images once and keep them in memory (float32,
            bit-identical to the uncached path; grayscale as one channel) on the training device for the whole fit; see
            :class:`~anomalib_salad.data.cache.ImageCache`. The pre-processor still runs on every batch, so export is
            unchanged. Defaults to ``True``.
        train_precision: ``"auto"`` trains with bf16 autocast where the device computes bf16 natively (AMX or
            AVX512-BF16 CPUs, recent GPUs) and, on a CPU, a few timed forward and backward passes at setup show it
            at least 1.1x faster than fp32 (it was not on one AVX512-BF16 Xeon); fp32 elsewhere. ``"32"`` (or the
            number 32, as YAML reads it) always fp32; ``"bf16"`` always bf16 (refused on a CPU without native bf16,
            where it runs ~27x slower). Losses, the center and scoring stay fp32. The choice and its evidence are
            logged. Defaults to ``"auto"``.
        channels_last: Train in the channels-last memory format. Defaults to ``False``.
        compile_networks: ``torch.compile`` the networks for the fit (compilation takes a minute or more at the
            start; the checkpoint and export are unchanged). Defaults to ``False``.
        antialias: Resize with antialiasing in the default pre-processor (torchvision's default), so inputs much
            larger than ``image_size`` (e.g. 256 px scans for a 64 px model) do not alias fine texture into noise;
            it raised brain MRI AUROC at 64 px (docs/results.md). With the image cache it runs once per image; the
            export computes the same resize in the graph
            (:class:`~anomalib_salad.model.pre_processing.AntialiasedResize`), so every deployment sees the training
            pixels. ``False``: plain bicubic, the earlier default (checkpoints keep the resize they were trained
            with). Defaults to ``True``.
        mean_intensity: Brightness normalisation, not in the paper: scale each image so that its mean intensity
            on the [0, 1] scale is this value (black stays black; clipped at white) in the model, so training,
            scoring and every export apply it. On brain MRI, normal and tumour slices come from collections of
            different brightness, and A_F learns that brightness late in training (docs/results.md); set it near
            the training images' mean intensity (0.23 there) to take that cue away; the anomaly map is then the
            residual of the matched image. ``None`` (the paper) leaves the images as they are. Defaults to ``None``.
        normal_fpr: Fit the image threshold on the validation split's normal images alone, at this
            false-positive rate (e.g. ``0.05``), instead of anomalib's best F1 on validation labels; for a
            validation split of normals held out from training (``val_split_mode: from_train``), which has no
            anomaly to fit an F1 on. ``anomalib predict``, the export and ``salad-score`` label by it
            (:class:`~anomalib_salad.model.post_processing.RankPreservingPostProcessor`). Defaults to ``None``.
        weight_averaging: Not in the paper: score with an exponential moving average of the networks' weights whose
            time constant is this fraction of the run's steps (e.g. ``0.1``), and a center refitted to it on the
            training images; training steps the live weights, validation, test, predict, checkpoints and export use
            the average (:class:`~anomalib_salad.model.weight_averaging.NetworkAveraging`). ``None`` (the paper)
            scores with the last weights. Defaults to ``None``.
        pre_processor: Pre-processor, or ``True`` for bicubic resize to ``image_size`` and [-1, 1] scaling.
            Defaults to ``True``.
        post_processor: Post-processor or flag. Defaults to ``True``.
        evaluator: Evaluator or flag; the default computes image AUROC and F1. Defaults to ``True``.
        visualizer: Visualizer or flag. Defaults to ``True``.

    Example:
        >>> from anomalib_salad import Salad
        >>> model = Salad(image_size=64, structure_loss="l1", score="image")
        >>> model.model.score
        'image'
    """

    def __init__(
        self,
        image_size: int = 256,
        base_channels: int = 64,
        max_channels: int = 512,
        latent_dim: int = 512,
        adv_weight: float = 1.0,
        structure_weight: float | Literal["l1_matched"] = 10.0,
        feature_weight: float = 10.0,
        center_weight: float = 10.0,
        restoration_weight: float = 10.0,
        structure_loss: Literal["ssim", "l1"] = "ssim",
        latent_loss: Literal["center", "kl"] = "center",
        center_rate: float = 0.5,
        restoration_shared_layers: int = 0,
        proxy_task_weights: Sequence[float] = (1.0, 1.0, 1.0),
        inpainting_tiles: int = 5,
        shuffle_tiles: int = 300,
        score: ScoreType = "feature",
        disc_channels: int = 64,
        disc_layers: int | None = None,
        feature_disc_hidden: Sequence[int] = (512, 256),
        lr: float = 2e-4,
        beta1: float = 0.5,
        beta2: float = 0.999,
        constant_lr_fraction: float = 0.5,
        nonfinite_loss: Literal["raise", "skip"] = "raise",
        cache_images: bool = True,
        train_precision: Literal["auto", "32", "bf16", 32] = "auto",
        channels_last: bool = False,
        compile_networks: bool = False,
        antialias: bool = True,
        mean_intensity: float | None = None,
        normal_fpr: float | None = None,
        weight_averaging: float | None = None,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        if pre_processor is True:
            pre_processor = self.configure_pre_processor(image_size, antialias=antialias)
        if post_processor is True:
            post_processor = self.configure_post_processor(normal_fpr)
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        if latent_loss not in {"center", "kl"}:
            msg = f"latent_loss must be 'center' or 'kl', got {latent_loss!r}"
            raise ValueError(msg)
        if nonfinite_loss not in {"raise", "skip"}:
            msg = f"nonfinite_loss must be 'raise' or 'skip', got {nonfinite_loss!r}"
            raise ValueError(msg)
        if not 0 <= constant_lr_fraction <= 1:
            msg = f"constant_lr_fraction must be in [0, 1], got {constant_lr_fraction}"
            raise ValueError(msg)
        self.loss = GeneratorLoss(adv_weight, structure_weight, feature_weight, center_weight, restoration_weight)
        weights = (adv_weight, self.loss.beta, feature_weight, center_weight, restoration_weight)
        # The one place that decides which terms are computed and which networks exist: a zero weight drops both.
        self.active_terms = frozenset(name for name, weight in zip(TERMS, weights, strict=True) if weight > 0)
        self.model = SaladModel(
            image_size=image_size,
            base_channels=base_channels,
            max_channels=max_channels,
            latent_dim=latent_dim,
            restoration_decoder="self" in self.active_terms,
            restoration_shared_layers=restoration_shared_layers,
            discriminators="adv" in self.active_terms,
            disc_channels=disc_channels,
            disc_layers=disc_layers,
            feature_disc_hidden=feature_disc_hidden,
            score=score,
            mean_intensity=mean_intensity,
        )
        self.structure_loss = StructureLoss(structure_loss)
        self.center_loss = CenterLoss(center_rate)
        self.latent_loss = self.center_loss if latent_loss == "center" else LatentKLLoss()
        self.proxy_task = None
        if "self" in self.active_terms:
            self.proxy_task = RandomProxyTask(
                [RandomInPainting(inpainting_tiles), RandomLocalPixelShuffle(shuffle_tiles), RandomBezierIntensity()],
                weights=proxy_task_weights,
            )
        self.lr, self.betas, self.constant_lr_fraction = lr, (beta1, beta2), constant_lr_fraction
        self.nonfinite_loss = nonfinite_loss
        self.nonfinite_steps = 0
        self.weight_averaging = NetworkAveraging(weight_averaging) if weight_averaging is not None else None
        train_precision = str(train_precision)  # YAML and ``--set train_precision=32`` give the number 32
        if train_precision not in {"auto", "32", "bf16"}:
            msg = f"train_precision must be 'auto', '32' or 'bf16', got {train_precision!r}"
            raise ValueError(msg)
        self.cache_images, self.train_precision = cache_images, train_precision
        self.channels_last, self.compile_networks = channels_last, compile_networks
        self.bf16 = False  # decided in setup("fit") from the training device
        self.precision_evidence = ""  # why, in words
        self._pending_checks: list[tuple[int, Tensor, list[str]]] = []
        self.automatic_optimization = False

    @classmethod
    def configure_pre_processor(
        cls, image_size: int | tuple[int, int] | None = None, antialias: bool = True
    ) -> PreProcessor:
        """Bicubic resize to ``image_size`` and scaling of [0, 1] to [-1, 1], as in the paper.

        Only ``Resize``, ``Normalize`` and ``Compose`` are used, so anomalib stores the transform in the
        checkpoint and an export from a reloaded checkpoint still resizes and scales. anomalib would export the
        resize without antialiasing; :class:`~anomalib_salad.model.pre_processing.SaladPreProcessor` exports an
        antialiased one as the same matrix products in the graph.

        Args:
            image_size: Side (or ``(height, width)``) of the network input. Defaults to ``256``.
            antialias: Antialias the resize (see ``Salad(antialias=...)``). Defaults to ``True``.

        Returns:
            PreProcessor: The pre-processor.
        """
        size = image_size or 256
        size = (size, size) if isinstance(size, int) else tuple(size)
        return SaladPreProcessor(
            transform=Compose(
                [
                    Resize(size, interpolation=InterpolationMode.BICUBIC, antialias=antialias),
                    Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]),
                ]
            ),
        )

    @staticmethod
    def configure_post_processor(normal_fpr: float | None = None) -> RankPreservingPostProcessor:
        """Normalisation and thresholds as anomalib fits them, with a strictly increasing squash for its clamp.

        Scores beyond the validation range no longer tie at 0 or 1, so ``anomalib test``, ``Engine.test``, the
        benchmark and the exported model all report the AUROC of the raw scores; labels are unchanged.

        Args:
            normal_fpr: Fit the image threshold at this false-positive rate on the validation normals instead of
                at the best F1 (``Salad(normal_fpr=...)``). Defaults to ``None``.

        Returns:
            RankPreservingPostProcessor: The post-processor.
        """
        return RankPreservingPostProcessor(normal_fpr=normal_fpr)

    @classmethod
    def configure_visualizer(cls) -> ImageVisualizer:
        """The image visualizer, drawing originals with the project's reader (DICOM, NIfTI slices, 16-bit)."""
        return ReaderVisualizer()

    @staticmethod
    def configure_evaluator() -> Evaluator:
        """The paper's metrics on the test set (pixel AUROC too where masks exist), image AUROC on validation.

        Test: AUROC, and F1 / accuracy / sensitivity / specificity both at the best-F1 threshold (the paper's
        protocol) and at anomalib's validation-fitted threshold; see
        :func:`anomalib_salad.evaluation.metrics.paper_metrics`.
        Validation AUROC is there so that early stopping on ``image_AUROC`` works. Validation also logs the
        label-free brightness-shortcut signal of the normal images, signed and as its size
        (``image_NormalBrightnessCorrelation``, ``image_NormalBrightnessShortcut``; see
        :class:`~anomalib_salad.evaluation.metrics.NormalBrightnessCorrelation`).
        """
        test_metrics = [*paper_metrics(), PixelAUROC()]
        val_metrics = [
            AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
            NormalBrightnessCorrelation(prefix="image_"),
            NormalBrightnessShortcut(prefix="image_"),
        ]
        return Evaluator(val_metrics=val_metrics, test_metrics=test_metrics)

    def configure_callbacks(self) -> list[Callback]:
        """The callbacks of anomalib's components plus :class:`~anomalib_salad.data.file_check.ImageFileCheck`.

        The check decodes every image of the run's datasets once, before the first batch, and names each file that
        cannot be read or that anomalib's reader would clip (16-bit); anomalib alone fails only at the batch that
        holds a bad file, for truncated files without naming it, and clips 16-bit files silently. With
        ``weight_averaging``, :class:`~anomalib_salad.model.weight_averaging.NetworkAveraging` keeps the average.
        """
        callbacks = super().configure_callbacks()
        callbacks = list(callbacks) if isinstance(callbacks, Sequence) else [callbacks]
        averaging = [self.weight_averaging] if self.weight_averaging is not None else []
        return [*callbacks, ImageFileCheck(), *([ImageCache()] if self.cache_images else []), *averaging]

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """Manual optimisation forbids gradient clipping by the trainer; the sanity check would fit nothing."""
        return {"gradient_clip_val": 0, "num_sanity_val_steps": 0}

    @property
    def learning_type(self) -> LearningType:
        """SALAD learns from normal images only."""
        return LearningType.ONE_CLASS

    def __setattr__(self, name: str, value: Any) -> None:
        """Refuse a replaced ``configure_optimizers`` (``--optimizer`` / ``--lr_scheduler`` on the CLI).

        The CLI installs its optimizer by assigning ``model.configure_optimizers``; Lightning would later fail on
        it with an unrelated ``AttributeError``, or train with one optimizer that SALAD's steps cannot use.
        """
        if name == "configure_optimizers":
            msg = (
                "Salad trains a generator and two discriminators with two optimizers and its own schedule; "
                "a single --optimizer/--lr_scheduler from the command line cannot be honoured. Remove it and set "
                "--model.lr, --model.beta1, --model.beta2 or --model.constant_lr_fraction instead."
            )
            raise ValueError(msg)
        super().__setattr__(name, value)

    def setup(self, stage: str) -> None:
        """Check the DDP strategy, and choose the training precision and memory format.

        Each of SALAD's two backward passes leaves the other side's parameters without gradients, which DDP
        accepts only with unused-parameter detection: Lightning's registered ``ddp_find_unused_parameters_true``
        strategy (or ``DDPStrategy(find_unused_parameters=True)``). Plain ``ddp`` is refused here, before the
        first step, rather than failing inside DDP's reducer.
        """
        super().setup(stage)
        strategy = self._trainer.strategy if self._trainer is not None else None
        if stage == "fit" and isinstance(strategy, DDPStrategy) and strategy.world_size > 1:
            kwargs = getattr(strategy, "_ddp_kwargs", {})  # read only: Lightning has no public getter
            if not kwargs.get("find_unused_parameters"):
                msg = (
                    "Salad updates its generator and its discriminators in turn, which DDP allows only with "
                    "unused-parameter detection: use --trainer.strategy ddp_find_unused_parameters_true "
                    "(Engine(strategy='ddp_find_unused_parameters_true'))."
                )
                raise ValueError(msg)
        if stage == "fit" and strategy is not None:
            self._configure_speed(strategy.root_device)

    def configure_optimizers(self) -> tuple[list[optim.Optimizer], list[optim.lr_scheduler.LRScheduler]]:
        """Adam for the generator side and, with adversarial training, Adam for the discriminators.

        Returns:
            Optimizers ``[generator, discriminator]`` and one per-epoch ``LambdaLR`` each.
        """
        modules = [self.model.generator_modules()]
        if "adv" in self.active_terms:
            modules.append(self.model.discriminator_modules())
        optimizers = [optim.Adam(m.parameters(), lr=self.lr, betas=self.betas) for m in modules]
        max_epochs = self.trainer.max_epochs if self._trainer is not None else None
        if max_epochs is None or max_epochs < 0:
            logger.warning("Salad: max_epochs is unbounded, so the learning rate stays constant.")
            schedule = LinearDecay(total_epochs=2**62, constant_epochs=2**62)
        else:
            schedule = LinearDecay(max_epochs, round(max_epochs * self.constant_lr_fraction))
        return optimizers, [optim.lr_scheduler.LambdaLR(o, schedule) for o in optimizers]

    def _network_input(self, batch: Batch, stage: str) -> Tensor:
        """Checked grayscale network input of a pre-processed batch; a NaN/Inf error names the image files."""
        images = batch.image
        # On an accelerator a per-batch NaN check would wait for the device; in training the loss check catches NaN.
        check = stage != "training" or images.device.type == "cpu"
        try:
            return self.model.to_network_input(images, check_finite=check)
        except NonFiniteInputError as error:
            bad = (~torch.isfinite(images)).flatten(1).any(dim=1).nonzero().flatten().tolist()
            paths = [batch.image_path[i] for i in bad] if batch.image_path is not None else bad
            msg = f"Salad {stage}: the batch holds NaN or Inf pixel values in image(s) {paths}"
            raise NonFiniteInputError(msg) from error

    def _generator_terms(self, images: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Every active generator-side loss term, and the samples the discriminator step needs.

        Networks run under :meth:`_autocast`; each loss is computed in fp32 on ``.float()`` outputs.
        """
        model, active = self.model, self.active_terms.__contains__
        terms: dict[str, Tensor] = {}
        with self._autocast():
            latent = model.encoder(images).float()
        samples = {"latent": latent}
        if active("str"):
            with self._autocast():
                decoded = model.decoder(latent).float()
            terms["str"] = self.structure_loss(images, decoded)
            if self.loss.matched:
                self.loss.match(F.l1_loss(decoded.detach(), images), terms["str"])
        if active("fea") or active("adv"):
            noise = torch.randn_like(latent)
            with self._autocast():
                fake = model.decoder(noise)
                encoded_fake = model.encoder(fake).float() if active("fea") else None
                adversarial = active("adv")
                verdicts = (model.feature_discriminator(latent), model.image_discriminator(fake)) if adversarial else ()
            samples |= {"noise": noise, "fake": fake}
            if active("fea"):
                terms["fea"] = F.l1_loss(encoded_fake, noise)
            if active("adv"):
                terms["adv"] = generator_adversarial_loss(*(verdict.float() for verdict in verdicts))
        if active("ct"):
            terms["ct"] = self.latent_loss(latent, model.center)
        if active("self"):
            with torch.no_grad():
                perturbed = self.proxy_task((images + 1) / 2) * 2 - 1
            with self._autocast():
                restored = model.restoration_decoder(model.encoder(perturbed)).float()
            terms["self"] = F.l1_loss(restored, images)
        return terms, samples

    def _discriminator_loss(
        self, images: Tensor, samples: dict[str, Tensor], logs: dict[str, Tensor] | None = None
    ) -> Tensor:
        """Eqs. (1) + (2) on this step's real images and noise and the pre-update generator's samples.

        Each equation's value goes into ``logs`` (``loss_d_image``, ``loss_d_latent``) when given: an LSGAN
        discriminator whose loss falls towards 0 has won, and the generator gets no useful gradient from it.
        """
        model = self.model
        with self._autocast():
            on_images = model.image_discriminator(images), model.image_discriminator(samples["fake"])
            on_latents = model.feature_discriminator(samples["noise"]), model.feature_discriminator(samples["latent"])
        image_loss = discriminator_loss(*(verdict.float() for verdict in on_images))
        feature_loss = discriminator_loss(*(verdict.float() for verdict in on_latents))
        if logs is not None:
            logs |= {"loss_d_image": image_loss.detach(), "loss_d_latent": feature_loss.detach()}
        return image_loss + feature_loss

    def training_step(self, batch: Batch, batch_idx: int) -> STEP_OUTPUT:
        """One generator update (eq. 9), the center update, then one discriminator update (eqs. 1 and 2)."""
        del batch_idx
        optimizers = self.optimizers()
        generator_optimizer, *discriminator_optimizer = optimizers if isinstance(optimizers, list) else [optimizers]
        images = self._network_input(batch, "training")

        with self.toggled_optimizer(generator_optimizer):
            terms, samples = self._generator_terms(images)
            generator_loss = self.loss(terms)
            if not self._finite(generator_loss, terms):
                return None
            generator_optimizer.zero_grad(set_to_none=True)
            self.manual_backward(generator_loss)
            generator_optimizer.step()
        self.center_loss.update_center(self.model.center, samples["latent"])
        logs = {f"loss_{name}": value.detach() for name, value in terms.items()} | {"loss_g": generator_loss.detach()}
        if self.loss.matched:
            logs["structure_weight"] = torch.as_tensor(self.loss.beta).detach()
        # Label-free health: a latent spread far below N(0, I)'s 1 is a collapse; a center that keeps moving means
        # the encoder keeps moving every normal code (docs/results.md, brain MRI).
        latent = samples["latent"].detach()
        logs |= {"latent_std": latent.std(dim=0, correction=0).mean(), "center_norm": self.model.center.norm()}

        for optimizer in discriminator_optimizer:
            with self.toggled_optimizer(optimizer):
                detached = {name: value.detach() for name, value in samples.items()}
                disc_loss = self._discriminator_loss(images, detached, logs)
                if self._finite(disc_loss, {"d": disc_loss}):
                    optimizer.zero_grad(set_to_none=True)
                    self.manual_backward(disc_loss)
                    optimizer.step()
                    logs["loss_d"] = disc_loss.detach()

        # Not on the progress bar: it would read every value back from the device each step (a host sync).
        self.log_dict(logs, on_step=True, on_epoch=True, batch_size=len(images))
        return {"loss": generator_loss.detach()}

    def on_train_epoch_start(self) -> None:
        """Bring the per-epoch schedules to this epoch (manual optimisation does not step them).

        Stepping up to ``current_epoch`` at the start, rather than once at the end, keeps a run resumed from a
        checkpoint written at validation end on the same schedule as an uninterrupted one.
        """
        schedulers = self.lr_schedulers()
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
            while scheduler.last_epoch < self.current_epoch:
                scheduler.step()

    def validation_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Score the batch; the post-processor fits its threshold and normalisation on these outputs."""
        del args, kwargs
        self._network_input(batch, "validation")
        return batch.update(**self.model(batch.image)._asdict())

    def test_step(self, batch: Batch, batch_idx: int, *args, **kwargs) -> STEP_OUTPUT:
        """Score the batch after the same input checks as training."""
        self._network_input(batch, "test")
        return super().test_step(batch, batch_idx, *args, **kwargs)

    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> STEP_OUTPUT:
        """Score the batch after the same input checks as training."""
        self._network_input(batch, "predict")
        return super().predict_step(batch, batch_idx, dataloader_idx)
