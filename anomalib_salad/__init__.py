"""anomalib-salad: the SALAD medical anomaly detector (Zhao et al., IEEE TMI 2021) as an anomalib model.

The package is laid out by role:

* :mod:`anomalib_salad.data`: the one image reader (:mod:`anomalib_salad.data.reader`: PNG/TIFF, DICOM, NIfTI),
  anomalib datamodules that read through it (``MedicalFolder``), file checks, the image cache, synthetic scans.
* :mod:`anomalib_salad.model`: the SALAD networks, losses and proxy tasks, pre- and post-processing, the ``Salad``
  Lightning module with its training precision, checkpoints and export, and ``SaladOpenVINO``.
* :mod:`anomalib_salad.deploy`: scoring with an exported model without torch: ``SaladInferencer`` and the
  ``salad-score`` command (:mod:`anomalib_salad.deploy.score`).
* :mod:`anomalib_salad.evaluation`: the paper's metrics, raw test scores, and the benchmark runner that trains
  SALAD next to anomalib's models.

The names below load on first use, so that :mod:`anomalib_salad.deploy` runs an exported model on a machine
without torch. The module paths of the earlier flat layout (:data:`MOVED_MODULES`, e.g. ``anomalib_salad.reader``
or ``anomalib_salad.lightning_model``) import as the modules that replaced them, so older imports, class paths
pickled into exported models and ``python -m anomalib_salad.benchmark`` keep working.

Example:
    >>> from anomalib_salad import Salad
    >>> model = Salad(image_size=64)
"""

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable, Mapping
from importlib import import_module
from types import CodeType, ModuleType
from typing import Any

__all__ = [
    "MedicalFolder",
    "ReaderConfig",
    "Salad",
    "SaladModel",
    "SaladOpenVINO",
    "SaladPreProcessor",
    "SyntheticScans",
]
__version__ = "0.1.0"

_HOMES = {
    "MedicalFolder": ".data.folder",
    "ReaderConfig": ".data.reader",
    "Salad": ".model.lightning_model",
    "SaladModel": ".model.torch_model",
    "SaladOpenVINO": ".model.openvino_model",
    "SaladPreProcessor": ".model.pre_processing",
    "SyntheticScans": ".data.synthetic",
}

#: ``anomalib_salad.<key>`` of the earlier flat layout imports as ``anomalib_salad.<value>`` (the same module).
MOVED_MODULES = {
    "benchmark": "evaluation.benchmark",
    "cache": "data.cache",
    "checkpoint": "model.checkpoint",
    "export": "model.export",
    "hardware": "model.precision",
    "image_io": "data",
    "lightning_model": "model.lightning_model",
    "loss": "model.loss",
    "metrics": "evaluation.metrics",
    "openvino_model": "model.openvino_model",
    "post_processing": "model.post_processing",
    "pre_processing": "model.pre_processing",
    "proxy_tasks": "model.proxy_tasks",
    "reader": "data.reader",
    "score": "deploy.score",
    "torch_model": "model.torch_model",
}


def lazy_names(package: str, homes: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's ``__getattr__`` and ``__dir__`` (PEP 562) that import each name's module on first use.

    Args:
        package: The package's ``__name__``.
        homes: Each name and the module, relative to ``package``, that defines it.

    Returns:
        tuple: ``__getattr__`` and ``__dir__`` for the package's namespace.
    """

    def __getattr__(name: str) -> Any:  # noqa: N807
        if name in homes:
            return getattr(import_module(homes[name], package), name)
        msg = f"module {package!r} has no attribute {name!r}"
        raise AttributeError(msg)

    def __dir__() -> list[str]:  # noqa: N807
        return sorted({*vars(sys.modules[package]), *homes})

    return __getattr__, __dir__


__getattr__, __dir__ = lazy_names(__name__, _HOMES)


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``anomalib_salad.<old>`` of :data:`MOVED_MODULES` as the module that replaced it, not a copy."""

    @staticmethod
    def _target(fullname: str) -> str | None:
        package, _, old = fullname.rpartition(".")
        return f"{__name__}.{MOVED_MODULES[old]}" if package == __name__ and old in MOVED_MODULES else None

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        """A spec for an old module path, ``None`` for any other name."""
        del path, target
        return importlib.machinery.ModuleSpec(fullname, self) if self._target(fullname) else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        """The new module itself (imported now); its own spec is kept to be put back by :meth:`exec_module`."""
        module = import_module(self._target(spec.name))
        spec.loader_state = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run; the import system replaced the module's ``__spec__``, which is restored."""
        module.__spec__ = module.__spec__.loader_state

    def get_code(self, fullname: str) -> CodeType:
        """``python -m anomalib_salad.<old>`` runs the new module as ``__main__``."""
        source = f"import runpy\nrunpy.run_module({self._target(fullname)!r}, run_name='__main__', alter_sys=True)\n"
        return compile(source, fullname, "exec")


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModules())
