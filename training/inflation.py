"""Inflate a Stage I image UNet into a Stage II video UNet (SVD Section 4).

Spatial weights are copied from the image model; temporal layers keep their fresh initialisation.

Name mapping (image ``UNet2DConditionModel`` -> video ``UNetSpatioTemporalConditionModel``):
  * ``*.resnets.{j}.X``    -> ``*.resnets.{j}.spatial_res_block.X``  (SpatioTemporalResBlock wraps the
    2D ResnetBlock2D; its ``temporal_res_block`` and ``time_mixer`` stay new)
  * ``*.attentions.{j}.{norm,proj_in,transformer_blocks,proj_out}.X`` -> same name
    (TransformerSpatioTemporalModel keeps Transformer2DModel's names; its ``temporal_transformer_blocks``,
    ``time_pos_embed`` and ``time_mixer`` stay new)
  * everything else (``conv_in``, ``conv_out``, ``conv_norm_out``, ``time_embedding``, down/up samplers)
    -> same name.
  * ``conv_in.weight`` is shape-adapted: the image model sees 4 latent channels, the video model 8
    (noisy latent + conditioning latent). The first 4 input channels get the image weights and the
    conditioning channels are zeroed, so at the start of Stage II the conditioning frame contributes
    nothing and the network behaves like the image model.
  * ``add_embedding`` (fps / motion bucket / noise-aug ids) has no image counterpart and stays new.

A text-conditioned Stage II has ``conv_in`` of the image model's width (copied as is) and keeps SD 2.1's text
cross-attention; ``widen_conv_in`` then turns it into the image-to-video model of Stage III by adding the
conditioning-latent input channels, zero-initialised, so Stage III starts as exactly the Stage II network.
"""

from __future__ import annotations

import re

import torch
from diffusers import UNet2DConditionModel, UNetSpatioTemporalConditionModel

_RESNET = re.compile(r"^(.*\.resnets\.\d+)\.(.*)$")

# Substrings that mark a video-UNet tensor as part of a temporal layer (vs. merely new, e.g. add_embedding).
TEMPORAL_MARKERS = (
    "temporal_res_block.",
    "temporal_transformer_blocks.",
    "time_pos_embed.",
    "time_mixer.",
)


def video_name(image_name: str) -> str:
    """Where a tensor of the image UNet lives in the video UNet."""
    m = _RESNET.match(image_name)
    if m:
        return f"{m.group(1)}.spatial_res_block.{m.group(2)}"
    return image_name


def is_temporal(video_tensor_name: str) -> bool:
    return any(marker in video_tensor_name for marker in TEMPORAL_MARKERS)


