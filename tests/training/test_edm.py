"""Tests for training.edm: closed forms, the ideal-denoiser identity, loss weight, noise and sampling schedules."""

from __future__ import annotations

import math

import pytest
import torch

from training.edm import (
    EDMPreconditioning,
    LogNormalSigma,
    VPredictionPreconditioning,
    append_dims,
    edm_loss,
    karras_sigmas,
    linear_guidance,
    loss_weight,
)
from training.sigma_bins import DEFAULT_SIGMA_EDGES, sigma_bins

F64 = torch.float64
SIGMAS = torch.tensor([0.002, 0.1, 0.5, 1.0, 3.0, 80.0, 700.0], dtype=F64)
PRECONDS = [EDMPreconditioning(0.5), EDMPreconditioning(1.0), VPredictionPreconditioning()]


def _close(a, b, **kw):
    torch.testing.assert_close(torch.as_tensor(a, dtype=F64), torch.as_tensor(b, dtype=F64), **kw)


# --- closed-form scalings ---------------------------------------------------------------------------------


def test_vprediction_scalings_at_sigma_one():
    c_skip, c_out, c_in, c_noise = VPredictionPreconditioning().scalings(torch.tensor(1.0, dtype=F64))
    _close(c_skip, 0.5)
    _close(c_out, -1 / math.sqrt(2))
    _close(c_in, 1 / math.sqrt(2))
    _close(c_noise, 0.0)


@pytest.mark.parametrize("sigma_data", [0.5, 1.0])
def test_edm_scalings_at_sigma_equal_sigma_data(sigma_data):
    # At sigma = sigma_data: c_skip = 1/2, c_out = sigma_data/sqrt2, c_in = 1/(sigma_data sqrt2).
    sigma = torch.tensor(sigma_data, dtype=F64)
    c_skip, c_out, c_in, c_noise = EDMPreconditioning(sigma_data).scalings(sigma)
    _close(c_skip, 0.5)
    _close(c_out, sigma_data / math.sqrt(2))
    _close(c_in, 1 / (sigma_data * math.sqrt(2)))
    _close(c_noise, math.log(sigma_data) / 4)


def test_edm_default_sigma_data_and_generic_values():
    pre = EDMPreconditioning()
    assert pre.sigma_data == 0.5
    c_skip, c_out, c_in, c_noise = pre.scalings(torch.tensor(2.0, dtype=F64))
    _close(c_skip, 0.25 / 4.25)
    _close(c_out, 1.0 / math.sqrt(4.25))
    _close(c_in, 1 / math.sqrt(4.25))
    _close(c_noise, math.log(2.0) / 4)


def test_vprediction_is_edm_sigma_data_one_up_to_sign_of_c_out():
    v = VPredictionPreconditioning().scalings(SIGMAS)
    e = EDMPreconditioning(1.0).scalings(SIGMAS)
    _close(v[0], e[0])
    _close(v[1], -e[1])
    _close(v[2], e[2])
    _close(v[3], e[3])
    assert VPredictionPreconditioning.sigma_data == 1.0


@pytest.mark.parametrize("pre", PRECONDS, ids=repr)
def test_variance_preserving_input_and_limits(pre):
    # c_in normalises Var(x0 + sigma n) = sigma_data^2 + sigma^2 to 1; c_skip -> 1 as sigma -> 0.
    c_skip, _, c_in, _ = pre.scalings(SIGMAS)
    _close(c_in**2 * (pre.sigma_data**2 + SIGMAS**2), torch.ones_like(SIGMAS))
    assert c_skip[0] > 0.99 and c_skip[-1] < 1e-5
    assert torch.all((c_skip > 0) & (c_skip < 1))


# --- ideal network: D returns x0 -------------------------------------------------------------------------


def _data(seed=0, shape=(3, 4, 2, 5, 5)):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(shape, generator=g, dtype=F64)
    n = torch.randn(shape, generator=g, dtype=F64)
    sigma = torch.tensor([0.05, 1.0, 30.0], dtype=F64)
    return x0, n, sigma


