"""Evaluation of a trained video stage on its held-out clips: one flat, MLflow-safe metrics dict.

Metrics (all on the clips of ``latents/<variant>/<HxWxF>`` flagged ``val``; every clip if none is held out,
which the result's ``notes`` say):

  val_loss, val_loss/sigma_<s>  EDM loss at ``evaluation.val_sigmas`` with fixed noise seeds (lower is better);
                                the same inputs for every variant, so the numbers compare across variants
  fvd | fd_<extractor>          Fréchet distance of generated vs. real (decoded held-out) videos (lower is better)
  motion_fidelity               Spearman rho of requested motion bucket vs. measured motion score (higher)
  temporal_consistency          mean CLIP cosine of consecutive generated frames (higher)
  n_videos, n_val_clips         how many videos were generated and held-out clips scored

Generation: video i (up to ``evaluation.max_videos``) is conditioned on held-out clip i (its first augmented
conditioning latent z_cond_aug[:, 0] with sigma_aug[:, 0], CLIP image embedding and fps) and asks for motion
bucket round(255 * i / (n - 1)), i.e. buckets spread evenly over 0..255 (127 for a single video), so that motion
fidelity ranks a range of requests. Noise for video i comes from a generator seeded with (seed, i).
A metric that is undefined for the set (Fréchet distance with < 2 videos, a rank correlation of a constant) is
NaN and its reason is appended to ``notes`` rather than failing the evaluation.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from svdpipe.config import SvdpipeConfig
from svdpipe.storage import Storage

__all__ = ["EvalResult", "evaluate", "load_stage_model", "log_evaluation", "metric_key"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]")


def metric_key(name: str) -> str:
    """A name MLflow accepts everywhere: letters, digits, ``_ - . /`` and space; anything else becomes ``-``."""
    return _UNSAFE.sub("-", name)


@dataclass
class EvalResult:
    variant: str
    stage: int
    metrics: dict[str, float]
    video_paths: list[Path]
    n_videos: int
    notes: list[str] = field(default_factory=list)
    held_out: bool = True  # False: no val clips, evaluated on all clips
    details: dict = field(default_factory=dict)  # buckets asked for, motion measured, clip ids, model info

    def to_json(self) -> str:
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in self.metrics.items()}
        return json.dumps({"variant": self.variant, "stage": self.stage, "metrics": clean, "n_videos": self.n_videos,
                           "held_out": self.held_out, "notes": self.notes, "details": self.details,
                           "videos": [p.name for p in self.video_paths]}, indent=1, default=str)


def load_stage_model(root: Storage, variant: str, cfg: SvdpipeConfig, stage: int, device: str = "cpu"):
    """(video UNet, autoencoder, model info) of ``models/<variant>/stage<stage>`` (2 or 3)."""
    from training import model_store

    key = model_store.model_key(variant, stage)
    folder = model_store.get_dir(root, key)
    info = model_store.read_info(root, key) or {}
    if stage == 3:
        from training.export import load_svd_pipeline

        pipe = load_svd_pipeline(folder, device=device)
        return pipe.unet.eval(), pipe.vae.eval(), info
    if stage != 2:
        raise ValueError(f"only the video stages (2, 3) can be evaluated, got stage {stage}")
    from diffusers import UNetSpatioTemporalConditionModel

    from training.latents import profile_vae

    unet = UNetSpatioTemporalConditionModel.from_pretrained(str(folder))
    vae = profile_vae(cfg)  # the autoencoder the latents were made with
    return unet.to(device).eval(), vae.to(device).eval(), info


def _extractor(cfg: SvdpipeConfig, device: str):
    from training.metrics.frechet import ClipVideoExtractor, I3DExtractor

    ev, clip = cfg.evaluation, cfg.curation.clip
    if ev.feature_extractor == "i3d":
        if not ev.i3d_weights:
            raise ValueError("evaluation.feature_extractor=i3d needs evaluation.i3d_weights (the I3D TorchScript)")
        return I3DExtractor(ev.i3d_weights, device=device)
    if ev.feature_extractor != "clip":
        raise ValueError(f"unknown evaluation.feature_extractor {ev.feature_extractor!r}: use clip or i3d")
    return ClipVideoExtractor(clip.model, clip.pretrained, seed=cfg.seed, device=device)


def _val_loss(unet, data: dict, cfg: SvdpipeConfig, device: str, batch_size: int = 4) -> dict[str, float]:
    from training.edm import LogNormalSigma
    from training.metrics.validation_loss import objective_loss_fn, validation_loss
    from training.objectives import VideoObjective

    keys = ("latents", "z_cond_aug", "sigma_aug", "image_embeds", "fps", "motion_bucket")
    n = data["latents"].shape[0]
    batches = [{k: data[k][i:i + batch_size].to(device) for k in keys} for i in range(0, n, batch_size)]
    objective = VideoObjective(sigma_dist=LogNormalSigma(), p_drop=0.0)
    r = validation_loss(objective_loss_fn(objective, unet), batches, cfg.evaluation.val_sigmas, seed=cfg.seed)
    out = {"val_loss": r["mean"]}
    out.update({f"val_loss/sigma_{s:g}": v for s, v in r["per_sigma"].items()})
    return out


def motion_buckets(n: int) -> list[int]:
    """Requested motion buckets of n generated videos: evenly spread over 0..255 (127 for one video)."""
    return [127] if n == 1 else [round(255 * i / (n - 1)) for i in range(n)]


@torch.no_grad()
def evaluate(
    root: Storage,
    variant: str,
    cfg: SvdpipeConfig,
    *,
    stage: int = 3,
    progress: bool = True,
    out_dir: str | Path | None = None,
    device: str | None = None,
) -> EvalResult:
    """Score ``models/<variant>/stage<stage>`` on the held-out latents of that stage (module docstring).

    Sample videos (``gen_XX.mp4/.gif``) and their real counterparts (``real_XX``) go to ``out_dir``
    (a new temporary folder if None).
    """
    from tqdm import tqdm

    from training.latents import load_latents
    from training.metrics.frechet import frechet_video_distance, metric_name
    from training.metrics.motion_fidelity import motion_fidelity, motion_scores
    from training.metrics.temporal_consistency import ClipFrameEmbedder, temporal_consistency
    from training.sampling import decode_latents, sample_video
    from training.video_io import save_video

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    ev, notes = cfg.evaluation, []
    stage_cfg = cfg.training.stages[str(stage)]
    unet, vae, info = load_stage_model(root, variant, cfg, stage, device)
    full = load_latents(root, variant, stage_cfg)
    data = full.split(val=True)
    held_out = len(data) > 0
    if not held_out:
        notes.append(f"no held-out clips in {len(full)} (training.val_fraction={cfg.training.val_fraction}): "
                     "evaluated on ALL clips, which the model was trained on")
        data = full
    t = data.tensors
    metrics: dict[str, float] = {"n_val_clips": float(len(data))}
    metrics.update(_val_loss(unet, t, cfg, device))

    n = min(ev.max_videos, len(data))
    buckets = motion_buckets(n)
    fps = [float(f) for f in t["fps"][:n]]
    gen = []
    for i in tqdm(range(n), desc=f"eval {variant} stage{stage}", unit="video", disable=not progress):
        z = sample_video(
            unet, t["z_cond_aug"][i:i + 1, 0].to(device), t["image_embeds"][i:i + 1].to(device),
            num_frames=stage_cfg.frames, fps=fps[i], motion_bucket_id=buckets[i], sigma_aug=t["sigma_aug"][i, 0],
            steps=ev.sample_steps, min_guidance=ev.min_guidance, max_guidance=ev.max_guidance, heun=ev.heun,
            generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + i),
        )
        gen.append(decode_latents(vae, z)[0].cpu())
    fake = torch.stack(gen)
    real = torch.cat([decode_latents(vae, t["latents"][i:i + 1].to(device)).cpu() for i in range(n)])
    metrics["n_videos"] = float(n)

    extractor = _extractor(cfg, device)
    fd_name = metric_key(metric_name(extractor))
    if n < 2:
        metrics[fd_name] = float("nan")
        notes.append(f"{fd_name}: NaN, a Fréchet distance needs >= 2 videos per side, got {n}")
    else:
        metrics[fd_name] = frechet_video_distance(real, fake, extractor)[1]
        if n < 50:
            notes.append(f"{fd_name}: from {n} videos only, a noisy estimate (FVD is usually reported on >= 2048)")

    m = cfg.curation
    motion_kw = {"sample_fps": m.sample_fps, "flow_short_side": m.motion.flow_short_side}
    measured: list[float] = []
    try:
        measured = motion_scores(fake, fps, **motion_kw).tolist()
        metrics["motion_fidelity"] = motion_fidelity(buckets, fake, fps, **motion_kw)
        if math.isnan(metrics["motion_fidelity"]):
            notes.append("motion_fidelity: NaN, requested buckets or measured motion are constant")
    except ValueError as e:
        metrics["motion_fidelity"] = float("nan")
        notes.append(f"motion_fidelity: NaN, {e}")

    embedder = getattr(extractor, "embedder", None) or ClipFrameEmbedder(m.clip.model, m.clip.pretrained,
                                                                         seed=cfg.seed, device=device)
    if stage_cfg.frames < 2:
        metrics["temporal_consistency"] = float("nan")
        notes.append("temporal_consistency: NaN, videos of one frame")
    else:
        metrics["temporal_consistency"] = temporal_consistency(fake, embedder)

    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix=f"svdpipe-eval-{variant}-"))
    paths: list[Path] = []
    for i in range(n):
        rate = fps[i] if fps[i] > 0 else 6.0
        paths += save_video(fake[i], out / f"gen_{i:02d}_bucket{buckets[i]:03d}", rate)
        paths += save_video(real[i], out / f"real_{i:02d}", rate)
    details = {"clip_ids": data.index["clip_ids"][:n], "requested_buckets": buckets, "measured_motion": measured,
               "fps": fps, "feature_extractor": extractor.name, "model_info": info,
               "dataset_version": data.index.get("fingerprint", {}).get("dataset_version")}
    metrics = {metric_key(k): float(v) for k, v in metrics.items()}
    return EvalResult(variant, stage, metrics, paths, n, notes, held_out, details)


def log_evaluation(
    result: EvalResult, cfg: SvdpipeConfig, variant: str, dataset_version: str | None, model_run_id: str | None
) -> str:
    """One MLflow run (tag stage=eval) with the config as params, the metrics, the videos and metrics.json."""
    import mlflow

    from svdpipe.tracking import start_run

    tags = {"stage": "eval", "curation_variant": variant, "dataset_version": str(dataset_version or ""),
            "evaluated_stage": str(result.stage), "model_run_id": str(model_run_id or ""),
            "held_out": str(result.held_out).lower()}
    if result.notes:
        tags["notes"] = " | ".join(result.notes)[:4000]
    with start_run(cfg, f"eval-{variant}-stage{result.stage}", tags) as run:
        mlflow.log_params({"eval.feature_extractor_name": str(result.details.get("feature_extractor", "")),
                           "eval.n_videos": result.n_videos})
        mlflow.log_metrics(result.metrics)
        for p in result.video_paths:
            mlflow.log_artifact(str(p), artifact_path="samples")
        mlflow.log_text(result.to_json(), "metrics.json")
        return run.info.run_id
