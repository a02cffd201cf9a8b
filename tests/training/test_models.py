"""Builders: SD 2.1 / SVD configs (counted on the meta device, never allocated) and the tiny CPU nets."""

from __future__ import annotations


import pytest
import torch
from diffusers import UNet2DConditionModel, UNetSpatioTemporalConditionModel

from training.models import (
    build_image_unet,
    build_video_unet,
    count_parameters,
    image_unet_config,
    video_unet_config,
)


def test_svd_image_unet_is_sd21_architecture():
    unet = build_image_unet("svd", device="meta")
    assert isinstance(unet, UNet2DConditionModel)
    cfg = unet.config
    assert cfg.in_channels == cfg.out_channels == 4
    assert tuple(cfg.block_out_channels) == (320, 640, 1280, 1280)
    assert tuple(cfg.attention_head_dim) == (5, 10, 20, 20)
    assert cfg.cross_attention_dim == 1024 and cfg.use_linear_projection
    # SD 2.1's UNet has 865,910,724 parameters.
    assert count_parameters(unet) == 865_910_724


def test_svd_video_unet_is_released_svd_network():
    unet = build_video_unet("svd", device="meta")
    assert isinstance(unet, UNetSpatioTemporalConditionModel)
    cfg = unet.config
    # The builder must be exactly diffusers' default config (the released SVD net).
    defaults = {k: v for k, v in UNetSpatioTemporalConditionModel.extract_init_dict({})[0].items()}
    for key, value in defaults.items():
        ours = cfg[key]
        assert (tuple(ours) if isinstance(ours, (list, tuple)) else ours) == (
            tuple(value) if isinstance(value, (list, tuple)) else value
        ), key
    assert cfg.in_channels == 8 and cfg.out_channels == 4
    assert cfg.projection_class_embeddings_input_dim == 3 * cfg.addition_time_embed_dim == 768
    # 64-channel heads at every level.
    assert [c // h for c, h in zip(cfg.block_out_channels, cfg.num_attention_heads)] == [64] * 4
    assert count_parameters(unet) == 1_524_623_082  # ~1.52B


def test_svd_video_attention_only_in_first_three_levels():
    cfg = video_unet_config("svd")
    assert [t.startswith("CrossAttn") for t in cfg["down_block_types"]] == [True, True, True, False]
    assert [t.startswith("CrossAttn") for t in cfg["up_block_types"]] == [False, True, True, True]


def test_temporal_conv_kernel_is_3_1_1():
    unet = build_video_unet("svd", device="meta")
    conv = unet.down_blocks[0].resnets[0].temporal_res_block.conv1
    assert tuple(conv.kernel_size) == (3, 1, 1)


def test_tiny_image_and_video_share_block_structure():
    img, vid = image_unet_config("tiny"), video_unet_config("tiny")
    assert img["block_out_channels"] == vid["block_out_channels"]
    assert img["attention_head_dim"] == vid["num_attention_heads"]
    assert img["layers_per_block"] == vid["layers_per_block"]
    assert img["cross_attention_dim"] == vid["cross_attention_dim"]
    attn = lambda types: [t.startswith("CrossAttn") for t in types]
    assert attn(img["down_block_types"]) == attn(vid["down_block_types"])
    assert attn(img["up_block_types"]) == attn(vid["up_block_types"])
    assert vid["in_channels"] == 2 * img["in_channels"] == 8
    assert vid["projection_class_embeddings_input_dim"] == 3 * vid["addition_time_embed_dim"]


def test_tiny_models_are_small_and_run_on_cpu():
    # Size, not wall time, keeps the CPU profile fast (speed is measured in benchmarks/, never asserted here).
    torch.manual_seed(0)
    img, vid = build_image_unet("tiny"), build_video_unet("tiny")
    assert count_parameters(img) < 2_000_000 and count_parameters(vid) < 2_000_000
    d = img.config.cross_attention_dim
    with torch.no_grad():
        out = img(torch.randn(2, 4, 16, 16), 10, torch.randn(2, 1, d)).sample
        assert out.shape == (2, 4, 16, 16)
        video = vid(torch.randn(1, 3, 8, 16, 16), 10, torch.randn(1, 1, d), torch.randn(1, 3)).sample
    assert video.shape == (1, 3, 4, 16, 16)


def test_unknown_size_rejected():
    with pytest.raises(ValueError, match="unknown UNet size"):
        build_image_unet("huge")
