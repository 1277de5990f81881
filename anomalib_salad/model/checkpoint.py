"""Salad's checkpoints: checks that a file is one, and what Salad saves into and restores from it.

Lightning fails on a wrong file with ``KeyError: 'pytorch-lightning_version'`` or a page of missing state-dict
keys; :func:`read_salad_checkpoint` names what the file is instead (:class:`CheckpointError`, the error the
torch-free :mod:`anomalib_salad.deploy` raises for a wrong model file too). :class:`CheckpointHooks` is the part of
:class:`~anomalib_salad.Salad` that checks a file before loading it, saves and restores torch's random state, and
loads checkpoints written by earlier versions (anomalib's clamping post-processor, a deeper PatchGAN).
"""

import inspect
import pickle
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

import torch
from anomalib.post_processing import PostProcessor
from anomalib.utils.serialization import anomalib_safe_globals
from lightning.pytorch import LightningModule
from torch import Tensor

from ..data.cache import check_cached_resize
from ..deploy import CheckpointError
from .post_processing import RankPreservingPostProcessor
from .torch_model import PatchDiscriminator

__all__ = ["RNG_KEY", "CheckpointError", "CheckpointHooks", "check_salad_checkpoint", "read_salad_checkpoint"]

RNG_KEY = "salad_rng_states"

_SALAD_STATE_PREFIXES = ("model.encoder.", "model.decoder.")

#: The arguments that shape the networks' weights: a checkpoint loads only into a Salad built with its values.
ARCHITECTURE = (
    "image_size",
    "base_channels",
    "max_channels",
    "latent_dim",
    "restoration_shared_layers",
    "disc_channels",
)


def check_salad_checkpoint(
    checkpoint: object, source: str = "checkpoint", hyper_parameters: Iterable[str] | None = None
) -> None:
    """Check that a loaded checkpoint object was written by :class:`~anomalib_salad.Salad` through Lightning.

    Args:
        checkpoint: What ``torch.load`` returned.
        source: Name of the file, for messages.
        hyper_parameters: The argument names of the class that will load it (``Salad.__init__``); hyper-parameters
            outside them mean another model wrote the file. ``None`` skips that check.

    Raises:
        CheckpointError: Naming what the object is instead (bare state dict, another model, ...).
    """
    if not isinstance(checkpoint, Mapping):
        msg = f"{source} holds a {type(checkpoint).__name__}, not a Lightning checkpoint dict"
        raise CheckpointError(msg)
    if "state_dict" not in checkpoint:
        keys = sorted(str(key) for key in checkpoint)
        if keys and all(hasattr(value, "shape") for value in checkpoint.values()):
            what = f"a bare state_dict of {len(keys)} tensors (first: {keys[0]!r})"
        else:
            what = f"a dict with keys {keys[:10]}"
        msg = (
            f"{source} holds {what}, not a Lightning checkpoint: Salad.load_from_checkpoint needs the .ckpt that "
            "Engine.fit / anomalib train writes (keys 'state_dict', 'hyper_parameters', 'pytorch-lightning_version')"
        )
        raise CheckpointError(msg)
    state_keys = [str(key) for key in checkpoint["state_dict"]]
    saved = dict(checkpoint.get("hyper_parameters") or {})
    if not all(any(key.startswith(prefix) for key in state_keys) for prefix in _SALAD_STATE_PREFIXES):
        modules = sorted({".".join(key.split(".")[:2]) for key in state_keys})
        msg = (
            f"{source} was not written by Salad: its state_dict has no SALAD encoder/decoder weights "
            f"({', '.join(p + '*' for p in _SALAD_STATE_PREFIXES)}) but holds {modules[:12]}; "
            f"hyper-parameters {sorted(saved)[:12]}. Export it with its own model class."
        )
        raise CheckpointError(msg)
    unknown = sorted(set(saved) - set(hyper_parameters)) if hyper_parameters is not None else []
    if unknown:
        msg = f"{source} has hyper-parameters that Salad does not take: {unknown}; was it written by another model?"
        raise CheckpointError(msg)
    if "pytorch-lightning_version" not in checkpoint:
        msg = f"{source} lacks 'pytorch-lightning_version'; it was not saved by a Lightning Trainer"
        raise CheckpointError(msg)