@torch.no_grad()
def inflate(image_unet: UNet2DConditionModel, video_unet: UNetSpatioTemporalConditionModel) -> dict:
    """Copy every spatial tensor of ``image_unet`` into ``video_unet`` in place; return a report.

    Raises ValueError if any image tensor has no home in the video UNet or a shape cannot be adapted,
    so a config mismatch between the two models never passes silently.
    """
    src = image_unet.state_dict()
    dst = video_unet.state_dict()  # tensors share storage with the module, so copy_ writes through

    copied: list[str] = []
    shape_adapted: dict[str, str] = {}
    problems: list[str] = []
    for name, tensor in src.items():
        target_name = video_name(name)
        target = dst.get(target_name)
        if target is None:
            problems.append(f"{name} -> {target_name}: no such tensor in the video UNet")
            continue
        if target.shape == tensor.shape:
            target.copy_(tensor)
        elif name == "conv_in.weight" and _adapt_conv_in(tensor, target):
            shape_adapted[target_name] = (
                f"image in_channels {tensor.shape[1]} copied into the first {tensor.shape[1]} of "
                f"{target.shape[1]} video input channels; the conditioning-latent channels are zeroed"
            )
        else:
            problems.append(f"{name} -> {target_name}: shape {tuple(tensor.shape)} vs {tuple(target.shape)}")
            continue
        copied.append(target_name)
    if problems:
        raise ValueError("cannot inflate:\n  " + "\n  ".join(problems))

    copied_set = set(copied)
    # diffusers hard-codes GroupNorm eps=1e-6 in some spatio-temporal blocks where SD 2.1 uses 1e-5.
    # eps is not a weight, so it is reported (not silently changed: a reload from config would undo it).
    video_modules = dict(video_unet.named_modules())
    eps_mismatch: dict[str, tuple[float, float]] = {}
    for name, module in image_unet.named_modules():
        if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
            target_name = video_name(f"{name}.weight").removesuffix(".weight")
            target = video_modules.get(target_name)
            if target is not None and target.eps != module.eps:
                eps_mismatch[target_name] = (module.eps, target.eps)

    new = [n for n in dst if n not in copied_set]
    # Report parameter counts (not buffers) so they add up to the model's parameter count.
    params = dict(video_unet.named_parameters())
    n_spatial = sum(params[n].numel() for n in copied if n in params)
    n_temporal = sum(params[n].numel() for n in new if n in params and is_temporal(n))
    n_other_new = sum(params[n].numel() for n in new if n in params and not is_temporal(n))
    return {
        "copied": copied,
        "new": new,
        "temporal": [n for n in new if is_temporal(n)],
        "new_non_temporal": [n for n in new if not is_temporal(n)],  # add_embedding
        "shape_adapted": shape_adapted,
        "norm_eps_mismatch": eps_mismatch,  # video norm name -> (image eps, video eps)
        "n_params_spatial": n_spatial,
        "n_params_temporal": n_temporal,
        "n_params_new_non_temporal": n_other_new,
    }


def _adapt_conv_in(src: torch.Tensor, dst: torch.Tensor) -> bool:
    """Copy a (out, c, k, k) conv into (out, C>c, k, k): first c channels copied, the rest zeroed."""
    if src.ndim != 4 or dst.ndim != 4 or src.shape[0] != dst.shape[0] or src.shape[2:] != dst.shape[2:]:
        return False
    if src.shape[1] > dst.shape[1]:
        return False
    dst.zero_()
    dst[:, : src.shape[1]].copy_(src)
    return True


@torch.no_grad()
def widen_conv_in(unet: UNetSpatioTemporalConditionModel, in_channels: int) -> UNetSpatioTemporalConditionModel:
    """Give ``unet.conv_in`` ``in_channels`` inputs in place: the old channels keep their weights, the new ones
    (the concatenated conditioning latent) are zero, so the output is unchanged for any conditioning latent.

    The config follows (``register_to_config``), so ``save_pretrained`` writes a model that reloads as the wider one.
    """
    old = unet.conv_in
    if in_channels == old.in_channels:
        return unet
    if in_channels < old.in_channels:
        raise ValueError(f"conv_in has {old.in_channels} inputs; cannot narrow it to {in_channels}")
    new = torch.nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                          device=old.weight.device, dtype=old.weight.dtype)
    _adapt_conv_in(old.weight, new.weight)
    new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)
    return unet


def switch_off_temporal_mixing(video_unet: UNetSpatioTemporalConditionModel, logit: float = 1e4) -> int:
    """Make every AlphaBlender pass only its spatial input: alpha = sigmoid(mix_factor) = 1.

    Diffusers' blenders use merge strategy "learned_with_images" (or "learned"): out = a*spatial +
    (1-a)*temporal with a = sigmoid(mix_factor) for video frames; sigmoid(1e4) is exactly 1.0 in
    float32/bfloat16, so the temporal path is multiplied by an exact zero. For checks and ablations.
    Returns how many blenders were changed.
    """
    n = 0
    with torch.no_grad():
        for module in video_unet.modules():
            if type(module).__name__ == "AlphaBlender":
                if module.merge_strategy not in ("learned", "learned_with_images"):
                    raise ValueError(f"unexpected merge strategy {module.merge_strategy!r}")
                if module.switch_spatial_to_temporal_mix:
                    raise ValueError("blender has switch_spatial_to_temporal_mix set; spatial is not alpha")
                module.mix_factor.fill_(logit)
                n += 1
    return n
