"""Evaluation of a trained video stage on the evaluation set: one flat, MLflow-safe metrics dict.

Every variant is evaluated on the same clips (``training.eval_set``: held out from the whole usable pool before
any variant filter, the rows of ``latents/<variant>/<HxWxF>`` flagged ``val``) with the same seeds and sigmas.
``evaluate`` runs the steps in order: ``load_eval_data`` -> ``validation_metrics`` -> ``generate`` ->
``sample_metrics`` -> ``save_samples``.

  val_loss, val_loss/sigma_<s>  EDM loss at ``evaluation.val_sigmas`` with fixed noise seeds (lower is better)
  fvd | fd_<extractor>          Fréchet distance of generated vs. real (decoded) videos (lower is better)
  motion_fidelity               mean over conditioning frames of Spearman rho between the swept buckets
                                ``evaluation.motion_sweep`` and the measured motion (higher is better)
  temporal_consistency          mean CLIP cosine of consecutive generated frames (higher, only if the samples move)
  motion_magnitude[_real]       mean measured motion of the generated videos and of the real clips (context)
  n_videos, n_val_clips         how many videos were generated and evaluation clips scored
  se/<m>, n/<m>                 standard error and sample count of metric m

Generation: reference video i (up to ``evaluation.max_videos``) is conditioned on evaluation clip i (its first
augmented conditioning latent z_cond_aug[:, 0] with sigma_aug[:, 0], CLIP image embedding and fps) and asks for
the clip's own motion bucket; the sweep generates the first ``evaluation.motion_sweep_clips`` clips again with
every bucket of ``evaluation.motion_sweep`` from the same noise. Noise for clip i comes from a generator seeded
with (seed, i). Motion is measured between consecutive frames (``generated_motion``). A metric that is undefined
for the set (Fréchet distance with < 2 videos, a rank correlation of constant motion) is NaN and its reason is
appended to ``notes`` rather than failing the evaluation.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from svdpipe.config_schema import SvdpipeConfig
from svdpipe.storage import Storage
from training.metrics.directions import COUNT, SE

if TYPE_CHECKING:
    from training.latents import LatentSet

__all__ = ["EvalData", "EvalResult", "evaluate", "generate", "load_eval_data", "load_stage_model", "log_evaluation",
           "metric_key", "sample_metrics", "save_samples", "validation_metrics"]

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
    held_out: bool = True  # False: the model trained on some evaluation clips (never registered)
    details: dict = field(default_factory=dict)  # buckets asked for, motion measured, clip ids, model info
    eval_set: str = ""  # training.eval_set.protocol_fingerprint: same value, same test

    def to_json(self) -> str:
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in self.metrics.items()}
        return json.dumps({"variant": self.variant, "stage": self.stage, "metrics": clean, "n_videos": self.n_videos,
                           "held_out": self.held_out, "eval_set": self.eval_set, "notes": self.notes,
                           "details": self.details, "videos": [p.name for p in self.video_paths]}, indent=1,
                          default=str)

    @classmethod
    def from_json(cls, text: str) -> EvalResult:
        """The result ``to_json`` wrote (its videos stay where they were logged)."""
        d = json.loads(text)
        metrics = {k: float("nan") if v is None else float(v) for k, v in d["metrics"].items()}
        return cls(d["variant"], int(d["stage"]), metrics, [], int(d["n_videos"]), d.get("notes", []),
                   bool(d.get("held_out", False)), d.get("details", {}), d.get("eval_set", ""))


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


def _mean_se(values) -> tuple[float, float, int]:
    """Mean, standard error of the mean (NaN below 2 values) and count of the finite values."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return float("nan"), float("nan"), 0
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    return float(v.mean()), se, int(len(v))


def _put(metrics: dict, name: str, values) -> None:
    metrics[name], metrics[f"{SE}{name}"], metrics[f"{COUNT}{name}"] = _mean_se(values)


@dataclass
class EvalData:
    data: LatentSet  # the evaluation rows
    fingerprint: dict  # the latents' fingerprint (its ``eval_set`` names the clips)
    held_out: bool  # False: the model trained on some of these clips
    notes: list[str]