def read_salad_checkpoint(path: str | Path, hyper_parameters: Iterable[str] | None = None) -> Mapping:
    """Read a checkpoint file (memory-mapped) and check that :class:`~anomalib_salad.Salad` wrote it.

    ``Salad.load_from_checkpoint`` calls this first, so the CLI (``--ckpt_path`` of ``anomalib export``) gets
    these messages too instead of Lightning's ``KeyError: 'pytorch-lightning_version'`` or a page of
    missing state-dict keys.

    Args:
        path: The ``.ckpt`` file.
        hyper_parameters: See :func:`check_salad_checkpoint`.

    Returns:
        Mapping: The checkpoint, its tensors memory-mapped.

    Raises:
        FileNotFoundError: If ``path`` is not a file.
        CheckpointError: If it is not a readable checkpoint or not Salad's.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"Salad checkpoint not found: {path}" + (" (a directory)" if path.is_dir() else "")
        raise FileNotFoundError(msg)
    try:
        with anomalib_safe_globals():
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        msg = f"{path} is not a readable PyTorch checkpoint ({type(error).__name__}: {first_line})"
        raise CheckpointError(msg) from error
    check_salad_checkpoint(checkpoint, str(path), hyper_parameters)
    return checkpoint


class CheckpointHooks:
    """Salad's checkpoint loading and saving (a mixin of Salad, before ``AnomalibModule``)."""

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | Path | IO[bytes],
        map_location: Any = None,
        hparams_file: str | Path | None = None,
        strict: bool | None = None,
        weights_only: bool = True,
        **kwargs: Any,
    ) -> LightningModule:
        """Load a checkpoint after checking that Salad wrote it (a clear error for any other file).

        Args:
            checkpoint_path: The ``.ckpt`` file (or an open binary file, loaded without the check).
            map_location: Device mapping passed to ``torch.load``. Defaults to ``None``.
            hparams_file: Optional YAML of hyper-parameters. Defaults to ``None``.
            strict: Enforce matching state-dict keys. Defaults to ``None``.
            weights_only: Restrict unpickling to tensors and allow-listed types. Defaults to ``True``.
            **kwargs: Hyper-parameters that override the saved ones.

        Returns:
            LightningModule: The model (a Salad).
        """
        if isinstance(checkpoint_path, str | Path):
            read_salad_checkpoint(checkpoint_path, inspect.signature(cls.__init__).parameters)
        return super().load_from_checkpoint(checkpoint_path, map_location, hparams_file, strict, weights_only, **kwargs)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Also save torch's random state, so a resumed fit draws the same noise, proxy tasks and batch order."""
        super().on_save_checkpoint(checkpoint)
        checkpoint[RNG_KEY] = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint[RNG_KEY]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the random state when resuming a fit; plain loading leaves the caller's state alone.

        A checkpoint trained with anomalib's own ``PostProcessor`` (Salad's default before it became
        :class:`RankPreservingPostProcessor`) keeps its clamp, so that it scores as it did when it was written.
        """
        self._check_architecture(checkpoint.get("hyper_parameters") or {})
        saved_with = set(checkpoint.get("callbacks", {}))  # Lightning keys callback states by class name
        if isinstance(self.post_processor, RankPreservingPostProcessor):
            self.post_processor.clamp = (
                PostProcessor.__name__ in saved_with and type(self.post_processor).__name__ not in saved_with
            )
        super().on_load_checkpoint(checkpoint)  # a "clamp" saved with the post-processor's settings has the last word
        check_cached_resize(self)  # the cache was filled before the checkpoint's pre-processor came back
        self._match_discriminator_depth(checkpoint.get("state_dict", {}))
        states = checkpoint.get(RNG_KEY)
        if states is None or self._trainer is None or self.trainer.state.fn != "fit":
            return
        torch.set_rng_state(states["cpu"])
        if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states["cuda"])

    def _check_architecture(self, saved: Mapping[str, Any]) -> None:
        """Refuse a checkpoint whose networks were built with other sizes than this model's, naming them.

        ``anomalib predict --model anomalib_salad.Salad --ckpt_path ...`` builds a Salad from the defaults (256 px)
        before loading; Lightning would then fail with a page of missing and mismatched state-dict keys.
        """
        differ = [name for name in ARCHITECTURE if name in saved and saved[name] != self.hparams.get(name, saved[name])]
        if differ:
            saved_text = ", ".join(f"{name}={saved[name]}" for name in differ)
            built_text = ", ".join(f"{name}={self.hparams[name]}" for name in differ)
            msg = (
                f"the checkpoint's networks were built with {saved_text}, this Salad with {built_text}. Build the "
                "model as it was trained: pass the training config (anomalib predict --config <training config> "
                "--ckpt_path ...) or the same --model.* values, or load it with Salad.load_from_checkpoint"
            )
            raise CheckpointError(msg)

    def _match_discriminator_depth(self, state_dict: dict[str, Tensor]) -> None:
        """Rebuild D_I with the depth that ``state_dict`` holds, if it differs from this model's.

        Checkpoints written before ``disc_layers`` existed hold the 70x70 PatchGAN at every image size, while the
        default now scales the depth to the image; the discriminator plays no part in scoring or export.
        """
        prefix = "model.image_discriminator.layers."
        indices = {int(key.removeprefix(prefix).split(".")[0]) for key in state_dict if key.startswith(prefix)}
        discriminator = self.model.image_discriminator
        if not indices or discriminator is None:
            return
        saved_layers = max(indices) - 1  # first block, the stride-2/1 blocks, then the output convolution
        if saved_layers != len(discriminator.layers) - 2:
            first = discriminator.layers[0][0]
            self.model.image_discriminator = PatchDiscriminator(first.in_channels, first.out_channels, saved_layers)
