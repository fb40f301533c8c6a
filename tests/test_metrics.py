# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The metrics on small hand-checked cases; a tiny random Inception-like network stands in for the weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from tstitch.metrics import (
    INCEPTION_WEIGHTS_ENV,
    INCEPTION_WEIGHTS_FILE,
    FeatureFID,
    InceptionFeatures,
    InceptionV3Features,
    Reference,
    extract,
    images_to_uint8,
    inception_score,
    load_inception,
    load_reference,
    npz_batches,
    npz_shape,
    precision_recall,
    resize_like_tensorflow,
    score_features,
)

SQUARE = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)


class TinyInception(nn.Module):
    """Called like :class:`InceptionV3Features`: uint8 ``(N, 3, H, W)`` -> (features (N, 6), logits (N, 4))."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.tanh(self.conv(images.float() / 127.5 - 1)).mean(dim=(2, 3))
        return features, features @ self.fc.weight.T


def random_images(count: int, seed: int, size: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


# -- FID ----------------------------------------------------------------------------------------------------


def test_fid_of_hand_computed_gaussians():
    # The square's mean is 0 and its covariance (4/3) I. A shift by (3, 4) adds |shift|^2 = 25; doubling the
    # points gives covariance (16/3) I: 2 * (4/3 + 16/3 - 2 * sqrt(4/3 * 16/3)) = 8/3.
    metric = FeatureFID(features=SQUARE)
    assert metric.score_features(SQUARE + torch.tensor([3.0, 4.0], dtype=torch.float64)) == pytest.approx(25, abs=1e-6)
    assert metric.score_features(2 * SQUARE) == pytest.approx(8 / 3, abs=1e-6)
    assert metric.score_features(SQUARE) == pytest.approx(0, abs=1e-6)
    assert metric.reference_size == 4
    mean, cov = metric.reference_statistics()
    assert torch.allclose(mean, torch.zeros(2, dtype=torch.float64))
    assert torch.allclose(cov, torch.eye(2, dtype=torch.float64) * 4 / 3)


def test_fid_from_statistics_equals_fid_from_features():
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(300, 5, generator=generator)
    fake = torch.randn(200, 5, generator=generator) * 1.3 + 0.2
    stats = (real.double().mean(0).numpy(), np.cov(real.double().numpy(), rowvar=False))
    from_features = FeatureFID(features=real).score_features(fake)
    assert FeatureFID(statistics=stats).score_features(fake) == pytest.approx(from_features, rel=1e-5)
    assert from_features > 0.1


def test_feature_fid_on_images_is_torchmetrics_fid_with_the_extractor():
    """The demo's path (an extractor and reference images) gives torchmetrics' own number."""
    torch.manual_seed(0)
    extractor = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    extractor.num_features = 3  # as the digits classifier has (else torchmetrics probes with a uint8 image)
    reference, generated = torch.randn(50, 1, 4, 4), torch.randn(40, 1, 4, 4) + 0.3
    direct = FrechetInceptionDistance(feature=extractor, reset_real_features=False)
    direct.update(reference, real=True)
    direct.update(generated, real=False)
    assert FeatureFID(extractor, reference, batch_size=16).score(generated) == pytest.approx(float(direct.compute()))


def test_feature_fid_rejects_bad_input():
    with pytest.raises(ValueError, match="exactly one"):
        FeatureFID(features=SQUARE, statistics=(np.zeros(2), np.eye(2)))
    with pytest.raises(ValueError, match="at least 2"):
        FeatureFID(features=SQUARE).score_features(SQUARE[:1])
    with pytest.raises(ValueError, match=r"features must be \(N >= 2, 2\).*got shape \(4, 3\)"):
        FeatureFID(features=SQUARE).score_features(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="covariance shape"):
        FeatureFID(statistics=(np.zeros(2), np.eye(3)))


# -- Inception Score, precision and recall ------------------------------------------------------------------


def test_inception_score_of_hand_cases():
    confident = 60.0 * torch.eye(10).repeat(3, 1)  # every class equally often, each prediction certain
    mean, std = inception_score(confident, splits=1)
    assert mean == pytest.approx(10, rel=1e-6) and std == 0
    assert inception_score(torch.zeros(20, 10), splits=2)[0] == pytest.approx(1.0)  # uniform predictions
    assert inception_score(60.0 * torch.eye(10)[[3] * 8], splits=1)[0] == pytest.approx(1.0)  # one class
    assert inception_score(confident, splits=3) == inception_score(confident, splits=3)  # seeded shuffle


def test_precision_recall_of_hand_case():
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    # k=1: every real point's ball has radius 1, so the real manifold is [-1, 4]: 0 and 0.2 are in it, 10 and
    # 10.1 are not. The generated balls have radii 0.2, 0.2, 0.1, 0.1: only the real point 0 is covered.
    fake = torch.tensor([[0.0], [0.2], [10.0], [10.1]])
    assert precision_recall(real, fake, k=1) == pytest.approx((0.5, 0.25))
    assert precision_recall(real, real, k=1) == (1.0, 1.0)
    # k=2: real radii 2 (ends) and 1 (middle) still leave 10 out; generated radii 9.8, 9.8, 10, 9.9 cover all.
    assert precision_recall(real, fake, k=2, batch_size=3) == pytest.approx((0.5, 1.0))
    with pytest.raises(ValueError, match="more than 4"):
        precision_recall(real, fake, k=4)


# -- the Inception network ----------------------------------------------------------------------------------


def test_resize_samples_like_tensorflow_1():
    image = torch.tensor([[0.0, 4.0], [8.0, 12.0]]).reshape(1, 1, 2, 2)
    # TensorFlow 1 samples output pixel o at o * in / out = 0, 0.5, 1, 1.5 (clamped to the last pixel).
    expected = torch.tensor([[0, 2, 4, 4], [4, 6, 8, 8], [8, 10, 12, 12], [8, 10, 12, 12]], dtype=torch.float32)
    assert torch.equal(resize_like_tensorflow(image, (4, 4))[0, 0], expected)
    assert torch.equal(resize_like_tensorflow(image, (2, 2)), image)
    assert resize_like_tensorflow(torch.zeros(2, 3, 5, 7), (11, 3)).shape == (2, 3, 11, 3)


def test_inception_network_loads_a_weights_file_and_says_where_to_get_one(tmp_path, monkeypatch):
    torch.manual_seed(0)
    network = InceptionV3Features()
    # The published PyTorch port: torchvision's Inception-v3 layout without auxiliary logits, 1008 classes.
    assert sum(p.numel() for p in network.parameters()) == 23_850_960
    state = network.state_dict()
    for key in ("Conv2d_1a_3x3.conv.weight", "Mixed_5b.branch5x5_2.bn.running_var",
                "Mixed_6e.branch7x7dbl_5.conv.weight", "Mixed_7c.branch3x3dbl_3b.bn.bias", "fc.weight", "fc.bias"):
        assert key in state
    path = tmp_path / INCEPTION_WEIGHTS_FILE
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, path)

    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(path))
    loaded = load_inception()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items() if "num_batches" not in k)
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    features, logits = loaded(images)
    assert features.shape == (2, 2048) and logits.shape == (2, 1008)
    # eval mode: batch norm uses running statistics, so an image's features do not depend on its batch (up to
    # the last bits: a batch of one may run other convolution kernels)
    torch.testing.assert_close(loaded(images[:1])[0], features[:1], rtol=1e-4,
                               atol=1e-4 * float(features.abs().max()))
    assert not loaded.train().training

    monkeypatch.delenv(INCEPTION_WEIGHTS_ENV)
    with pytest.raises(FileNotFoundError, match=f"{INCEPTION_WEIGHTS_ENV}.*{INCEPTION_WEIGHTS_FILE}.*https://"):
        load_inception()
    with pytest.raises(FileNotFoundError, match="not found"):
        load_inception(tmp_path / "missing.pth")
    torch.save(TinyInception().state_dict(), tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not the FID Inception network"):
        load_inception(tmp_path / "other.pth")


# -- references and the whole score -------------------------------------------------------------------------


def test_reference_from_a_folder_an_npz_of_images_and_statistics_agree(tmp_path):
    space = InceptionFeatures(TinyInception())
    real = random_images(12, seed=1)
    folder = tmp_path / "real"
    folder.mkdir()
    for i, image in enumerate(real):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    np.savez(tmp_path / "real.npz", arr_0=real)
    features, _ = extract(space, [real[:5], real[5:10], real[10:]])  # the batches of batch_size=5 below
    np.savez(tmp_path / "stats.npz", mu=features.double().mean(0).numpy(),
             sigma=np.cov(features.double().numpy(), rowvar=False))

    from_folder = load_reference(folder, space, batch_size=5)
    from_npz = load_reference(tmp_path / "real.npz", space, batch_size=5, cache_dir=tmp_path)
    from_stats = load_reference(tmp_path / "stats.npz", space)
    assert torch.equal(from_folder.features, features) and torch.equal(from_npz.features, features)
    assert from_stats.features is None

    generated, gen_logits = extract(space, [random_images(10, seed=2)])
    fids = [r.fid().score_features(generated) for r in (from_folder, from_npz, from_stats)]
    assert fids[0] == pytest.approx(fids[1]) and fids[2] == pytest.approx(fids[0], rel=1e-4)
    cached = load_reference(tmp_path / "real.npz", space, cache_dir=tmp_path)  # from the cache file now
    assert torch.equal(cached.features, features) and len(list(tmp_path.glob("reference-inception-*.npz"))) == 1

    metrics = score_features(generated, gen_logits, from_npz, k=2, splits=2)
    assert set(metrics) == {"fid", "inception_score", "inception_score_std", "precision", "recall"}
    assert 1.0 <= metrics["inception_score"] <= 4.0 and 0 <= metrics["precision"] <= 1
    assert "precision" not in score_features(generated, gen_logits, from_stats, k=2)  # no real features
    labels = gen_logits.argmax(1)
    assert score_features(generated, gen_logits, from_npz, labels=labels, k=2)["accuracy"] == 1.0

    (tmp_path / "bad.npz").write_bytes((tmp_path / "stats.npz").read_bytes())
    np.savez(tmp_path / "bad.npz", something=np.zeros(3))
    with pytest.raises(ValueError, match="neither images"):
        load_reference(tmp_path / "bad.npz", space)
    with pytest.raises(ValueError, match="neither features"):
        Reference(source="empty")
    Image.fromarray(random_images(1, seed=3, size=9)[0]).save(folder / "999.png")
    with pytest.raises(ValueError, match="one size"):
        load_reference(folder, space)


def test_npz_batches_stream_an_array_and_uint8_conversion_follows_dit():
    images = torch.tensor([-1.0, -0.5, 0.0, 0.999, 1.0, 2.0]).reshape(1, 1, 2, 3)
    assert images_to_uint8(images).flatten().tolist() == [0, 64, 128, 255, 255, 255]  # clamp(127.5 x + 128)
    assert images_to_uint8(torch.zeros(2, 3, 4, 5)).shape == (2, 4, 5, 3)


def test_npz_reading_in_batches(tmp_path):
    array = np.arange(7 * 2 * 3, dtype=np.uint8).reshape(7, 2, 3)
    np.savez(tmp_path / "a.npz", array, np.arange(7))
    assert npz_shape(tmp_path / "a.npz") == ((7, 2, 3), np.dtype(np.uint8))
    batches = list(npz_batches(tmp_path / "a.npz", batch_size=3))
    assert [len(b) for b in batches] == [3, 3, 1] and np.array_equal(np.concatenate(batches), array)
    with pytest.raises(ValueError, match="no array 'arr_5'"):
        npz_shape(tmp_path / "a.npz", "arr_5")