def load_eval_data(root: Storage, variant: str, stage_cfg, trained_on: Collection[str] | None = None) -> EvalData:
    """The evaluation rows of the variant's latents, and whether the model never saw them.

    ``trained_on``: the clip ids the model's training runs logged (None: unknown). A latents set without
    training rows means the model trained on every row (``training.run`` does so rather than fail).
    """
    from training.latents import load_latents

    full = load_latents(root, variant, stage_cfg)
    rows = full.split(val=True)
    if len(rows) == 0:
        raise ValueError(f"latents/{variant} hold no evaluation clip: the evaluation set is empty (too few usable "
                         "clips?); ingest more video or raise evaluation.holdout_min_clips, then rebuild the latents")
    data = rows.materialize()  # the evaluation set is small: read from the store once, held in memory
    notes, held_out = [], True
    if len(data) == len(full):
        held_out = False
        notes.append(f"every clip of latents/{variant} is an evaluation clip: the model trained on them")
    seen = sorted(set(trained_on or ()) & set(data.index["clip_ids"]))
    if seen:
        held_out = False
        notes.append(f"the model trained on {len(seen)} evaluation clip(s) ({', '.join(seen[:5])}): retrain it "
                     "(svdpipe train --force) on latents built with this evaluation set")
    return EvalData(data, full.index.get("fingerprint", {}), held_out, notes)


def validation_metrics(unet, data: LatentSet, cfg: SvdpipeConfig, device: str, batch_size: int = 4,
                       conditioning: str = "image") -> dict:
    """val_loss (with its standard error over clips) and val_loss/sigma_<s> at the fixed sigmas and seeds.

    ``conditioning``: the stage's (``training.stages.N.conditioning``): ``image`` scores the image-to-video
    objective on the first augmented conditioning latent, ``text`` the text-to-video one on the clips' captions."""
    from training.edm import LogNormalSigma
    from training.metrics.validation_loss import objective_loss_fn, validation_loss
    from training.objectives import TextVideoObjective, VideoObjective

    if conditioning == "text":
        objective, keys = TextVideoObjective(LogNormalSigma(), p_drop=0.0), ("latents", "context", "fps",
                                                                             "motion_bucket")
    else:
        objective = VideoObjective(sigma_dist=LogNormalSigma(), p_drop=0.0)
        keys = ("latents", "z_cond_aug", "sigma_aug", "image_embeds", "fps", "motion_bucket")
    t, n = data.tensors, len(data)
    batches = []
    for i in range(0, n, batch_size):
        batch = {k: t[k][i:i + batch_size].to(device) for k in keys}
        if conditioning == "text":  # one empty-caption context in the store, one per sample in a batch
            batch["null_context"] = t["null_context"].expand(len(batch["latents"]), -1, -1).to(device)
        batches.append(batch)
    r = validation_loss(objective_loss_fn(objective, unet), batches, cfg.evaluation.val_sigmas, seed=cfg.seed)
    out: dict[str, float] = {"n_val_clips": float(n)}
    _put(out, "val_loss", r["per_sample"])
    out["val_loss"] = r["mean"]  # the same number as the mean over clips, summed in sigma order
    out.update({f"val_loss/sigma_{s:g}": v for s, v in r["per_sigma"].items()})
    return out


def generate(unet, vae, data: LatentSet, jobs: list[tuple[int, int]], cfg: SvdpipeConfig, stage_cfg, device: str,
             progress: bool = True, desc: str = "eval") -> Tensor:
    """Decoded videos (len(jobs), F, 3, H, W) in [0, 1]; job (i, bucket) conditions on evaluation clip i, asks for
    ``bucket`` and draws its noise from a generator seeded with (seed, i): a clip's sweep shares its noise."""
    from tqdm import tqdm

    from training.sampling import decode_latents, sample_video

    t, ev, out = data.tensors, cfg.evaluation, []
    for i, bucket in tqdm(jobs, desc=desc, unit="video", disable=not progress):
        z = sample_video(
            unet, t["z_cond_aug"][i:i + 1, 0].to(device), t["image_embeds"][i:i + 1].to(device),
            num_frames=stage_cfg.frames, fps=float(t["fps"][i]), motion_bucket_id=bucket,
            sigma_aug=t["sigma_aug"][i, 0], steps=ev.sample_steps, min_guidance=ev.min_guidance,
            max_guidance=ev.max_guidance, heun=ev.heun,
            generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + i),
        )
        out.append(decode_latents(vae, z)[0].cpu())
    return torch.stack(out)


