"""The autoencoder and the CLIP image encoder around the UNets (never downloads; sizes as in training.models).

Sizes:
  "svd"  - the released Stable Video Diffusion components: ``AutoencoderKLTemporalDecoder`` (SD's KL
           encoder, a temporal decoder, 8x downsampling, 4 latent channels) and the OpenCLIP ViT-H/14 vision
           tower with its 1024-d projection; random init unless ``path`` names saved weights.
  "tiny" - the same classes at toy width (4x downsampling, 224-px CLIP with 32-px patches), for CPU tests;
           "small" uses tiny's autoencoder and a 4-layer, 256-wide CLIP tower (a GPU check, not quality).

One autoencoder class serves every stage: its encoder is SD's KL encoder, so the latents asset (stage 1 and
the video stages) and the exported SVD pipeline share one latent space.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKLTemporalDecoder
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (
    _resize_with_antialiasing,
)
from torch import Tensor
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from training.models import count_parameters, spec

__all__ = [
    "CLIP_IMAGE_SIZE",
    "build_feature_extractor",
    "build_image_encoder",
    "build_vae",
    "encode_latents",
    "image_embeddings",
    "image_encoder_config",
    "parameter_counts",
    "vae_config",
    "vae_scale_factor",
]

CLIP_IMAGE_SIZE = 224
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def vae_config(size: str) -> dict:
    """AutoencoderKLTemporalDecoder kwargs. "svd" is the released SVD ``vae/config.json`` (the class
    defaults are a one-level toy, so they are spelled out); "tiny" keeps widths multiples of 32 because
    GroupNorm uses 32 groups."""
    spec(size)  # validates the size name
    widths = (128, 256, 512, 512) if size == "svd" else (32, 32, 64)
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * len(widths),
        "block_out_channels": widths,
        "layers_per_block": 2 if size == "svd" else 1,
        "latent_channels": spec(size).latent_channels,
        "sample_size": 768 if size == "svd" else 64,
        "scaling_factor": 0.18215,
        "force_upcast": True,
    }


def vae_scale_factor(vae: AutoencoderKLTemporalDecoder) -> int:
    """Spatial downsampling factor, computed the way ``StableVideoDiffusionPipeline`` computes it."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def _subfolder(path: str, name: str) -> str | None:
    """Model folders hold the component directly; pipeline folders (and hub ids) hold it under ``name/``."""
    p = Path(path)
    if p.is_dir():
        return name if (p / name).is_dir() else None
    return name


def build_vae(
    size: str, path: str | None = None, device: torch.device | str | None = None
) -> AutoencoderKLTemporalDecoder:
    """The autoencoder: random init of ``vae_config(size)``, or saved weights from ``path`` (model or pipeline
    folder; ``size`` is then only validated). Pass device="meta" to count parameters for free."""
    cfg = vae_config(size)
    if path is not None:
        return AutoencoderKLTemporalDecoder.from_pretrained(path, subfolder=_subfolder(path, "vae"))
    with torch.device(device or "cpu"):
        return AutoencoderKLTemporalDecoder(**cfg)


# (hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, patch_size)
_CLIP_DIMS = {"svd": (1280, 32, 16, 5120, 14), "small": (256, 4, 4, 1024, 32), "tiny": (32, 2, 2, 64, 32)}


def image_encoder_config(size: str) -> CLIPVisionConfig:
    """'svd': the ViT-H/14 vision tower SVD ships (``image_encoder/config.json``); 'tiny': 2 layers,
    32-px patches. ``projection_dim`` is the UNet's cross-attention width: the embedding is the UNet's
    one context token."""
    s = spec(size)
    hidden, layers, heads, inner, patch = _CLIP_DIMS[size]
    return CLIPVisionConfig(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=inner,
        patch_size=patch, image_size=CLIP_IMAGE_SIZE, projection_dim=s.cross_attention_dim,
        hidden_act="gelu", layer_norm_eps=1e-5, num_channels=3,
    )  # fmt: skip


