"""GPU-correct numerics checked on the CPU: the fp32 EDM skip path around a bf16 network, bf16 networks fed
fp32 CPU inputs everywhere a network runs (training loss, samplers, stage report, evaluation), gradient
checkpointing, per-stage conditioning and the online conditioning-frame augmentation."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from svdpipe.config import load_config
from training.edm import LogNormalSigma, VPredictionPreconditioning, append_dims
from training.encoders import build_vae, encode_latents
from training.inflation import inflate, widen_conv_in
from training.models import build_image_unet, build_video_unet
from training.objectives import ImageObjective, TextVideoObjective, VideoObjective
from training.synthetic import synthetic_image_batches, synthetic_video_batches


class PerfectNet(torch.nn.Module):
    """A bf16 network that outputs the exact v-prediction target F* = (x0 - c_skip x) / c_out (then rounded to
    bf16, as a real bf16 network's output is), checking that its input arrives in bf16."""

    def __init__(self, x0: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones((), dtype=torch.bfloat16))
        c_skip, c_out, _, _ = VPredictionPreconditioning().scalings(append_dims(sigma.double(), x0.ndim))
        self.target = ((x0.double() - c_skip * x.double()) / c_out).to(torch.bfloat16)

    def forward(self, sample, timestep, **kw):
        assert sample.dtype == torch.bfloat16
        return SimpleNamespace(sample=self.target * self.w)


@pytest.mark.parametrize("kind", ["image", "text_video"])
def test_perfect_denoiser_through_bf16_network_has_no_loss_at_smallest_sigma(kind):
    # At sigma = 0.002 the loss weight is 250 000: a bf16 x (or c_skip x) alone leaves a loss of about 1.
    if kind == "image":
        objective, batch = ImageObjective(LogNormalSigma(), p_drop=0.0), synthetic_image_batches(4, 0)(0)
    else:
        objective, batch = TextVideoObjective(LogNormalSigma(), p_drop=0.0), synthetic_image_batches(4, 0)(0)
        batch["latents"] = torch.randn(4, 3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
        batch |= {"fps": torch.full((4,), 7.0), "motion_bucket": torch.full((4,), 127.0)}
    x0 = batch["latents"]
    sigma = torch.full((4,), 0.002)
    batch |= {"sigma": sigma, "noise": torch.randn(x0.shape, generator=torch.Generator().manual_seed(2)),
              "keep": torch.ones(4)}
    x = x0 + append_dims(sigma, x0.ndim) * batch["noise"]
    net = PerfectNet(x0, x, sigma)
    loss = objective.loss(net, batch, torch.bfloat16).detach()  # the engine's call under bf16
    assert loss.dtype == torch.float32
    assert float(loss.mean()) <= 1e-4, float(loss.mean())


@pytest.fixture(scope="module")
def bf16_video_unet():
    torch.manual_seed(0)
    return build_video_unet("tiny").to(torch.bfloat16).eval()


def test_bf16_video_unet_fed_fp32_cpu_inputs_trains_and_samples(bf16_video_unet):
    from training.sampling import decode_latents, sample_text_video, sample_video

    batch = synthetic_video_batches(2, 0, height=8, width=8)(0)
    objective = VideoObjective(LogNormalSigma(), p_drop=0.5)
    batch |= objective.draw(batch, torch.Generator().manual_seed(0))
    loss = objective.loss(bf16_video_unet, batch)
    assert loss.shape == (2,) and loss.dtype == torch.float32 and torch.isfinite(loss).all()

    z = sample_video(bf16_video_unet, batch["z_cond_aug"][:, 0], batch["image_embeds"], num_frames=3, fps=7.0,
                     motion_bucket_id=127, sigma_aug=0.05, steps=2, generator=torch.Generator().manual_seed(0))
    assert z.dtype == torch.float32 and z.shape == (2, 3, 4, 8, 8) and torch.isfinite(z).all()
    vae = build_vae("tiny").to(torch.bfloat16).eval()
    frames = decode_latents(vae, z, decode_chunk_size=3)
    assert frames.dtype == torch.float32 and frames.shape == (2, 3, 3, 32, 32)

    text_unet = build_video_unet("tiny", conditioning="text").to(torch.bfloat16).eval()
    z = sample_text_video(text_unet, torch.randn(2, 5, 64), torch.zeros(1, 5, 64), latent_shape=(4, 8, 8),
                          num_frames=3, fps=7.0, motion_bucket_id=127, steps=2, guidance=3.0,
                          generator=torch.Generator().manual_seed(0))
    assert z.dtype == torch.float32 and torch.isfinite(z).all()


def _latent_set(n=2, frames=3, hw=8, text_dim=64):
    from training.latents import LatentSet

    g = torch.Generator().manual_seed(0)
    t = synthetic_video_batches(n, 0, frames=frames, height=hw, width=hw)(0)
    t |= {"context": torch.randn(n, 5, text_dim, generator=g), "null_context": torch.zeros(1, 5, text_dim),
          "val": torch.ones(n)}
    return LatentSet(t, {"clip_ids": [f"c{i}" for i in range(n)], "captions": [f"caption {i}" for i in range(n)]})


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_stage_report_samples_with_bf16_model_and_fp32_inputs(tmp_path, stage):
    from training.stage_report import stage_samples

    cfg = load_config("tiny", str(tmp_path), ["compute.dtype=bfloat16", "training.sample_steps=2"])
    torch.manual_seed(0)
    if stage == 1:
        model = build_image_unet("tiny")
        data = _latent_set(frames=1)
        data.tensors["latents"] = data.tensors["latents"][:, 0]
    else:
        model = build_video_unet("tiny", conditioning=cfg.training.stages[str(stage)].conditioning)
        data = _latent_set()
    paths = stage_samples(cfg, stage, model, data, tmp_path)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert paths and all(p.stat().st_size > 0 for p in paths)


def test_evaluation_validation_loss_with_bf16_model(bf16_video_unet, tmp_path):
    # What training.evaluate runs on the held-out clips: the objective's loss at fixed sigmas, fp32 inputs.
    from training.evaluate import validation_metrics

    cfg = load_config("tiny", str(tmp_path), ["evaluation.val_sigmas=[0.002, 1.0]"])
    out = validation_metrics(bf16_video_unet, _latent_set(), cfg, "cpu")
    assert {"val_loss", "val_loss/sigma_0.002", "val_loss/sigma_1"} <= set(out)
    assert all(v == v and v < float("inf") for k, v in out.items() if k.startswith("val_loss"))


def test_gradient_checkpointing_switch_gives_equal_losses_and_gradients(tmp_path):
    from training.run import build_model

    cfg = load_config("tiny", str(tmp_path), ["training.stages.1.grad_checkpointing=true"])
    assert build_model(None, cfg, "v", 1).is_gradient_checkpointing
    assert not build_model(None, load_config("tiny", str(tmp_path)), "v", 1).is_gradient_checkpointing

    batch = synthetic_video_batches(2, 0, height=8, width=8)(0)
    objective = VideoObjective(LogNormalSigma(), p_drop=0.0)
    batch |= objective.draw(batch, torch.Generator().manual_seed(0))
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        unet = build_video_unet("tiny").train()
        if checkpointing:
            unet.enable_gradient_checkpointing()
        loss = objective.loss(unet, batch).mean()
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in unet.parameters() if p.grad is not None]))
    (l0, g0), (l1, g1) = results
    assert torch.equal(l0, l1)
    assert len(g0) == len(g1) and all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(g0, g1))