def sample_metrics(fake: Tensor, real: Tensor, sweep: Tensor, cfg: SvdpipeConfig, extractor,
                   device: str) -> tuple[dict, list[str], dict]:
    """Fréchet distance, motion magnitudes, motion fidelity and temporal consistency of the generated videos.

    ``fake``/``real``: reference videos and their clips (n, F, 3, H, W); ``sweep``: (k, B, F, 3, H, W), clip j
    generated with every bucket of ``evaluation.motion_sweep``. Returns (metrics, notes, details).
    """
    from training.metrics.frechet import frechet_video_distance, metric_name
    from training.metrics.motion_fidelity import generated_motion, motion_fidelity_per_frame
    from training.metrics.temporal_consistency import ClipFrameEmbedder, temporal_consistency_per_video

    m, notes, metrics = cfg.curation, [], {}
    n = len(fake)
    fd_name = metric_key(metric_name(extractor))
    if n < 2:
        metrics[fd_name] = float("nan")
        notes.append(f"{fd_name}: NaN, a Fréchet distance needs >= 2 videos per side, got {n}")
    else:
        metrics[fd_name] = frechet_video_distance(real, fake, extractor)[1]
        if n < 50:
            notes.append(f"{fd_name}: from {n} videos only, a noisy estimate (FVD is usually reported on >= 2048)")
    metrics[f"{COUNT}{fd_name}"] = float(n)

    side = m.motion.flow_short_side
    gen_motion, real_motion = generated_motion(fake, side), generated_motion(real, side)
    _put(metrics, "motion_magnitude", gen_motion)
    _put(metrics, "motion_magnitude_real", real_motion)
    k, b = sweep.shape[:2]
    swept = generated_motion(sweep.flatten(0, 1), side).reshape(k, b)
    rho = motion_fidelity_per_frame(cfg.evaluation.motion_sweep, swept)
    _put(metrics, "motion_fidelity", rho)
    if np.isnan(rho).any():
        notes.append(f"motion_fidelity: {int(np.isnan(rho).sum())} of {k} frame(s) left out, their measured "
                     "motion did not change with the bucket (rank correlation undefined)")

    if fake.shape[1] < 2:
        metrics["temporal_consistency"] = float("nan")
        notes.append("temporal_consistency: NaN, videos of one frame")
    else:
        embedder = getattr(extractor, "embedder", None) or ClipFrameEmbedder(m.clip.model, m.clip.pretrained,
                                                                             seed=cfg.seed, device=device)
        _put(metrics, "temporal_consistency", temporal_consistency_per_video(fake, embedder))
    details = {"measured_motion": gen_motion.tolist(), "real_motion": real_motion.tolist(),
               "sweep_buckets": list(cfg.evaluation.motion_sweep), "sweep_motion": swept.tolist(),
               "motion_fidelity_per_frame": rho.tolist(), "feature_extractor": extractor.name}
    return metrics, notes, details


