"""``salad-score``: score an archive of images, DICOM files and NIfTI volumes with an exported SALAD model.

Torch-free, like the rest of :mod:`anomalib_salad.deploy`. The command and its options are in
:mod:`~anomalib_salad.deploy.score.cli` (``salad-score --help``, or ``python -m anomalib_salad.deploy.score``); the
scoring loop in :mod:`~anomalib_salad.deploy.score.scoring`; the input list, shards and output files in
:mod:`~anomalib_salad.deploy.score.files`; the per-scan table and ``salad-score merge`` in
:mod:`~anomalib_salad.deploy.score.scans`.
"""

from .cli import main, parse_args
from .files import SCORE_COLUMNS, UsageError, parse_shard, resolve_inputs, select_shard
from .scans import SCAN_COLUMNS, SCAN_SCORES, aggregate_scans, label_threshold, merge, scan_score

__all__ = [
    "SCAN_COLUMNS",
    "SCAN_SCORES",
    "SCORE_COLUMNS",
    "UsageError",
    "aggregate_scans",
    "label_threshold",
    "main",
    "merge",
    "parse_args",
    "parse_shard",
    "resolve_inputs",
    "scan_score",
    "select_shard",
]
