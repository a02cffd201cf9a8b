"""Stage I image UNet and Stage II/III video UNet builders (config only, never downloads).

Sizes:
  "svd"  - the released networks: Stable Diffusion 2.1's UNet for Stage I and diffusers'
           default ``UNetSpatioTemporalConditionModel`` config (the released SVD net) for Stages II/III.
  "small" - the same classes at a width that keeps a GPU busy, for the GPU check of the whole chain.
  "tiny" - the same classes and the same block layout at toy width, for CPU tests.

The image and video configs of one size share block types, widths, heads and layer counts so
that ``training.inflation.inflate`` can map every spatial weight one to one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import UNet2DConditionModel, UNetSpatioTemporalConditionModel


@dataclass(frozen=True)
class UNetSpec:
    """The knobs that image and video UNets of one size must agree on."""

    block_out_channels: tuple[int, ...]
    attn_levels: tuple[bool, ...]  # True = cross-attention at that resolution level
    heads: tuple[int, ...]  # number of heads per level (SD 2.1 calls this "attention_head_dim")
    layers_per_block: int
    cross_attention_dim: int
    latent_channels: int = 4
    addition_time_embed_dim: int = 256
    num_added_time_ids: int = 3  # fps, motion bucket id, noise-augmentation strength


SPECS: dict[str, UNetSpec] = {
    # 320 base channels, (1,2,4,4), 2 res-blocks, attention in the first three levels, 64-ch heads.
    "svd": UNetSpec(
        block_out_channels=(320, 640, 1280, 1280),
        attn_levels=(True, True, True, False),
        heads=(5, 10, 20, 20),
        layers_per_block=2,
        cross_attention_dim=1024,
    ),
    # A GPU check of the whole chain (configs/gpu-small.yaml): real widths and 32-ch heads, three levels, the tiny
    # autoencoder's latents; 64-d cross-attention like tiny, so the tiny text tower still conditions stage 1.
    "small": UNetSpec(
        block_out_channels=(128, 256, 512),
        attn_levels=(True, True, False),
        heads=(4, 8, 16),
        layers_per_block=1,
        cross_attention_dim=64,
        addition_time_embed_dim=64,
    ),
    # Widths stay multiples of 32 because GroupNorm uses 32 groups throughout; 16-ch heads.
    "tiny": UNetSpec(
        block_out_channels=(32, 64),
        attn_levels=(True, False),
        heads=(2, 4),
        layers_per_block=1,
        cross_attention_dim=64,  # the width of the tiny open_clip text tower (curation.clip_models)
        addition_time_embed_dim=8,
    ),
}


def spec(size: str) -> UNetSpec:
    try:
        return SPECS[size]
    except KeyError:
        raise ValueError(f"unknown UNet size {size!r}; expected one of {sorted(SPECS)}") from None


def image_unet_config(size: str) -> dict:
    """UNet2DConditionModel kwargs; for "svd" these are SD 2.1's (stabilityai/stable-diffusion-2-1) values."""
    s = spec(size)
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in s.attn_levels)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(s.attn_levels))
    return {
        "sample_size": 96 if size == "svd" else 16,
        "in_channels": s.latent_channels,
        "out_channels": s.latent_channels,
        "down_block_types": down,
        "up_block_types": up,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "block_out_channels": s.block_out_channels,
        "layers_per_block": s.layers_per_block,
        "attention_head_dim": s.heads,  # diffusers' legacy name: SD 2.x passes head *counts* here
        "cross_attention_dim": s.cross_attention_dim,
        "use_linear_projection": True,  # SD 2.x (and the video UNet) use Linear proj_in/proj_out
        "upcast_attention": size == "svd",  # SD 2.1-v sets it; only matters in half precision
        "act_fn": "silu",
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "downsample_padding": 1,
    }


def video_unet_config(size: str, conditioning: str = "image") -> dict:
    """UNetSpatioTemporalConditionModel kwargs; for "svd" and ``image`` exactly diffusers' defaults.

    ``conditioning="text"`` (the paper's Stage II) drops the conditioning-latent input channels: ``conv_in``
    sees the noisy latent only, and ``training.inflation.widen_conv_in`` adds the image channels for Stage III.
    """
    if conditioning not in ("text", "image"):
        raise ValueError(f"unknown conditioning {conditioning!r}: use text or image")
    s = spec(size)
    down = tuple(
        "CrossAttnDownBlockSpatioTemporal" if a else "DownBlockSpatioTemporal" for a in s.attn_levels
    )
    up = tuple(
        "CrossAttnUpBlockSpatioTemporal" if a else "UpBlockSpatioTemporal" for a in reversed(s.attn_levels)
    )
    return {
        "sample_size": 96 if size == "svd" else 16,
        # image: noisy latent + conditioning-frame latent; text: the noisy latent alone
        "in_channels": (2 if conditioning == "image" else 1) * s.latent_channels,
        "out_channels": s.latent_channels,
        "down_block_types": down,
        "up_block_types": up,
        "block_out_channels": s.block_out_channels,
        "addition_time_embed_dim": s.addition_time_embed_dim,
        "projection_class_embeddings_input_dim": s.num_added_time_ids * s.addition_time_embed_dim,
        "layers_per_block": s.layers_per_block,
        "cross_attention_dim": s.cross_attention_dim,
        "transformer_layers_per_block": 1,
        "num_attention_heads": s.heads,
        "num_frames": 25 if size == "svd" else 3,
    }


def build_image_unet(size: str, device: torch.device | str | None = None) -> UNet2DConditionModel:
    """Stage I image UNet, randomly initialised. Pass device="meta" to count parameters for free."""
    cfg = image_unet_config(size)
    with torch.device(device or "cpu"):
        return UNet2DConditionModel(**cfg)


def build_video_unet(
    size: str, device: torch.device | str | None = None, conditioning: str = "image"
) -> UNetSpatioTemporalConditionModel:
    """Stage II/III video UNet, randomly initialised. Pass device="meta" to count parameters for free."""
    cfg = video_unet_config(size, conditioning)
    with torch.device(device or "cpu"):
        return UNetSpatioTemporalConditionModel(**cfg)


def count_parameters(model: torch.nn.Module) -> int:
    """Works on meta-device models too (numel needs no storage)."""
    return sum(p.numel() for p in model.parameters())
