"""Evaluation of a text-conditioned video stage (the paper's Stage II base models, one per curation variant).

The paper compares curation variants on their Stage II text-to-video base models, from text prompts. For a
stage with ``conditioning: text`` this scores ``models/<variant>/stage<stage>`` on the evaluation rows of
``latents/<variant>/<HxWxF>`` (the evaluation set every variant shares, ``training.evaluate.load_eval_data``:
none is an error, as for Stage III):

  val_loss, val_loss/sigma_<s>  EDM loss at ``evaluation.val_sigmas`` with fixed noise seeds (lower is better),
                                the same inputs for every variant (``training.evaluate.validation_metrics``),
                                with its standard error se/val_loss and count n/val_loss over the clips
  videos                        one sample per evaluation clip's caption (up to ``evaluation.max_videos``), text
                                guidance ``evaluation.max_guidance`` on every frame, the clip's fps and motion
                                bucket, saved as ``text_XX`` (MP4 and GIF)

Everything runs on ``compute.device`` in ``compute.dtype``. Noise of video i comes from (seed, i). The result is
a ``training.evaluate.EvalResult``: ``training.evaluation_run`` logs and reuses it as it does Stage III's.
"""

from __future__ import annotations

import tempfile
from collections.abc import Collection
from pathlib import Path

import torch

from svdpipe.config_schema import SvdpipeConfig
from svdpipe.storage import Storage
from training.evaluate import EvalResult

__all__ = ["evaluate_text_stage"]


@torch.no_grad()
def evaluate_text_stage(
    root: Storage, variant: str, cfg: SvdpipeConfig, *, stage: int = 2, out_dir: str | Path | None = None,
    trained_on: Collection[str] | None = None,
) -> EvalResult:
    """The evaluation of ``models/<variant>/stage<stage>`` (module docstring); ``trained_on``: the clip ids the
    model was trained on, if known (an evaluation clip among them makes the result not held out)."""
    from diffusers import UNetSpatioTemporalConditionModel

    from training import model_store
    from training.device import inference_dtype, resolve_device
    from training.eval_set import protocol_fingerprint
    from training.evaluate import load_eval_data, metric_key, validation_metrics
    from training.latents import profile_vae
    from training.sampling import decode_latents, sample_text_video
    from training.video_io import save_video

    sc, ev = cfg.training.stages[str(stage)], cfg.evaluation
    if stage < 2 or sc.conditioning != "text":
        raise ValueError(f"stage {stage} is not a text-conditioned video stage (training.stages.{stage}.conditioning)")
    device, dtype = resolve_device(cfg), inference_dtype(cfg)
    key = model_store.model_key(variant, stage)
    unet = UNetSpatioTemporalConditionModel.from_pretrained(str(model_store.get_dir(root, key)))
    unet = unet.to(device=device, dtype=dtype).eval()
    loaded = load_eval_data(root, variant, sc, trained_on)
    data = loaded.data
    t, n = data.tensors, len(data)
    metrics = validation_metrics(unet, data, cfg, device, conditioning="text")

    clip_ids, captions = data.index["clip_ids"], data.index["captions"]
    vae = profile_vae(cfg).to(device)
    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix=f"svdpipe-eval-base-{variant}-"))
    frames, shape = t["latents"].shape[1], tuple(t["latents"].shape[-3:])
    videos: list[Path] = []
    k = min(ev.max_videos, n)
    for i in range(k):
        z = sample_text_video(
            unet, t["context"][i:i + 1], t["null_context"], latent_shape=shape, num_frames=frames,
            fps=t["fps"][i], motion_bucket_id=t["motion_bucket"][i], steps=ev.sample_steps,
            guidance=ev.max_guidance, heun=ev.heun, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + i),
        )
        rate = float(t["fps"][i]) if float(t["fps"][i]) > 0 else 6.0
        videos += save_video(decode_latents(vae, z, decode_chunk_size=frames)[0].cpu(), out / f"text_{i:02d}", rate)
    metrics["n_videos"] = float(k)
    details = {"clip_ids": clip_ids[:k], "captions": captions[:k], "n_eval_clips": n, "eval_clip_ids": clip_ids,
               "eval_clips": loaded.fingerprint.get("eval_set", ""),
               "model_info": model_store.read_info(root, key) or {},
               "dataset_version": loaded.fingerprint.get("dataset_version")}
    tag = protocol_fingerprint(loaded.fingerprint, cfg, stage)
    return EvalResult(variant, stage, {metric_key(m): float(v) for m, v in metrics.items()}, videos, k,
                      list(loaded.notes), loaded.held_out, details, tag)