def build_image_encoder(
    size: str, path: str | None = None, device: torch.device | str | None = None
) -> CLIPVisionModelWithProjection:
    """CLIP vision tower with projection: random init, or saved weights from ``path`` (model or pipeline
    folder)."""
    cfg = image_encoder_config(size)
    if path is not None:
        return CLIPVisionModelWithProjection.from_pretrained(
            path, subfolder=_subfolder(path, "image_encoder") or ""
        )
    with torch.device(device or "cpu"):
        return CLIPVisionModelWithProjection(cfg).eval()


def build_feature_extractor(path: str | None = None) -> CLIPImageProcessor:
    """CLIP's preprocessing as SVD ships it (bicubic shortest edge 224, centre crop 224, OpenAI mean/std)."""
    if path is not None:
        return CLIPImageProcessor.from_pretrained(path, subfolder=_subfolder(path, "feature_extractor") or "")
    return CLIPImageProcessor(
        do_resize=True, size={"shortest_edge": CLIP_IMAGE_SIZE}, resample=3,  # 3 = bicubic
        do_center_crop=True, crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE},
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=list(OPENAI_CLIP_MEAN), image_std=list(OPENAI_CLIP_STD), do_convert_rgb=True,
    )  # fmt: skip


def _module_device_dtype(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(module.parameters())
    return p.device, p.dtype


@torch.no_grad()
def encode_latents(
    vae: AutoencoderKLTemporalDecoder,
    frames: Tensor,
    *,
    batch: int = 8,
    sample: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """(N, 3, H, W) frames in [-1, 1] -> (N, C, H/f, W/f) posterior mode (a posterior sample if ``sample``).

    NOT scaled: diffusion targets x0 are ``latents * vae.config.scaling_factor`` (the caller scales), while
    the SVD conditioning-frame latent stays unscaled, exactly as
    ``StableVideoDiffusionPipeline._encode_vae_image`` feeds it. Chunked by ``batch`` so a long clip fits in
    memory; runs in the autoencoder's device and dtype.
    """
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"expected frames of shape (N, 3, H, W), got {tuple(frames.shape)}")
    device, dtype = _module_device_dtype(vae)
    out = []
    for chunk in frames.split(max(1, batch)):
        dist = vae.encode(chunk.to(device=device, dtype=dtype)).latent_dist
        out.append(dist.sample(generator) if sample else dist.mode())
    return torch.cat(out)


@torch.no_grad()
def image_embeddings(
    image_encoder: CLIPVisionModelWithProjection, feature_extractor: CLIPImageProcessor, frames: Tensor
) -> Tensor:
    """(N, 3, H, W) frames in [-1, 1] -> (N, D) CLIP image embeddings, the UNet's cross-attention context.

    Same steps as ``StableVideoDiffusionPipeline._encode_image`` on a PIL image: antialiased resize to 224x224
    in [-1, 1] (no crop), back to [0, 1], CLIP normalisation only, projected ``image_embeds``. (That method
    skips the resize and the [-1, 1] -> [0, 1] map for *tensor* inputs, so do not feed it tensors.)
    """
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"expected frames of shape (N, 3, H, W), got {tuple(frames.shape)}")
    device, dtype = _module_device_dtype(image_encoder)
    x = _resize_with_antialiasing(frames.float(), (CLIP_IMAGE_SIZE, CLIP_IMAGE_SIZE))
    x = (x + 1.0) / 2.0
    pixels = feature_extractor(
        images=x,
        do_normalize=True,
        do_center_crop=False,
        do_resize=False,
        do_rescale=False,
        return_tensors="pt",
    ).pixel_values
    return image_encoder(pixels.to(device=device, dtype=dtype)).image_embeds


def parameter_counts(**modules: torch.nn.Module) -> dict[str, int]:
    """{name: parameter count} for logging and the export manifest; works on meta-device modules."""
    return {name: count_parameters(m) for name, m in modules.items()}