def test_vprediction_ideal_F_is_v_and_denoiser_returns_x0():
    # x = x0 + sigma n. D = x0 requires F = (x0 - c_skip x)/c_out = (c_skip x - x0) sqrt(sigma^2+1)/sigma
    #   = (sigma n - sigma^2 x0)/(sigma sqrt(sigma^2+1)) = alpha n - sigma_vp x0 =: v,
    # with alpha = 1/sqrt(1+sigma^2), sigma_vp = sigma/sqrt(1+sigma^2). v is built here without c_skip/c_out.
    x0, n, sigma = _data()
    s = append_dims(sigma, x0.ndim)
    v = (n - s * x0) / (1 + s**2).sqrt()
    seen = {}

    def F(x_in, c_noise, **cond):
        seen.update(cond, x_in=x_in, c_noise=c_noise)
        return v

    x = x0 + s * n
    out = VPredictionPreconditioning().denoise(F, x, sigma, cond_a=7)
    _close(out, x0)
    # The network sees the scaled input and one c_noise per sample, plus the passed conditioning.
    _close(seen["x_in"], x / (1 + s**2).sqrt())
    _close(seen["c_noise"], sigma.log() / 4)
    assert seen["cond_a"] == 7


def _noised_with_target(pre, seed: int):
    """(x0, sigma, sigma broadcast, x = x0 + sigma n, the ideal network output F_target = (x0 - c_skip x) / c_out)."""
    x0, n, sigma = _data(seed=seed)
    s = append_dims(sigma, x0.ndim)
    x = x0 + s * n
    c_skip, c_out, _, _ = pre.scalings(s)
    return x0, sigma, s, x, (x0 - c_skip * x) / c_out


@pytest.mark.parametrize("pre", PRECONDS, ids=repr)
def test_generic_ideal_F_gives_x0(pre):
    x0, sigma, s, x, F_target = _noised_with_target(pre, seed=1)
    _close(pre.denoise(lambda x_in, c_noise: F_target, x, sigma), x0)
    # A sigma already broadcastable to x gives the same result.
    _close(pre.denoise(lambda x_in, c_noise: F_target, x, s), x0)


# --- loss weight and loss --------------------------------------------------------------------------------


@pytest.mark.parametrize("pre", PRECONDS, ids=repr)
def test_loss_weight_is_inverse_c_out_squared(pre):
    _, c_out, _, _ = pre.scalings(SIGMAS)
    _close(loss_weight(SIGMAS, pre.sigma_data), 1 / c_out**2)


def test_loss_weight_sigma_data_one_matches_design():
    _close(loss_weight(SIGMAS, 1.0), (1 + SIGMAS**2) / SIGMAS**2)


@pytest.mark.parametrize("pre", PRECONDS, ids=repr)
def test_edm_loss_equals_unweighted_F_error(pre):
    # Karras Eq. 8: lambda ||D - x0||^2 = lambda c_out^2 ||F - F_target||^2 = ||F - F_target||^2.
    x0, sigma, s, x, F_target = _noised_with_target(pre, seed=2)
    g = torch.Generator().manual_seed(3)
    F_out = F_target + 0.1 * torch.randn(x0.shape, generator=g, dtype=F64)
    D = pre.denoise(lambda x_in, c_noise: F_out, x, sigma)
    losses = edm_loss(D, x0, sigma, pre.sigma_data)
    assert losses.shape == (3,)
    _close(losses, ((F_out - F_target) ** 2).reshape(3, -1).mean(1))


def test_edm_loss_per_sample_values_and_shape_check():
    x0 = torch.zeros(2, 3, dtype=F64)
    D = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 3.0]], dtype=F64)
    sigma = torch.tensor([1.0, 2.0], dtype=F64)
    losses = edm_loss(D, x0, sigma, 1.0)
    _close(losses, torch.tensor([2.0 * 1.0, 1.25 * 3.0]))
    with pytest.raises(ValueError):
        edm_loss(D, torch.zeros(2, 4, dtype=F64), sigma, 1.0)


# --- training noise --------------------------------------------------------------------------------------


@pytest.mark.parametrize("P_mean,P_std", [(-1.2, 1.2), (0.7, 1.6), (1.0, 1.6)])
def test_lognormal_sigma_statistics(P_mean, P_std):
    dist = LogNormalSigma(P_mean, P_std)
    sigma = dist.sample((200_000,), torch.Generator().manual_seed(0))
    assert sigma.shape == (200_000,) and bool((sigma > 0).all())
    ln = sigma.double().log()
    assert abs(ln.mean().item() - P_mean) < 0.02
    assert abs(ln.std().item() - P_std) < 0.02


