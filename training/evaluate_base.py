"""Evaluation of a text-conditioned video stage (the paper's Stage II base models, one per curation variant).

The paper compares curation variants on their Stage II text-to-video base models, from text prompts. For a
stage with ``conditioning: text`` this gives, on the held-out clips of ``latents/<variant>/<HxWxF>`` (all
clips, with a note, when none is held out):

  val_loss, val_loss/sigma_<s>  EDM loss at ``evaluation.val_sigmas`` with fixed noise seeds (lower is better),
                                the same inputs for every variant (``training.metrics.validation_loss``)
  videos                        one sample per held-out caption (up to ``evaluation.max_videos``), text guidance
                                ``evaluation.max_guidance`` on every frame, the clip's fps and motion bucket

Everything runs on ``compute.device`` in ``compute.dtype``. Noise of video i comes from (seed, i).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from svdpipe.config import SvdpipeConfig
from svdpipe.storage import Storage

__all__ = ["evaluate_text_stage"]


@torch.no_grad()
def evaluate_text_stage(
    root: Storage, variant: str, cfg: SvdpipeConfig, *, stage: int = 2, out_dir: str | Path | None = None,
    batch_size: int = 4,
) -> dict:
    """{"metrics", "videos", "captions", "clip_ids", "notes"} of ``models/<variant>/stage<stage>`` (see the module
    docstring)."""
    from diffusers import UNetSpatioTemporalConditionModel

    from training import model_store
    from training.device import inference_dtype, resolve_device
    from training.edm import LogNormalSigma
    from training.latents import load_latents, profile_vae
    from training.metrics.validation_loss import objective_loss_fn, validation_loss
    from training.objectives import TextVideoObjective
    from training.sampling import decode_latents, sample_text_video
    from training.video_io import save_video

    sc, ev = cfg.training.stages[str(stage)], cfg.evaluation
    if stage < 2 or sc.conditioning != "text":
        raise ValueError(f"stage {stage} is not a text-conditioned video stage (training.stages.{stage}.conditioning)")
    device, dtype = resolve_device(cfg), inference_dtype(cfg)
    folder = model_store.get_dir(root, model_store.model_key(variant, stage))
    unet = UNetSpatioTemporalConditionModel.from_pretrained(str(folder)).to(device=device, dtype=dtype).eval()
    full = load_latents(root, variant, sc)
    rows, notes = full.split(val=True), []
    if len(rows) == 0:
        notes.append(f"no held-out clips in {len(full)}: evaluated on ALL clips, which the model was trained on")
        rows = full
    data = rows.materialize()  # the evaluation set is small: read from the store once, held in memory
    t, n = data.tensors, len(data)

    keys = ("latents", "context", "fps", "motion_bucket")
    batches = [{**{k: t[k][i:i + batch_size] for k in keys},
                "null_context": t["null_context"].expand(min(batch_size, n - i), -1, -1)}
               for i in range(0, n, batch_size)]
    objective = TextVideoObjective(LogNormalSigma(), p_drop=0.0)
    r = validation_loss(objective_loss_fn(objective, unet), batches, ev.val_sigmas, seed=cfg.seed)
    metrics = {"val_loss": r["mean"], **{f"val_loss/sigma_{s:g}": v for s, v in r["per_sigma"].items()},
               "n_val_clips": float(n)}

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
    return {"metrics": metrics, "videos": videos, "captions": captions[:k],
            "clip_ids": clip_ids[:k], "notes": notes}
