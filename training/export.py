"""Diffusers-format export: stage UNets alone, and the image-to-video model as a diffusers
``StableVideoDiffusionPipeline``.

The exported scheduler is ``edm_scheduler()``, the released SVD one. With it the pipeline samples our training
formulation exactly (checked in tests/training/test_export.py):
  * ``sigmas`` for N steps are ``training.edm.karras_sigmas(N, 0.002, 700)`` (rho 7, then 0); the config's
    beta schedule only matters through ``sigma_min``/``sigma_max``, which override it;
  * ``timesteps`` are ``ln(sigma) / 4`` = ``VPredictionPreconditioning`` c_noise; ``scale_model_input``
    divides by sqrt(sigma^2 + 1) = c_in; ``step`` forms D = c_skip x + c_out F with the same v-prediction
    c_skip, c_out, then takes an Euler step.
  * One difference: the initial noise is scaled by ``init_noise_sigma`` = sqrt(sigma_max^2 + 1) ("leading"
    spacing), not sigma_max; at sigma_max = 700 that is a 1e-6 relative difference.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import diffusers
import torch
from diffusers import (
    AutoencoderKLTemporalDecoder,
    EulerDiscreteScheduler,
    StableVideoDiffusionPipeline,
    UNet2DConditionModel,
    UNetSpatioTemporalConditionModel,
)
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

from training.encoders import parameter_counts, vae_scale_factor

__all__ = [
    "MANIFEST",
    "SVD_SIGMA_MAX",
    "SVD_SIGMA_MIN",
    "edm_scheduler",
    "export_svd_pipeline",
    "fp32_copy",
    "load_svd_pipeline",
    "save_unet",
]

MANIFEST = "svdpipe_export.json"
SVD_SIGMA_MIN = 0.002
SVD_SIGMA_MAX = 700.0


def edm_scheduler() -> EulerDiscreteScheduler:
    """Euler sampler configured like SVD's released ``scheduler/scheduler_config.json`` (module docstring)."""
    return EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="v_prediction",
        interpolation_type="linear",
        use_karras_sigmas=True,
        sigma_min=SVD_SIGMA_MIN,
        sigma_max=SVD_SIGMA_MAX,
        timestep_type="continuous",
        timestep_spacing="leading",
        steps_offset=1,
    )


def _replace_dir(out_dir: Path, write) -> Path:
    """Write a folder atomically: ``write(tmp)`` fills a temp sibling, which then takes ``out_dir``'s name.

    A reader never sees a half-written export (at worst, between two renames, none); an older export of the
    same name is swapped out and deleted only once the new one is in place.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{tag}")
    old = out_dir.with_name(f".{out_dir.name}.old-{tag}")
    try:
        write(tmp)
        if out_dir.exists():
            out_dir.rename(old)  # rename() cannot replace a non-empty directory, so swap in two steps
        try:
            tmp.rename(out_dir)
        except BaseException:
            if old.exists():
                old.rename(out_dir)  # put the older export back
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return out_dir


def fp32_copy(module: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A fresh fp32 CPU model of ``module``'s class and config holding ``state_dict`` (the fp32 master weights,
    ``training.engine.master_state_dict``), leaving the training module as it is.

    Built on the meta device and filled by assignment, so a 1.5B-parameter UNet costs one copy of its weights
    and no random initialisation.
    """
    with torch.device("meta"):
        model = type(module).from_config(module.config)
    model.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=True, assign=True)
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise ValueError(f"the state dict leaves {len(left)} tensors unset, e.g. {left[:3]}")
    return model.eval()


def save_unet(unet: UNet2DConditionModel | UNetSpatioTemporalConditionModel, out_dir: str | Path) -> Path:
    """A stage 1/2/3 UNet as a diffusers model folder (config.json + safetensors), written atomically."""
    return _replace_dir(Path(out_dir), lambda tmp: unet.save_pretrained(tmp, safe_serialization=True))


def _manifest(pipe: StableVideoDiffusionPipeline, metadata: dict | None) -> dict:
    unet, vae, enc = pipe.unet, pipe.vae, pipe.image_encoder
    return {
        "format": "diffusers/StableVideoDiffusionPipeline",
        "diffusers_version": diffusers.__version__,
        "parameters": parameter_counts(unet=unet, vae=vae, image_encoder=enc),
        "unet": {
            "block_out_channels": list(unet.config.block_out_channels),
            "cross_attention_dim": unet.config.cross_attention_dim,
            "num_frames": unet.config.num_frames,
            "sample_size": unet.config.sample_size,
        },
        "vae": {
            "block_out_channels": list(vae.config.block_out_channels),
            "latent_channels": vae.config.latent_channels,
            "scale_factor": vae_scale_factor(vae),
            "scaling_factor": vae.config.scaling_factor,
        },
        "image_encoder": {
            "hidden_size": enc.config.hidden_size,
            "num_hidden_layers": enc.config.num_hidden_layers,
            "patch_size": enc.config.patch_size,
            "projection_dim": enc.config.projection_dim,
        },
        "default_resolution": [unet.config.sample_size * vae_scale_factor(vae)] * 2,
        "metadata": metadata or {},
    }


def export_svd_pipeline(
    unet: UNetSpatioTemporalConditionModel,
    vae: AutoencoderKLTemporalDecoder,
    image_encoder: CLIPVisionModelWithProjection,
    feature_extractor: CLIPImageProcessor,
    out_dir: str | Path,
    scheduler: EulerDiscreteScheduler | None = None,
    metadata: dict | None = None,
) -> Path:
    """Save the image-to-video model as a loadable ``StableVideoDiffusionPipeline`` folder (safetensors).

    Written atomically, replacing an older export of the same name; ``svdpipe_export.json`` beside
    ``model_index.json`` records sizes, parameter counts and the caller's ``metadata`` (run id, stage, ...).
    """
    if unet.config.cross_attention_dim != image_encoder.config.projection_dim:
        raise ValueError(
            f"UNet cross_attention_dim {unet.config.cross_attention_dim} != image encoder projection_dim "
            f"{image_encoder.config.projection_dim}"
        )
    if unet.config.out_channels != vae.config.latent_channels:
        raise ValueError(
            f"UNet out_channels {unet.config.out_channels} != VAE latent_channels "
            f"{vae.config.latent_channels}"
        )
    pipe = StableVideoDiffusionPipeline(
        vae=vae,
        image_encoder=image_encoder,
        unet=unet,
        scheduler=scheduler or edm_scheduler(),
        feature_extractor=feature_extractor,
    )

    def write(tmp: Path) -> None:
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / MANIFEST).write_text(json.dumps(_manifest(pipe, metadata), indent=2, sort_keys=True) + "\n")

    return _replace_dir(Path(out_dir), write)


def load_svd_pipeline(
    path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> StableVideoDiffusionPipeline:
    """Load an export (or the released model folder) for sampling, on ``device`` in ``dtype``."""
    # diffusers 0.42 renamed from_pretrained's ``torch_dtype`` to ``dtype`` (the old name warns).
    return StableVideoDiffusionPipeline.from_pretrained(str(path), dtype=dtype).to(device)
