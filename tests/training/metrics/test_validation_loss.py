"""Tests for training.metrics.validation_loss: fixed noise, the perfect denoiser, sensitivity to the model."""

from __future__ import annotations

import pytest
import torch

from training.edm import LogNormalSigma
from training.metrics.validation_loss import (
    DEFAULT_VALIDATION_SIGMAS,
    denoiser_loss_fn,
    noise_generator,
    objective_loss_fn,
    validation_loss,
)
from training.models import build_image_unet
from training.objectives import ImageObjective


def _batches(n=3, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 4, 6, 6, generator=g) for _ in range(n)]


def _shrink_D(a: float):
    return lambda x, sigma: a * x / (1 + sigma.reshape(-1, 1, 1, 1) ** 2)


def test_repeat_runs_are_identical():
    fn = denoiser_loss_fn(_shrink_D(1.0))
    r1 = validation_loss(fn, _batches())
    r2 = validation_loss(fn, _batches())
    assert r1 == r2
    assert r1["sigmas"] == list(DEFAULT_VALIDATION_SIGMAS) and r1["num_samples"] == 6
    assert set(r1["per_sigma"]) == set(DEFAULT_VALIDATION_SIGMAS)
    assert r1["mean"] == pytest.approx(sum(r1["per_sigma"].values()) / len(DEFAULT_VALIDATION_SIGMAS))
    assert validation_loss(fn, _batches(), seed=1)["mean"] != r1["mean"]


def test_perfect_denoiser_scores_zero():
    # D returns the clean data exactly: every loss is 0, at every sigma.
    def loss_fn(x0, sigma, noise, batch):
        x = x0 + sigma.reshape(-1, 1, 1, 1) * noise
        recovered = x - sigma.reshape(-1, 1, 1, 1) * noise  # an oracle that knows the noise
        return denoiser_loss_fn(lambda _x, _s: recovered)(x0, sigma, noise, batch)

    r = validation_loss(loss_fn, _batches())
    assert r["mean"] == pytest.approx(0.0, abs=1e-9)
    assert all(v == pytest.approx(0.0, abs=1e-9) for v in r["per_sigma"].values())


def test_noise_depends_only_on_seed_batch_and_sigma_index():
    seen = []

    def loss_fn(x0, sigma, noise, batch):
        seen.append(noise.clone())
        return torch.zeros(x0.shape[0])

    validation_loss(loss_fn, _batches(n=2), sigmas=(0.5, 2.0), seed=7)
    assert len(seen) == 4
    expected = torch.randn(seen[3].shape, generator=noise_generator(7, 1, 1))
    torch.testing.assert_close(seen[3], expected, rtol=0, atol=0)
    assert not torch.equal(seen[0], seen[1])  # different sigma index, different noise
    assert not torch.equal(seen[0], seen[2])  # different batch, different noise


def test_differs_when_model_differs_and_rejects_bad_shapes():
    r_a = validation_loss(denoiser_loss_fn(_shrink_D(1.0)), _batches())
    r_b = validation_loss(denoiser_loss_fn(_shrink_D(0.9)), _batches())
    assert r_a["mean"] != r_b["mean"]
    with pytest.raises(ValueError):
        validation_loss(lambda x0, s, n, b: torch.zeros(()), _batches())
    with pytest.raises(ValueError):
        validation_loss(denoiser_loss_fn(_shrink_D(1.0)), _batches(), sigmas=(0.0, 1.0))


def test_image_objective_with_tiny_unets():
    g = torch.Generator().manual_seed(0)
    batches = [
        {
            "latents": torch.randn(2, 4, 8, 8, generator=g),
            "context": torch.randn(2, 1, 64, generator=g),
            "null_context": torch.zeros(2, 1, 64),
        }
        for _ in range(2)
    ]
    objective = ImageObjective(LogNormalSigma(), p_drop=0.5)  # validation must ignore p_drop
    sigmas = (0.1, 1.0, 10.0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        unet_a = build_image_unet("tiny").eval()
        torch.manual_seed(1)
        unet_b = build_image_unet("tiny").eval()
    a1 = validation_loss(objective_loss_fn(objective, unet_a), batches, sigmas)
    a2 = validation_loss(objective_loss_fn(objective, unet_a), batches, sigmas)
    b = validation_loss(objective_loss_fn(objective, unet_b), batches, sigmas)
    assert a1 == a2
    assert a1["mean"] != b["mean"]
    assert all(v > 0 for v in a1["per_sigma"].values())
