"""Measuring SALAD: the paper's metrics, raw test scores, and the benchmark runner next to anomalib's models.

* :mod:`~anomalib_salad.evaluation.metrics`: AUROC and F1 / accuracy / sensitivity / specificity at the best-F1
  threshold (the paper's protocol) as anomalib metrics, the intensity-matched AUROC and the brightness-shortcut
  signals. The model's evaluator uses them.
* :mod:`~anomalib_salad.evaluation.raw_scores`: a trained model's raw test scores with each of Table V's scores.
* :mod:`~anomalib_salad.evaluation.benchmark`: benchmark grids on anomalib's pipeline
  (``python -m anomalib_salad.evaluation.benchmark --config ...``), with one job per grid point
  (:mod:`~anomalib_salad.evaluation.benchmark_job`) and its throughput and score callbacks
  (:mod:`~anomalib_salad.evaluation.benchmark_callbacks`).
"""
