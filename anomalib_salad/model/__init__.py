"""The SALAD model for anomalib: networks, losses, proxy tasks, processing, the Lightning module, export.

* :mod:`~anomalib_salad.model.torch_model`: :class:`SaladModel`: encoder, decoder, restoration decoder, PatchGAN,
  latent MLP and the three scores A_F / A_I / A_C.
* :mod:`~anomalib_salad.model.loss`: the loss terms L_adv, L_str, L_fea, L_ct, L_self and their weighted sum (eq. 9).
* :mod:`~anomalib_salad.model.proxy_tasks`: the restoration branch's in-painting, pixel shuffling and Bezier maps.
* :mod:`~anomalib_salad.model.pre_processing` / :mod:`~anomalib_salad.model.post_processing`: the resize into the
  network (antialiased in training and in the exported graph) and the rank-preserving score normalisation.
* :mod:`~anomalib_salad.model.lightning_model`: :class:`Salad`, the AnomalibModule; its checkpoint hooks
  (:mod:`~anomalib_salad.model.checkpoint`), export hooks (:mod:`~anomalib_salad.model.export_hooks`), training
  precision (:mod:`~anomalib_salad.model.precision`) and non-finite loss checks
  (:mod:`~anomalib_salad.model.nonfinite`) live in modules of their own.
* :mod:`~anomalib_salad.model.export`: checked export of a checkpoint file to torch, ONNX or OpenVINO.
* :mod:`~anomalib_salad.model.openvino_model`: :class:`SaladOpenVINO`, an exported model as an anomalib module
  (``anomalib predict`` / ``test`` on the IR).

``Salad``, ``SaladModel``, ``SaladOpenVINO`` and ``SaladPreProcessor`` are also importable from
:mod:`anomalib_salad` itself.
"""
