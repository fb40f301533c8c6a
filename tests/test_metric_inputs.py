# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Bad input to every public metric function: refused with a ValueError naming the argument, before any work."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from tstitch.metrics import (
    INCEPTION_WEIGHTS_ENV,
    DigitsFeatures,
    FeatureFID,
    InceptionFeatures,
    InceptionV3Features,
    Reference,
    accuracy_from_logits,
    classifier_accuracy,
    extract,
    images_to_uint8,
    inception_score,
    iterate_batches,
    load_inception,
    load_reference,
    npz_batches,
    precision_recall,
    resize_like_tensorflow,
    score_features,
)

NAN = float("nan")


class CountingSpace:
    """A feature space (per-channel mean and spread of uint8 NHWC images) that counts the images it sees."""

    name = "counting"
    labels_match_logits = False
    device = torch.device("cpu")

    def __init__(self) -> None:
        self.seen = 0

    def extract(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        self.seen += len(images)
        x = images.float().flatten(1, 2)
        return torch.cat([x.mean(1), x.std(1)], dim=1), None


class TinyClassifier(nn.Module):
    """The digits classifier's interface (``features``, ``head``, ``logits``) on 1-channel 2 x 2 images."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(4, 3)
        self.head = nn.Linear(3, 10)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images.flatten(1).float())

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def images(count: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 4, 4, channels), dtype=np.uint8)


# -- issue 14: float reference images were scored as if they were uint8 (FID 3151) ----------------------------


def test_float_reference_npz_is_refused_naming_the_file_dtype_and_range(tmp_path):
    space = CountingSpace()
    path = tmp_path / "real.npz"
    np.savez(path, arr_0=images(6).astype(np.float32) / 255)
    with pytest.raises(ValueError, match=r"real\.npz: arr_0 must hold uint8 .* found dtype float32 in \[0\.0, 1\.0\]"):
        load_reference(path, space, cache_dir=tmp_path)
    assert space.seen == 0 and not list(tmp_path.glob("reference-*"))  # refused before any extraction or cache
    np.savez(path, arr_0=images(6).astype(np.int64))
    with pytest.raises(ValueError, match="found dtype int64"):
        load_reference(path, space)
    np.savez(path, arr_0=images(6))  # the same images as uint8 are fine
    assert load_reference(path, space).features.shape == (6, 6) and space.seen == 6


def test_wide_reference_images_in_a_folder_are_refused_before_extraction(tmp_path):
    space = CountingSpace()
    for i, image in enumerate(images(3, channels=1)):
        Image.fromarray(image[..., 0]).save(tmp_path / f"{i}.png")
    Image.fromarray(np.full((4, 4), 4000, dtype=np.uint16)).save(tmp_path / "9.png")  # 16-bit: would clip to 255
    with pytest.raises(ValueError, match=r"9\.png has 'I;16' pixels, not 8-bit"):
        load_reference(tmp_path, space, batch_size=2)
    Image.fromarray(np.zeros((4, 4), dtype=np.float32)).save(tmp_path / "9.tiff")
    (tmp_path / "9.png").unlink()
    with pytest.raises(ValueError, match=r"9\.tiff has 'F' pixels"):
        load_reference(tmp_path, space, batch_size=2)
    Image.fromarray(images(1)[0]).save(tmp_path / "9.tiff")  # an RGB image among grey ones: another shape
    with pytest.raises(ValueError, match=r"one size: .*9\.tiff is \(4, 4, 3\)"):
        load_reference(tmp_path, space, batch_size=2)
    assert space.seen == 0
    (tmp_path / "9.tiff").unlink()
    assert load_reference(tmp_path, space, batch_size=2).features.shape == (3, 2) and space.seen == 3


@pytest.mark.parametrize(("arrays", "message"), [
    ({}, "neither images .* it has no arrays"),
    ({"arr_0": np.zeros((0, 4, 4, 3), np.uint8)}, r"\(N >= 2, H, W, C\) .* found shape \(0, 4, 4, 3\)"),
    ({"arr_0": np.zeros((1, 4, 4, 3), np.uint8)}, r"found shape \(1, 4, 4, 3\)"),
    ({"arr_0": np.zeros((5, 4, 4), np.uint8)}, r"found shape \(5, 4, 4\)"),
    ({"arr_0": np.zeros((5, 4, 4, 4), np.uint8)}, r"C 1 or 3, found shape \(5, 4, 4, 4\)"),
    ({"mu": np.zeros(2), "sigma": np.array([[1.0, 0.0], [0.0, -5.0]])}, "not positive semi-definite"),
    ({"mu": np.array([0.0, NAN]), "sigma": np.eye(2)}, "NaN or inf"),
    ({"mu": np.zeros(3), "sigma": np.eye(2)}, r"covariance shape \(2, 2\) does not match mean of length 3"),
])
def test_broken_reference_npz_files_are_refused(tmp_path, arrays, message):
    space = CountingSpace()
    np.savez(tmp_path / "ref.npz", **arrays)
    with pytest.raises(ValueError, match=message):
        load_reference(tmp_path / "ref.npz", space)
    assert space.seen == 0


def test_unreadable_or_odd_reference_sources_are_refused(tmp_path):
    (tmp_path / "text.npz").write_text("not a zip file")
    with pytest.raises(ValueError, match=r"text\.npz is not a readable \.npz"):
        load_reference(tmp_path / "text.npz", CountingSpace())
    (tmp_path / "real.npy").write_bytes(b"")
    with pytest.raises(ValueError, match="must be a folder of images or an .npz"):
        load_reference(tmp_path / "real.npy", CountingSpace())
    (tmp_path / "one").mkdir()
    Image.fromarray(images(1)[0]).save(tmp_path / "one" / "0.png")
    with pytest.raises(ValueError, match="at least 2 images .* found 1"):
        load_reference(tmp_path / "one", CountingSpace())
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        load_reference(tmp_path / "one", CountingSpace(), batch_size=0)


# -- issue 14: the metric functions -----------------------------------------------------------------------


def test_nan_features_are_refused_instead_of_a_nan_fid():
    good = torch.randn(20, 3, generator=torch.Generator().manual_seed(0))
    bad = good.clone()
    bad[3, 1] = NAN
    with pytest.raises(ValueError, match="features hold NaN or inf"):
        FeatureFID(features=good).score_features(bad)
    with pytest.raises(ValueError, match="reference features hold NaN or inf"):
        FeatureFID(features=bad)
    bad[3, 1] = float("inf")
    with pytest.raises(ValueError, match="features hold NaN or inf"):
        FeatureFID(features=good).score_features(bad)
    with pytest.raises(ValueError, match="NaN or inf"):
        FeatureFID(statistics=(np.zeros(3), np.full((3, 3), NAN)))


def test_broken_covariances_are_refused_instead_of_a_negative_fid():
    square = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"not positive semi-definite \(eigenvalue -5"):
        FeatureFID(statistics=(np.zeros(2), np.diag([1.0, -5.0])))  # gave FID -3.64
    with pytest.raises(ValueError, match="not symmetric"):
        FeatureFID(statistics=(np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]])))
    with pytest.raises(ValueError, match=r"mean must be a vector \(D,\), got shape \(2, 2\)"):
        FeatureFID(statistics=(np.eye(2), np.eye(2)))
    assert FeatureFID(statistics=(np.zeros(2), np.zeros((2, 2)))).score_features(square) == pytest.approx(8 / 3)


def test_round_off_below_zero_is_clamped_to_zero(monkeypatch):
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    fid = FeatureFID(features=x)
    # The same set: torchmetrics' two traces minus twice the trace of a square root leave round-off whose sign
    # depends on the CPU's arithmetic (a tiny negative on an AMD EPYC, exactly 0 on an Intel Xeon).
    assert 0.0 <= fid.score_features(x) < 1e-9
    # What the clamp does with each sign of round-off, whatever this CPU gives: torchmetrics' result replaced.
    for raw, expected in ((-1e-13, 0.0), (0.0, 0.0), (1e-13, 1e-13)):
        monkeypatch.setattr(fid._fid, "compute", lambda raw=raw: torch.tensor(raw, dtype=torch.float64))
        assert fid.score_features(x) == expected
    monkeypatch.setattr(fid._fid, "compute", lambda: torch.tensor(-1.0, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"the Frechet distance came out negative \(-1\)"):
        fid.score_features(x)


@pytest.mark.parametrize("value", [0, -1, 2.5, True, None])
def test_batch_sizes_must_be_positive_integers(tmp_path, value):
    message = f"batch_size must be a positive integer, got {value!r}"
    square = torch.eye(3)
    np.savez(tmp_path / "a.npz", arr_0=images(3))
    calls = [
        lambda: FeatureFID(features=square, batch_size=value),
        lambda: iterate_batches(square, value),
        lambda: npz_batches(tmp_path / "a.npz", batch_size=value),
        lambda: precision_recall(square, square, k=1, batch_size=value),
        lambda: classifier_accuracy(TinyClassifier(), torch.zeros(2, 1, 2, 2), torch.zeros(2), batch_size=value),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            call()


def test_inception_score_refuses_bad_splits_and_logits():
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    for splits in (0, -2):  # 0 gave torch's "chunk expects `chunks` to be greater than 0"
        with pytest.raises(ValueError, match=f"splits must be a positive integer, got {splits}"):
            inception_score(logits, splits=splits)
    with pytest.raises(ValueError, match="splits=7 needs at least 7 samples, got 6"):
        inception_score(logits, splits=7)
    with pytest.raises(ValueError, match=r"logits must be \(N >= 1, D\), got shape \(6,\)"):
        inception_score(logits[:, 0], splits=1)
    logits[0, 0] = NAN
    with pytest.raises(ValueError, match="logits hold NaN or inf"):
        inception_score(logits, splits=2)


def test_precision_recall_refuses_bad_k_widths_and_values():
    real = torch.arange(6.0).reshape(6, 1)
    for k in (0, -1):  # 0 gave (1.0, 1.0): every point is its own 0th neighbour; -1 a raw torch error
        with pytest.raises(ValueError, match=f"k must be a positive integer, got {k}"):
            precision_recall(real, real, k=k)
    with pytest.raises(ValueError, match=r"one width, got \(6, 1\) and \(6, 2\)"):
        precision_recall(real, torch.zeros(6, 2), k=1)
    with pytest.raises(ValueError, match="generated features hold NaN"):
        precision_recall(real, torch.full((6, 1), NAN), k=1)
    with pytest.raises(ValueError, match="real features hold NaN"):
        precision_recall(torch.full((6, 1), NAN), real, k=1)


def test_accuracy_refuses_empty_and_mismatched_labels():
    logits = torch.eye(10)[:5]
    assert accuracy_from_logits(logits, torch.arange(5)) == 1.0
    with pytest.raises(ValueError, match=r"labels must be one per row of logits \(5,\), got shape \(1,\)"):
        accuracy_from_logits(logits, torch.zeros(1))  # broadcast to all rows, it gave 1.0
    with pytest.raises(ValueError, match=r"logits must be \(N >= 1, D\), got shape \(0, 10\)"):
        accuracy_from_logits(torch.zeros(0, 10), torch.zeros(0))  # gave 0.0
    with pytest.raises(ValueError, match="need at least one image and one label per image, got 0 images"):
        classifier_accuracy(TinyClassifier(), torch.zeros(0, 1, 2, 2), torch.zeros(0))
    with pytest.raises(ValueError, match=r"got 2 images and labels of shape \(3,\)"):
        classifier_accuracy(TinyClassifier(), torch.zeros(2, 1, 2, 2), torch.zeros(3))


def test_score_features_checks_every_argument_before_any_metric(caplog):
    features = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    reference = Reference(features=features + 1, source="shifted")
    logits = torch.eye(4)[torch.arange(8) % 4]
    assert set(score_features(features, logits, reference, k=2, splits=2)) == {
        "fid", "inception_score", "inception_score_std", "precision", "recall"}
    for kwargs, message in [({"k": 0}, "k must be a positive integer, got 0"),
                            ({"splits": 0}, "splits must be a positive integer, got 0"),
                            ({"labels": torch.zeros(3)}, r"one label per sample \(8,\), got shape \(3,\)")]:
        with pytest.raises(ValueError, match=message):
            score_features(features, logits, reference, **kwargs)
    with caplog.at_level(logging.WARNING, logger="tstitch.metrics"):  # too few samples: left out, said why
        partial = score_features(features, logits, reference, k=8, splits=9)
    assert set(partial) == {"fid"}
    assert [r.getMessage() for r in caplog.records] == [
        "no Inception Score: 8 samples for 9 splits",
        "no precision/recall: k=8 needs more than 8 samples per set, got 8 real and 8 generated"]
    with pytest.raises(ValueError, match="logits must have one row per feature row"):
        score_features(features, torch.cat([logits, logits]), reference)
    with pytest.raises(ValueError, match=r"features must be \(N >= 2, 2\).*got shape \(8, 3\)"):
        score_features(torch.zeros(8, 3), None, reference)  # another feature width than the reference
    with pytest.raises(ValueError, match=r"features must be \(N >= 2, D\), got shape \(1, 2\)"):
        score_features(features[:1], None, reference)


def test_reference_refuses_broken_features_and_statistics():
    with pytest.raises(ValueError, match=r"features of reference 'r' must be \(N >= 2, D\), got shape \(1, 3\)"):
        Reference(features=torch.zeros(1, 3), source="r")
    with pytest.raises(ValueError, match="features of reference 'r' hold NaN"):
        Reference(features=torch.full((4, 3), NAN), source="r")
    with pytest.raises(ValueError, match="reference 'r': features of width 3 but statistics of width 2"):
        Reference(features=torch.randn(4, 3), mean=np.zeros(2), cov=np.eye(2), source="r")
    with pytest.raises(ValueError, match="reference 'r': the reference covariance is not positive"):
        Reference(mean=np.zeros(2), cov=-np.eye(2), source="r")


# -- images in: dtype, layout, channels ---------------------------------------------------------------------


def test_feature_spaces_take_only_uint8_nhwc_images_with_their_channel_count():
    with pytest.raises(ValueError, match="images must be uint8 images .* got dtype torch.float32"):
        extract(CountingSpace(), [torch.rand(2, 4, 4, 3)])
    with pytest.raises(ValueError, match=r"images must be \(N, H, W, C\), got shape \(4, 4, 3\)"):
        extract(CountingSpace(), [images(1)[0]])
    network = InceptionV3Features()
    with pytest.raises(ValueError, match=r"Inception images must be \(N, H, W, C\) with C in \(1, 3\), got shape"):
        InceptionFeatures(network).extract(torch.from_numpy(images(2, channels=4)))  # RGBA
    with pytest.raises(ValueError, match=r"takes images \(N, 3, H, W\), got shape \(2, 4, 8, 8\)"):
        network(torch.zeros(2, 4, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"digits images must be \(N, H, W, C\) with C in \(1,\)"):
        DigitsFeatures(TinyClassifier()).extract(torch.from_numpy(images(2, channels=3)))
    with pytest.raises(ValueError, match="digits images must be uint8"):
        DigitsFeatures(TinyClassifier()).extract(torch.zeros(2, 2, 2, 1))
    features, logits = DigitsFeatures(TinyClassifier()).extract(torch.zeros(2, 2, 2, 1, dtype=torch.uint8))
    assert features.shape == (2, 3) and logits.shape == (2, 10)
    with pytest.raises(ValueError, match=r"images must be \(N, C, H, W\), got shape \(3, 4, 4\)"):
        images_to_uint8(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match=r"size \(0, 4\)"):
        resize_like_tensorflow(torch.zeros(1, 1, 2, 2), (0, 4))


def test_missing_weights_file_names_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(tmp_path / "gone.pth"))
    with pytest.raises(FileNotFoundError, match=f"gone.pth not found: set {INCEPTION_WEIGHTS_ENV}"):
        load_inception()
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(tmp_path))  # a folder, not a file
    with pytest.raises(FileNotFoundError, match=f"not found: set {INCEPTION_WEIGHTS_ENV}"):
        load_inception()
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ValueError, match="cannot read Inception weights .*junk.pth"):
        load_inception(tmp_path / "junk.pth")


@pytest.mark.parametrize("value", [NAN, float("inf"), -float("inf")])
def test_non_finite_samples_reaching_a_metric_are_refused(value):
    """Samples of a diverged run (NaN or inf) are refused where they enter a metric, rather than being
    clamped to black images and scored."""
    images = torch.zeros(3, 1, 2, 2)
    images[1, 0, 0, 1] = value
    with pytest.raises(ValueError, match="images hold NaN or inf values"):
        images_to_uint8(images)
    classifier = TinyClassifier()
    calls = []
    classifier.register_forward_pre_hook(lambda *args: calls.append(1))
    with pytest.raises(ValueError, match="images hold NaN or inf values"):
        classifier_accuracy(classifier, images, torch.zeros(3, dtype=torch.long))
    extractor = nn.Sequential(nn.Flatten(), classifier.body)
    extractor.register_forward_pre_hook(lambda *args: calls.append(1))
    fid = FeatureFID(extractor, features=torch.randn(4, 3, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="images hold NaN or inf values"):
        fid.score(images)
    assert calls == []
