"""Tests for training.sampling: the EDM sampler on analytic denoisers, frame-wise guidance, the tiny video UNet."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import AutoencoderKLTemporalDecoder

from training.edm import karras_sigmas
from training.models import build_video_unet
from training.sampling import decode_latents, edm_sample, guided_video_denoiser, sample_video

F64 = torch.float64


def _gaussian_D(mu: float, s: float):
    """Ideal denoiser of data ~ N(mu, s^2) per element: E[x0 | x0 + sigma n = x] = mu + s^2/(s^2+sigma^2) (x - mu)."""

    def D(x, sigma):
        sig = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        return mu + s**2 / (s**2 + sig**2) * (x - mu)

    return D


def _exact_gaussian_endpoint(x_T, mu, s, sigma_max):
    # The probability-flow ODE maps x(sigma) linearly: (x - mu)/sqrt(s^2+sigma^2) is constant along a trajectory.
    return mu + (x_T - mu) * s / math.sqrt(s**2 + sigma_max**2)


def test_point_mass_converges_exactly():
    # Data = a single point c: D = c for every x and sigma, so the final step to sigma = 0 lands on c.
    c = torch.tensor([1.5, -2.0], dtype=F64)
    sig = karras_sigmas(5, 0.002, 80.0, dtype=F64)
    for heun in (False, True):
        x = edm_sample(
            lambda x, s: c.expand_as(x),
            (3, 2),
            sig,
            heun=heun,
            generator=torch.Generator().manual_seed(0),
            dtype=F64,
        )
        torch.testing.assert_close(x, c.expand(3, 2))


def test_gaussian_data_euler_and_heun_converge_with_their_orders():
    # Error vs the exact probability-flow endpoint at 16, 32, 64 steps: Euler is first order (halving per
    # doubling), Heun second order (quartering), and Heun beats Euler at equal steps.
    mu, s, sigma_max = 0.7, 0.5, 80.0
    D = _gaussian_D(mu, s)
    x_T = torch.randn((4, 3), generator=torch.Generator().manual_seed(1)).to(F64) * sigma_max
    exact = _exact_gaussian_endpoint(x_T, mu, s, sigma_max)
    err = {False: [], True: []}
    for n in (16, 32, 64):
        sig = karras_sigmas(n, 0.002, sigma_max, dtype=F64)
        for heun in (False, True):
            x = edm_sample(D, (4, 3), sig, heun=heun, generator=torch.Generator().manual_seed(1), dtype=F64)
            err[heun].append(float((x - exact).abs().max()))
    for e_euler, e_heun in zip(err[False], err[True]):
        assert e_heun < e_euler / 2, err
    for k in range(2):
        assert 1.6 < err[False][k] / err[False][k + 1] < 2.5, err
        assert err[True][k] / err[True][k + 1] > 3.5, err
    assert err[True][-1] < 0.01 * s


def test_sample_starts_at_sigma_max_times_seeded_noise():
    seen = []

    def D(x, sigma):
        seen.append((x.clone(), sigma.clone()))
        return torch.zeros_like(x)

    sig = torch.tensor([10.0, 0.0], dtype=F64)
    edm_sample(D, (2, 3), sig, generator=torch.Generator().manual_seed(5), dtype=F64)
    x0, s0 = seen[0]
    torch.testing.assert_close(
        x0, 10.0 * torch.randn((2, 3), generator=torch.Generator().manual_seed(5)).to(F64)
    )
    torch.testing.assert_close(s0, torch.full((2,), 10.0, dtype=F64))


def test_guidance_grows_linearly_across_frames():
    # A fake "UNet" whose raw output is a constant a (unconditional: zero z_cond) or b (conditional); with the
    # v-prediction preconditioning D = c_skip x + c_out * out, so D_c - D_u = c_out (b - a) and the guided
    # D - D_u = w_f c_out (b - a): frame 0 must use min_guidance, the last frame max_guidance.
    a, b = 0.25, 1.25

    class Out:
        def __init__(self, sample):
            self.sample = sample

    def unet(x_in, c_noise, encoder_hidden_states, added_time_ids):
        cond = x_in[:, :, 4:]  # the conditioning latent, repeated over frames
        is_cond = (cond.flatten(1).abs().sum(1) > 0).to(x_in.dtype).view(-1, 1, 1, 1, 1)
        return Out(torch.full_like(x_in[:, :, :4], a) + is_cond * (b - a))

    B, Fr = 2, 5
    z_cond = torch.ones(B, 4, 3, 3)
    time_ids = torch.zeros(B, 3)
    guidance = torch.linspace(1.0, 3.0, Fr)
    D = guided_video_denoiser(unet, z_cond, torch.ones(B, 8), time_ids, guidance)
    x = torch.randn(B, Fr, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    sigma = torch.full((B,), 2.0)
    c_skip, c_out = 1 / (1 + 4.0), -2.0 / math.sqrt(5.0)
    D_u = c_skip * x + c_out * a
    got_w = ((D(x, sigma) - D_u) / (c_out * (b - a))).mean(dim=(0, 2, 3, 4))
    torch.testing.assert_close(got_w, guidance)
    assert got_w[0] == pytest.approx(1.0) and got_w[-1] == pytest.approx(3.0)


@pytest.fixture(scope="module")
def tiny_unet():
    torch.manual_seed(0)
    return build_video_unet("tiny").eval()


def test_tiny_unet_sample_shape_finite_and_deterministic(tiny_unet):
    B, Fr, h = 2, 3, 8
    g = torch.Generator().manual_seed(0)
    z_cond = torch.randn(B, 4, h, h, generator=g)
    emb = torch.randn(B, 64, generator=g)
    kw = {"num_frames": Fr, "fps": 7, "motion_bucket_id": torch.tensor([10, 200]), "sigma_aug": 0.02, "steps": 2}
    out1 = sample_video(tiny_unet, z_cond, emb, generator=torch.Generator().manual_seed(42), **kw)
    out2 = sample_video(tiny_unet, z_cond, emb, generator=torch.Generator().manual_seed(42), **kw)
    out3 = sample_video(tiny_unet, z_cond, emb, generator=torch.Generator().manual_seed(43), **kw)
    assert out1.shape == (B, Fr, 4, h, h)
    assert torch.isfinite(out1).all()
    torch.testing.assert_close(out1, out2, rtol=0, atol=0)
    assert not torch.equal(out1, out3)
    heun = sample_video(tiny_unet, z_cond, emb, generator=torch.Generator().manual_seed(42), heun=True, **kw)
    assert heun.shape == out1.shape and torch.isfinite(heun).all() and not torch.equal(heun, out1)


def test_decode_latents_frames_in_unit_range():
    torch.manual_seed(0)
    vae = AutoencoderKLTemporalDecoder(
        block_out_channels=(32, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        layers_per_block=1,
        latent_channels=4,
    ).eval()
    latents = torch.randn(2, 3, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    frames = decode_latents(vae, latents, decode_chunk_size=2)
    assert frames.shape == (2, 3, 3, 8, 8)  # one 2x upsampling per extra block
    assert frames.min() >= 0 and frames.max() <= 1 and torch.isfinite(frames).all()
    # Videos decode independently of the batch they are in.
    torch.testing.assert_close(decode_latents(vae, latents[1:], decode_chunk_size=2), frames[1:])
