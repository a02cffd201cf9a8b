"""Tests for training.metrics.frechet: closed forms, symmetry, the naming rule, the I3D and CLIP extractors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from training.metrics.frechet import (
    ClipVideoExtractor,
    I3DExtractor,
    extract_features,
    frechet_distance,
    frechet_video_distance,
    gaussian_stats,
    metric_name,
)


def _random_spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_isotropic_gaussians_closed_form():
    # N(mu1, a^2 I) vs N(mu2, b^2 I) in d dims: ||mu1 - mu2||^2 + d (a - b)^2.
    d, a, b = 5, 0.5, 2.0
    mu1, mu2 = np.arange(d, dtype=float), np.ones(d)
    expected = np.sum((mu1 - mu2) ** 2) + d * (a - b) ** 2
    assert frechet_distance(mu1, a**2 * np.eye(d), mu2, b**2 * np.eye(d)) == pytest.approx(expected)


def test_general_covariances_match_the_sqrtm_formula_and_are_symmetric():
    rng = np.random.default_rng(0)
    d = 6
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
    reference = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2)).real
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-9)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(frechet_distance(mu1, s1, mu2, s2), rel=1e-9)


def test_a_set_with_itself_is_zero_even_when_rank_deficient():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(10, 32))  # N < D: singular covariance
    mu, s = gaussian_stats(feats)
    assert frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-8)


def test_sampled_gaussians_approach_the_closed_form():
    rng = np.random.default_rng(2)
    d, n = 3, 20000
    x = rng.normal(size=(n, d)) * 0.5
    y = 1.0 + rng.normal(size=(n, d)) * 1.5
    expected = d * 1.0**2 + d * (0.5 - 1.5) ** 2
    assert frechet_distance(*gaussian_stats(x), *gaussian_stats(y)) == pytest.approx(expected, rel=0.03)


class _MeanPixel:
    """A fixed, deterministic extractor: per-channel mean and std over frames and pixels."""

    def __init__(self, name):
        self.name = name

    def __call__(self, videos):
        return torch.cat([videos.mean(dim=(1, 3, 4)), videos.std(dim=(1, 3, 4))], dim=1)


def test_naming_rule_and_batching():
    assert metric_name(_MeanPixel("i3d")) == "fvd"
    assert metric_name(_MeanPixel("clip-x")) == "fd_clip-x"
    g = torch.Generator().manual_seed(0)
    real, fake = torch.rand(6, 3, 3, 8, 8, generator=g), torch.rand(6, 3, 3, 8, 8, generator=g) ** 2
    name, value = frechet_video_distance(real, fake, _MeanPixel("meanpix"), batch_size=4)
    assert name == "fd_meanpix" and value > 0
    # A list of batches gives the same features as one tensor.
    ext = _MeanPixel("meanpix")
    np.testing.assert_allclose(extract_features([real[:2], real[2:]], ext), extract_features(real, ext, 5))
    assert frechet_video_distance(real, real, ext)[1] == pytest.approx(0.0, abs=1e-8)


class _I3DLike(torch.nn.Module):
    """TorchScript module with the published I3D file's call signature (not I3D: a linear map to 400 logits)."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 400)

    def forward(self, x, rescale: bool = False, resize: bool = True, return_features: bool = False):
        f = self.proj(x.mean(dim=(2, 3, 4)))
        return f if return_features else f.softmax(-1)


def test_i3d_extractor_loads_torchscript_and_is_called_fvd(tmp_path):
    with pytest.raises(FileNotFoundError, match="I3D weights"):
        I3DExtractor(tmp_path / "missing.pt")
    with warnings.catch_warnings(action="ignore", category=FutureWarning):
        torch.jit.script(_I3DLike()).save(str(tmp_path / "i3d.pt"))
    ext = I3DExtractor(tmp_path / "i3d.pt")
    videos = torch.rand(2, 4, 3, 30, 50, generator=torch.Generator().manual_seed(0))
    x = ext.preprocess(videos)
    assert x.shape == (2, 3, 4, 224, 224) and x.min() >= -1 and x.max() <= 1
    assert ext(videos).shape == (2, 400)
    name, value = frechet_video_distance(videos, videos.flip(0) * 0.5, ext)
    assert name == "fvd" and value > 0


def test_clip_extractor_is_named_for_its_model():
    ext = ClipVideoExtractor("tiny-clip", seed=0)
    assert ext.name == "clip-tiny-clip-random-seed0-tdiff"
    g = torch.Generator().manual_seed(0)
    real, fake = torch.rand(3, 3, 3, 32, 32, generator=g), torch.rand(3, 3, 3, 32, 32, generator=g) * 0.2
    feats = ext(real)
    assert feats.shape[0] == 3 and feats.shape[1] % 2 == 0
    name, value = frechet_video_distance(real, fake, ext)
    assert name == "fd_clip-tiny-clip-random-seed0-tdiff" and value > 0
    assert frechet_video_distance(real, real, ext)[1] == pytest.approx(0.0, abs=1e-8)
    assert ClipVideoExtractor("tiny-clip", frame_diffs=False).name == "clip-tiny-clip-random-seed0"
