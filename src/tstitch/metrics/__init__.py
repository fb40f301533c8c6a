# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Sample-quality metrics: FID, Inception Score, precision and recall, in any feature space.

* :class:`FeatureFID`: a Frechet distance through torchmetrics' ``FrechetInceptionDistance`` (which keeps
  the statistics and computes the distance). The reference is a set of images, their features, or a
  precomputed mean and covariance (the ADM reference batches store them as ``mu`` / ``sigma``). The digits
  classifier gives "digits-FID" for the embedded family; :class:`InceptionV3Features` the usual FID.
* :func:`inception_score`: torchmetrics' ``InceptionScore`` on a classifier's logits.
* :func:`precision_recall`: improved precision and recall (Kynkaanniemi et al., 2019): k-nearest-neighbour
  balls around each feature vector estimate the manifolds of the real and the generated sets.
* :class:`InceptionV3Features`: the Inception-v3 network of FID (the TensorFlow graph of 2015-12-05, as
  ported to PyTorch by pytorch-fid / torch-fidelity), written here because torch-fidelity's copy needs a
  torchvision that does not load next to the CPU torch (see :mod:`tstitch.metrics.inception`). Its weights
  come from a local file (:func:`load_inception`); nothing is downloaded.
* Feature spaces (:class:`DigitsFeatures`, :class:`InceptionFeatures`) turn generated uint8 NHWC images
  into features and logits; :class:`Reference` and :func:`load_reference` hold the real side;
  :func:`score_features` computes every metric of one generated set.

Every public function refuses bad input with a ``ValueError`` naming the argument before any work: sizes and
counts below 1, NaN or inf features, fewer than 2 samples for a covariance, feature widths that differ,
images that are not uint8 ``(N, H, W, C)``, broken reference statistics.
"""

from __future__ import annotations

from .inception import (
    INCEPTION_WEIGHTS_ENV,
    INCEPTION_WEIGHTS_FILE,
    INCEPTION_WEIGHTS_URLS,
    InceptionV3Features,
    find_inception_weights,
    load_inception,
    resize_like_tensorflow,
)
from .reference import (
    DigitsFeatures,
    FeatureSpace,
    InceptionFeatures,
    Reference,
    extract,
    images_to_uint8,
    load_reference,
    npz_batches,
    npz_shape,
    score_features,
)
from .scores import (
    FeatureFID,
    accuracy_from_logits,
    classifier_accuracy,
    inception_score,
    iterate_batches,
    precision_recall,
)

__all__ = [
    "FeatureFID",
    "classifier_accuracy",
    "accuracy_from_logits",
    "iterate_batches",
    "inception_score",
    "precision_recall",
    "InceptionV3Features",
    "load_inception",
    "find_inception_weights",
    "resize_like_tensorflow",
    "FeatureSpace",
    "DigitsFeatures",
    "InceptionFeatures",
    "Reference",
    "load_reference",
    "npz_batches",
    "npz_shape",
    "extract",
    "score_features",
    "images_to_uint8",
    "INCEPTION_WEIGHTS_ENV",
    "INCEPTION_WEIGHTS_FILE",
    "INCEPTION_WEIGHTS_URLS",
]
