"""anomalib-salad: the SALAD medical anomaly detector (Zhao et al., IEEE TMI 2021) as an anomalib model.

The names below load on first use, so that ``anomalib_salad.deploy`` can run an exported model on a machine
without torch.

Example:
    >>> from anomalib_salad import Salad
    >>> model = Salad(image_size=64)
"""

from importlib import import_module
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
    "MedicalFolder": ".image_io",
    "ReaderConfig": ".reader",
    "Salad": ".lightning_model",
    "SaladModel": ".torch_model",
    "SaladOpenVINO": ".openvino_model",
    "SaladPreProcessor": ".pre_processing",
    "SyntheticScans": ".data",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(_HOMES[name], __name__), name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
