"""anomalib-salad: the SALAD medical anomaly detector (Zhao et al., IEEE TMI 2021) as an anomalib model.

Example:
    >>> from anomalib_salad import Salad
    >>> model = Salad(image_size=64)
"""

from .data import SyntheticScans
from .lightning_model import Salad
from .torch_model import SaladModel

__all__ = ["Salad", "SaladModel", "SyntheticScans"]
__version__ = "0.1.0"
