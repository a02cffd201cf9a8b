"""Autoencoder and image encoder: released SVD configs (on the meta device), the tiny CPU nets, and agreement
with what diffusers' StableVideoDiffusionPipeline computes for the same conditioning image."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import AutoencoderKL, AutoencoderKLTemporalDecoder, StableVideoDiffusionPipeline
from transformers import CLIPVisionModelWithProjection

from training.encoders import (
    build_feature_extractor,
    build_image_encoder,
    build_vae,
    encode_latents,
    image_embeddings,
    parameter_counts,
    vae_scale_factor,
)
from training.export import edm_scheduler
from training.models import build_video_unet, count_parameters, spec


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    vae, enc, fe = build_vae("tiny"), build_image_encoder("tiny"), build_feature_extractor()
    pipe = StableVideoDiffusionPipeline(
        vae=vae,
        image_encoder=enc,
        unet=build_video_unet("tiny"),
        scheduler=edm_scheduler(),
        feature_extractor=fe,
    )
    return pipe


def _pil(h: int, w: int, seed: int) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _to_pm1(img: PIL.Image.Image) -> torch.Tensor:
    """PIL -> (1, 3, H, W) in [-1, 1], the frames convention of the latents asset."""
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    return x * 2 - 1


def test_svd_vae_is_released_config_with_sd_kl_encoder():
    vae = build_vae("svd", device="meta")
    assert isinstance(vae, AutoencoderKLTemporalDecoder)
    assert tuple(vae.config.block_out_channels) == (128, 256, 512, 512)
    assert vae.config.latent_channels == 4 and vae.config.scaling_factor == 0.18215
    assert vae.config.layers_per_block == 2 and vae_scale_factor(vae) == 8
    # The encoder is SD 2.1's KL encoder: same parameter names and shapes, so SD VAE weights load into it.
    with torch.device("meta"):
        sd = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            latent_channels=4,
            sample_size=768,
        )
    ours = {k: v.shape for k, v in vae.state_dict().items() if k.startswith(("encoder.", "quant_conv."))}
    theirs = {k: v.shape for k, v in sd.state_dict().items() if k.startswith(("encoder.", "quant_conv."))}
    assert ours == theirs


def test_svd_image_encoder_is_vit_h14_with_unet_width_projection():
    enc = build_image_encoder("svd", device="meta")
    c = enc.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size) == (
        1280,
        32,
        16,
        5120,
    )
    assert (c.patch_size, c.image_size) == (14, 224)
    assert c.projection_dim == spec("svd").cross_attention_dim == 1024
    assert count_parameters(enc) == 632_076_800  # OpenCLIP ViT-H/14 vision tower + projection


def test_feature_extractor_is_clip_224():
    fe = build_feature_extractor()
    assert fe.size == {"shortest_edge": 224} and fe.crop_size == {"height": 224, "width": 224}
    assert fe.image_mean == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert fe.image_std == pytest.approx([0.26862954, 0.26130258, 0.27577711])
    assert fe.do_center_crop and fe.do_normalize and fe.do_rescale and fe.do_resize


def test_tiny_sizes_and_unknown_size():
    vae, enc = build_vae("tiny"), build_image_encoder("tiny")
    assert (
        vae_scale_factor(vae) == 4
        and vae.config.latent_channels == 4
        and vae.config.scaling_factor == 0.18215
    )
    assert all(w % 32 == 0 for w in vae.config.block_out_channels)
    assert enc.config.projection_dim == spec("tiny").cross_attention_dim and enc.config.image_size == 224
    counts = parameter_counts(vae=vae, image_encoder=enc)
    assert 0 < counts["vae"] < 2_000_000 and 0 < counts["image_encoder"] < 500_000
    with pytest.raises(ValueError, match="unknown"):
        build_vae("huge")
    with pytest.raises(ValueError, match="unknown"):
        build_image_encoder("huge")


def test_encode_latents_shape_chunking_and_sampling(tiny):
    vae = tiny.vae
    frames = torch.rand(5, 3, 64, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1
    z = encode_latents(vae, frames, batch=2)
    assert z.shape == (5, 4, 16, 12) and not z.requires_grad and torch.isfinite(z).all()
    # Chunking does not change the result; the mode is deterministic.
    torch.testing.assert_close(encode_latents(vae, frames, batch=8), z, rtol=1e-5, atol=1e-5)
    s1 = encode_latents(vae, frames, sample=True, generator=torch.Generator().manual_seed(3))
    s2 = encode_latents(vae, frames, sample=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(s1, s2) and not torch.allclose(s1, z)
    # Decoding the (unscaled) latents gives frames back at full size.
    out = vae.decode(z, num_frames=5).sample
    assert out.shape == frames.shape
    with pytest.raises(ValueError):
        encode_latents(vae, frames[:, :1])


def test_encode_latents_follows_vae_dtype():
    vae = build_vae("tiny").double()
    z = encode_latents(vae, torch.zeros(2, 3, 32, 32))
    assert z.dtype == torch.float64


def test_encode_latents_equals_pipeline_conditioning_latent(tiny):
    """The stored conditioning latent is what the pipeline concatenates at sampling time (unscaled mode)."""
    img = _pil(64, 64, seed=2)
    pre = tiny.video_processor.preprocess(img, height=64, width=64)
    ref = tiny._encode_vae_image(
        pre, device="cpu", num_videos_per_prompt=1, do_classifier_free_guidance=False
    )
    torch.testing.assert_close(encode_latents(tiny.vae, _to_pm1(img)), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hw", [(64, 64), (96, 80), (300, 260)])
def test_image_embeddings_equal_pipeline_encode_image(tiny, hw):
    img = _pil(*hw, seed=hw[0])
    ref = tiny._encode_image(img, device="cpu", num_videos_per_prompt=1, do_classifier_free_guidance=False)
    got = image_embeddings(tiny.image_encoder, tiny.feature_extractor, _to_pm1(img))
    assert got.shape == (1, spec("tiny").cross_attention_dim)
    torch.testing.assert_close(got, ref[:, 0], rtol=1e-5, atol=1e-5)


def test_image_embeddings_batch_is_per_image(tiny):
    frames = torch.cat([_to_pm1(_pil(64, 64, seed=s)) for s in (5, 6)])
    both = image_embeddings(tiny.image_encoder, tiny.feature_extractor, frames)
    one = image_embeddings(tiny.image_encoder, tiny.feature_extractor, frames[1:])
    assert both.shape == (2, spec("tiny").cross_attention_dim) and not torch.allclose(both[0], both[1])
    torch.testing.assert_close(both[1:], one, rtol=1e-5, atol=1e-5)


def test_load_from_model_or_pipeline_folder(tiny, tmp_path):
    tiny.vae.save_pretrained(tmp_path / "vae_only")
    tiny.save_pretrained(tmp_path / "pipe")
    for path in (tmp_path / "vae_only", tmp_path / "pipe"):
        vae = build_vae("tiny", path=str(path))
        assert all(torch.equal(v, tiny.vae.state_dict()[k]) for k, v in vae.state_dict().items())
    enc = build_image_encoder("tiny", path=str(tmp_path / "pipe"))
    assert isinstance(enc, CLIPVisionModelWithProjection)
    assert all(torch.equal(v, tiny.image_encoder.state_dict()[k]) for k, v in enc.state_dict().items())
    assert build_feature_extractor(str(tmp_path / "pipe")).image_mean == tiny.feature_extractor.image_mean
