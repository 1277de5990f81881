"""Checks that a file is a Salad checkpoint, below the model: deployment and the model both use them.

Lightning fails on a wrong file with ``KeyError: 'pytorch-lightning_version'`` or a page of missing state-dict
keys; these checks name what the file is instead. Importing this module needs neither torch nor the model
(torch is imported when a file is read), so the torch-free deployment layer can share its error type.
"""

import pickle
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = ["CheckpointError", "check_salad_checkpoint", "read_salad_checkpoint"]

_SALAD_STATE_PREFIXES = ("model.encoder.", "model.decoder.")


class CheckpointError(ValueError):
    """A file is not a usable Salad checkpoint or exported SALAD model."""


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
    import torch  # noqa: PLC0415  (torch stays off the inference path)
    from anomalib.utils.serialization import anomalib_safe_globals  # noqa: PLC0415

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