def test_profiles_train_stage_two_on_text_and_stage_three_on_images():
    for profile in ("tiny", "svd"):
        stages = load_config(profile).training.stages
        assert stages["2"].conditioning == "text" and stages["3"].conditioning == "image", profile
    assert load_config("svd").training.cond_aug_online and not load_config("tiny").training.cond_aug_online
    assert load_config("svd").training.stages["3"].grad_checkpointing


def test_text_stage_inflates_then_widens_to_image_to_video_without_changing_it(tmp_path):
    torch.manual_seed(0)
    image = build_image_unet("tiny")
    text = build_video_unet("tiny", conditioning="text")
    assert text.config.in_channels == 4
    inflate(image, text)
    assert torch.equal(text.conv_in.weight, image.conv_in.weight)

    x = torch.randn(1, 3, 4, 8, 8)
    ctx, ids = torch.randn(1, 1, 64), torch.tensor([[6.0, 127.0, 0.0]])
    with torch.no_grad():
        before = text(x, 1.0, encoder_hidden_states=ctx, added_time_ids=ids).sample
        widen_conv_in(text, 8)
        after = text(torch.cat([x, torch.randn(1, 3, 4, 8, 8)], 2), 1.0, encoder_hidden_states=ctx,
                     added_time_ids=ids).sample
    assert torch.equal(before, after)
    text.save_pretrained(tmp_path / "m")
    assert type(text).from_pretrained(tmp_path / "m").config.in_channels == 8
    with pytest.raises(ValueError, match="narrow"):
        widen_conv_in(text, 4)


def test_online_conditioning_augmentation_encodes_a_fresh_draw_every_step():
    torch.manual_seed(0)
    vae = build_vae("tiny").eval()
    batch = synthetic_video_batches(2, 0, height=8, width=8)(0)
    del batch["z_cond_aug"], batch["sigma_aug"]
    batch["cond_frame"] = torch.rand(2, 3, 32, 32) * 2 - 1
    objective = VideoObjective(LogNormalSigma(), p_drop=0.0, cond_vae=vae)
    d0 = objective.draw(batch, torch.Generator().manual_seed(10))
    d1 = objective.draw(batch, torch.Generator().manual_seed(11))
    assert not torch.equal(d0["aug_sigma"], d1["aug_sigma"]) and not torch.equal(d0["aug_noise"], d1["aug_noise"])
    z, s = objective.conditioning_latent({**batch, **d0})
    expected = encode_latents(vae, batch["cond_frame"] + d0["aug_sigma"].view(-1, 1, 1, 1) * d0["aug_noise"])
    assert torch.equal(z, expected) and torch.equal(s, d0["aug_sigma"])
    assert not torch.equal(z, objective.conditioning_latent({**batch, **d1})[0])
    loss = objective.loss(build_video_unet("tiny"), {**batch, **d0})
    assert loss.shape == (2,) and torch.isfinite(loss).all()
    with pytest.raises(KeyError, match="cond_frame"):
        objective.draw({k: v for k, v in batch.items() if k != "cond_frame"}, torch.Generator())