def save_samples(out: Path, fake: Tensor, real: Tensor, sweep: Tensor, buckets: list[int], fps: list[float],
                 sweep_buckets: tuple[int, ...]) -> list[Path]:
    """``gen_XX_bucketBBB`` and ``real_XX`` per reference video, ``sweep_XX_bucketBBB`` per swept one (MP4, GIF)."""
    from training.video_io import save_video

    paths: list[Path] = []
    for i in range(len(fake)):
        rate = fps[i] if fps[i] > 0 else 6.0
        paths += save_video(fake[i], out / f"gen_{i:02d}_bucket{buckets[i]:03d}", rate)
        paths += save_video(real[i], out / f"real_{i:02d}", rate)
    for j in range(len(sweep)):
        for video, bucket in zip(sweep[j], sweep_buckets):
            paths += save_video(video, out / f"sweep_{j:02d}_bucket{bucket:03d}", fps[j] if fps[j] > 0 else 6.0)
    return paths


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
    trained_on: Collection[str] | None = None,
) -> EvalResult:
    """Score ``models/<variant>/stage<stage>`` on the evaluation set (module docstring).

    Sample videos go to ``out_dir`` (a new temporary folder if None); ``trained_on``: the clip ids the model
    was trained on, if known (an evaluation clip among them makes the result not held out).
    """
    from training.eval_set import protocol_fingerprint
    from training.sampling import decode_latents

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    ev = cfg.evaluation
    stage_cfg = cfg.training.stages[str(stage)]
    loaded = load_eval_data(root, variant, stage_cfg, trained_on)
    data, notes = loaded.data, list(loaded.notes)
    unet, vae, info = load_stage_model(root, variant, cfg, stage, device)
    metrics = validation_metrics(unet, data, cfg, device)

    t = data.tensors
    n = min(ev.max_videos, len(data))
    buckets = [int(b) for b in t["motion_bucket"][:n]]
    k = min(ev.motion_sweep_clips, n)
    desc = f"eval {variant} stage{stage}"
    fake = generate(unet, vae, data, list(enumerate(buckets)), cfg, stage_cfg, device, progress, desc)
    sweep = generate(unet, vae, data, [(i, b) for i in range(k) for b in ev.motion_sweep], cfg, stage_cfg, device,
                     progress, f"{desc} motion sweep").unflatten(0, (k, len(ev.motion_sweep)))
    real = torch.cat([decode_latents(vae, t["latents"][i:i + 1].to(device)).cpu() for i in range(n)])
    metrics["n_videos"] = float(n)
    scored, more_notes, details = sample_metrics(fake, real, sweep, cfg, _extractor(cfg, device), device)
    metrics.update(scored)
    notes += more_notes

    fps = [float(f) for f in t["fps"][:n]]
    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix=f"svdpipe-eval-{variant}-"))
    paths = save_samples(out, fake, real, sweep, buckets, fps, ev.motion_sweep)
    clips_fp = loaded.fingerprint.get("eval_set", "")
    details.update({"clip_ids": data.index["clip_ids"][:n], "n_eval_clips": len(data), "requested_buckets": buckets,
                    "fps": fps, "model_info": info, "dataset_version": loaded.fingerprint.get("dataset_version"),
                    "eval_clips": clips_fp, "eval_clip_ids": data.index["clip_ids"]})
    metrics = {metric_key(k): float(v) for k, v in metrics.items()}
    tag = protocol_fingerprint(loaded.fingerprint, cfg, stage)
    return EvalResult(variant, stage, metrics, paths, n, notes, loaded.held_out, details, tag)


def log_evaluation(
    result: EvalResult, cfg: SvdpipeConfig, variant: str, dataset_version: str | None, model_run_id: str | None,
    tags: dict[str, str] | None = None,
) -> str:
    """One MLflow run (tag stage=eval) with the config as params, the metrics, the videos and metrics.json.

    Tags: ``eval_set`` (the test: comparisons only put runs with the same value side by side), ``eval_clips``
    (the clips' fingerprint), ``held_out``, the model's identity, plus ``tags``.
    """
    import mlflow

    from svdpipe.tracking import log_metrics, start_run

    tags = {"stage": "eval", "curation_variant": variant, "dataset_version": str(dataset_version or ""),
            "evaluated_stage": str(result.stage), "model_run_id": str(model_run_id or ""),
            "held_out": str(result.held_out).lower(), "eval_set": result.eval_set,
            "eval_clips": str(result.details.get("eval_clips", "")), **(tags or {})}
    if result.notes:
        tags["notes"] = " | ".join(result.notes)[:4000]
    with start_run(cfg, f"eval-{variant}-stage{result.stage}", tags) as run:
        mlflow.log_params({"eval.feature_extractor_name": str(result.details.get("feature_extractor", "")),
                           "eval.n_videos": result.n_videos})
        log_metrics(result.metrics)  # headline first: what MLflow's Compare view plots by default
        for p in result.video_paths:
            mlflow.log_artifact(str(p), artifact_path="samples")
        mlflow.log_text(result.to_json(), "metrics.json")
        return run.info.run_id