def test_lognormal_sigma_reproducible_and_int_shape():
    dist = LogNormalSigma()
    assert (dist.P_mean, dist.P_std) == (-1.2, 1.2)
    a = dist.sample(8, torch.Generator().manual_seed(5))
    b = dist.sample((8,), torch.Generator().manual_seed(5))
    assert a.shape == (8,)
    torch.testing.assert_close(a, b)


def test_one_sigma_per_video_broadcasts_over_frames():
    sigma = LogNormalSigma(0.0, 1.0).sample((2,), torch.Generator().manual_seed(0))
    s = append_dims(sigma, 5)
    assert s.shape == (2, 1, 1, 1, 1)
    noise = s * torch.ones(2, 14, 4, 3, 3)
    for b in range(2):
        assert bool((noise[b] == sigma[b]).all())


# --- sampling schedules ----------------------------------------------------------------------------------


def test_karras_sigmas_endpoints_and_monotonic():
    s = karras_sigmas(25, 0.002, 700.0)
    assert s.shape == (26,)
    _close(s[0], 700.0, rtol=1e-6, atol=0)
    _close(s[-2], 0.002, rtol=1e-5, atol=0)
    assert s[-1] == 0
    assert bool((s[1:] < s[:-1]).all())


def test_karras_sigmas_formula_and_rho_one_is_linear():
    s = karras_sigmas(5, 0.1, 10.0, rho=1.0, dtype=F64)
    _close(s, torch.tensor([10.0, 7.525, 5.05, 2.575, 0.1, 0.0], dtype=F64))
    n, lo, hi, rho = 4, 0.002, 80.0, 7.0
    expected = [
        (hi ** (1 / rho) + i / (n - 1) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho for i in range(n)
    ]
    _close(karras_sigmas(n, lo, hi, rho, dtype=F64), torch.tensor(expected + [0.0], dtype=F64))


def test_karras_sigmas_edge_cases():
    _close(karras_sigmas(1, 0.002, 700.0, dtype=F64), torch.tensor([700.0, 0.0], dtype=F64))
    with pytest.raises(ValueError):
        karras_sigmas(0, 0.002, 700.0)
    with pytest.raises(ValueError):
        karras_sigmas(10, 1.0, 0.5)


def test_linear_guidance_endpoints_and_shape():
    w = linear_guidance(14)
    assert w.shape == (14,)
    _close(w[0], 1.0)
    _close(w[-1], 2.5)
    assert bool((w[1:] > w[:-1]).all())
    _close(w[1:] - w[:-1], torch.full((13,), 1.5 / 13), rtol=1e-5, atol=1e-6)
    w25 = linear_guidance(25, 1.0, 3.0)
    _close(w25[[0, 12, 24]], [1.0, 2.0, 3.0])
    _close(linear_guidance(1), [1.0])
    with pytest.raises(ValueError):
        linear_guidance(0)


# --- sigma bins ------------------------------------------------------------------------------------------


def test_sigma_bins_explicit_edges():
    edges = [0.1, 1.0, 10.0]
    sigma = torch.tensor([0.01, 0.1, 0.5, 1.0, 9.9, 10.0, 500.0])
    assert sigma_bins(sigma, edges).tolist() == [0, 1, 1, 2, 2, 3, 3]
    with pytest.raises(ValueError):
        sigma_bins(sigma, [1.0, 0.1])


def test_sigma_bins_default_edges_are_log_spaced():
    ratios = DEFAULT_SIGMA_EDGES[1:] / DEFAULT_SIGMA_EDGES[:-1]
    _close(ratios, torch.full_like(ratios, ratios[0].item()))
    sigma = LogNormalSigma(-1.2, 1.2).sample((1000,), torch.Generator().manual_seed(0))
    idx = sigma_bins(sigma)
    assert idx.shape == (1000,) and idx.dtype == torch.int64
    assert 0 <= idx.min() and idx.max() <= len(DEFAULT_SIGMA_EDGES)
    # Per-bin means of per-sample losses: the metric this supports.
    losses = torch.rand(1000, generator=torch.Generator().manual_seed(1))
    counts = torch.bincount(idx, minlength=len(DEFAULT_SIGMA_EDGES) + 1)
    sums = torch.zeros(len(DEFAULT_SIGMA_EDGES) + 1).index_add_(0, idx, losses)
    assert counts.sum() == 1000
    _close(sums.sum(), losses.sum(), rtol=1e-5, atol=1e-4)
