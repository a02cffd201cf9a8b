"""What a training stage shows its users: a progress bar, one MLflow run, Dagster Pipes messages, and pictures.

MLflow run per stage: tags ``stage``, ``curation_variant``, ``dataset_version``; params = the resolved config;
metrics per step = ``loss``, ``samples_per_s``, ``peak_memory_mb`` and ``loss_sigma_<lo>_<hi>`` (mean loss of
the step's samples whose sigma fell in that bin of ``training.sigma_bins.DEFAULT_SIGMA_EDGES``); artifacts = the
config, the loss curve, and sample videos (MP4 + GIF; stage 1: a PNG of sample images). A resumed stage continues
the run it started (its id is kept beside the checkpoints, under the data root), its loss curve from step 1; a stage
killed before its first checkpoint starts over in a new run and ends the old one as KILLED.

Samples run on ``compute.device`` in ``compute.dtype`` (``training.device``); their inputs are moved there by the
samplers, so a GPU stage stores its model instead of failing on CPU tensors after training.
"""

from __future__ import annotations

import resource
import tempfile
from pathlib import Path

import numpy as np
import torch

from svdpipe import tracking
from svdpipe.config_schema import SvdpipeConfig
from svdpipe.markdown import inline_image
from training.checkpoints import Checkpoints
from training.sigma_bins import sigma_bin_names, sigma_bins

__all__ = ["StageReport", "sigma_bin_names", "stage_samples"]

RUN_FILE = "mlflow_run.json"  # beside the stage's checkpoints


def materialization_metadata(cfg: SvdpipeConfig, info: dict, skipped: bool, extra: dict | None = None,
                             experiment_id: str | None = None) -> dict:
    """What a stage reports to Dagster (through Pipes): the MLflow run (a link where the store has a web UI,
    else its id), data version and losses."""
    keys = ("dataset_version", "steps", "resumed_from", "final_loss", "train_clips", "world_size", "seconds")
    meta = {k: info[k] for k in keys if info.get(k) is not None}
    if info.get("run_id"):
        url = tracking.run_url(cfg, info["run_id"], experiment_id)
        meta["mlflow_run"] = {"type": "url", "raw_value": url} if url else info["run_id"]
    if info.get("dvc_hashes"):
        meta["dvc_hashes"] = {"type": "json", "raw_value": info["dvc_hashes"]}
    return {**meta, **(extra or {}), "skipped": skipped}


def _peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class StageReport:
    def __init__(self, cfg: SvdpipeConfig, variant: str, stage: int, dataset_version: str, ckpt: Checkpoints,
                 total_steps: int, start_step: int, *, pipes=None, tags: dict | None = None, progress: bool = True):
        self.cfg, self.variant, self.stage = cfg, variant, stage
        self.total, self.start, self.pipes = total_steps, start_step, pipes
        self.ckpt = ckpt
        self.tags = {"stage": str(stage), "curation_variant": variant, "dataset_version": dataset_version,
                     **(tags or {})}
        self.progress = progress
        self.losses: list[tuple[int, float]] = []
        self.names = sigma_bin_names()

    def __enter__(self) -> StageReport:
        import mlflow
        from tqdm import tqdm

        stored = (self.ckpt.read_json(RUN_FILE) or {}).get("run_id")
        previous = stored if self.start else None
        if stored and not self.start:
            self._abandon(stored)
        self._ctx = tracking.start_run(self.cfg, f"train stage{self.stage} {self.variant}", self.tags, run_id=previous)
        self.run = self._ctx.__enter__()
        self.ckpt.write_json(RUN_FILE, {"run_id": self.run.info.run_id})
        if previous:  # the loss curve and the first loss of a resumed stage start at step 1, as an uninterrupted one's
            self.losses = self._logged_losses(previous)

        mlflow.log_dict(self.cfg.model_dump(mode="json"), "config.json")
        self.bar = tqdm(total=self.total, initial=self.start, desc=f"stage {self.stage} {self.variant}",
                        unit="step", disable=not self.progress)
        if self.pipes is not None:
            self.pipes.log.info(f"stage {self.stage} ({self.variant}): steps {self.start}..{self.total}, "
                                f"MLflow run {self.run.info.run_id}")
        return self

    def _logged_losses(self, run_id: str) -> list[tuple[int, float]]:
        """The losses the run logged up to the checkpoint resumed from: the steps after it run again (a step
        logged twice: the newer value, as MLflow's own charts show it)."""
        import mlflow

        client = mlflow.MlflowClient(tracking.tracking_uri(self.cfg))
        history = sorted(client.get_metric_history(run_id, "loss"), key=lambda m: m.timestamp)
        newest = {m.step: m.value for m in history}
        return sorted((s, v) for s, v in newest.items() if s <= self.start)

    def _abandon(self, run_id: str) -> None:
        """A run whose process was killed before its first checkpoint is not continued (the stage starts over, in a
        new run): ended as KILLED, not left RUNNING for ever. One of another store, or already ended, is left alone."""
        import mlflow

        client = mlflow.MlflowClient(tracking.tracking_uri(self.cfg))
        try:
            if client.get_run(run_id).info.status == "RUNNING":
                client.set_terminated(run_id, "KILLED")
        except mlflow.exceptions.MlflowException:
            pass

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    def log_text(self, name: str, text: str) -> None:
        import mlflow

        mlflow.log_text(text, f"{name}.json")

    def step(self, r) -> None:
        import mlflow

        metrics = {"loss": r.loss, "samples_per_s": r.samples / max(r.seconds, 1e-9),
                   "peak_memory_mb": _peak_memory_mb()}
        bins = sigma_bins(r.sigma)
        for b in bins.unique().tolist():
            metrics[self.names[b]] = float(r.sample_losses[bins == b].mean())
        mlflow.log_metrics(metrics, step=r.step)
        self.losses.append((r.step, r.loss))
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{r.loss:.4f}")
        if self.pipes is not None and (r.step % max(1, self.total // 10) == 0 or r.step == self.total):
            self.pipes.log.info(f"step {r.step}/{self.total} loss {r.loss:.4f} "
                                f"{metrics['samples_per_s']:.2f} samples/s")

    def finish(self, module, model_dir: Path, info: dict, data) -> None:
        """Loss curve and samples to MLflow; the materialization (with the same figures) to Dagster."""
        import mlflow

        mlflow.log_metric("final_loss", info["final_loss"] if info["final_loss"] is not None else float("nan"))
        extra = {}
        with tempfile.TemporaryDirectory() as tmp:
            curve = self._loss_curve(Path(tmp) / "loss_curve.png")
            if curve is not None:
                mlflow.log_artifact(str(curve))
                extra["loss_curve"] = {"type": "md", "raw_value": inline_image(curve.read_bytes(), "loss curve")}
            for path in self._samples(module, data, Path(tmp)):
                mlflow.log_artifact(str(path), "samples")
                if path.suffix in (".gif", ".png") and "sample" not in extra and path.stat().st_size <= 2**21:
                    mime = "image/gif" if path.suffix == ".gif" else "image/png"
                    extra["sample"] = {"type": "md", "raw_value": inline_image(path.read_bytes(), path.stem, mime)}
        if self.stage == 3:
            from training.registry import log_pipeline_model

            # Logged with the run that trained it; evaluation registers it if it is not worse than the current one.
            info["model_uri"] = log_pipeline_model(model_dir)
        mlflow.log_dict(info, "model_info.json")
        if self.pipes is not None:
            extra["first_loss"] = self.losses[0][1] if self.losses else float("nan")
            self.pipes.report_asset_materialization(
                metadata=materialization_metadata(self.cfg, info, skipped=False, extra=extra,
                                                  experiment_id=self.run.info.experiment_id),
                data_version=info["fingerprint"]
            )

    def __exit__(self, *exc) -> None:
        self.bar.close()
        self._ctx.__exit__(*exc)

    def _loss_curve(self, path: Path) -> Path | None:
        if not self.losses:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps, losses = zip(*self.losses)
        fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
        ax.plot(steps, losses, lw=1, label="loss")
        if len(losses) >= 5:
            k = max(2, len(losses) // 10)
            smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
            ax.plot(steps[k - 1:], smooth, lw=2, label=f"mean of {k}")
        ax.set(xlabel="optimizer step", ylabel="EDM loss", title=f"stage {self.stage} ({self.variant})")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return path

    def _samples(self, module, data, tmp: Path) -> list[Path]:
        return stage_samples(self.cfg, self.stage, module, data, tmp)


@torch.no_grad()
def stage_samples(cfg: SvdpipeConfig, stage: int, module, data, tmp: Path) -> list[Path]:
    """Two samples from the first stored clips' conditioning (``data``: a LatentStore or LatentSet) (the model's own view of its data), made on
    ``compute.device`` in ``compute.dtype``: images for Stage I, videos from the captions (text) or the first
    frames (image) for the video stages. ``module`` is moved there (pass a copy you do not train further)."""
    from training.device import inference_dtype, resolve_device
    from training.latents import profile_vae
    from training.sampling import decode_latents, sample_images, sample_text_video, sample_video
    from training.video_io import save_video

    device, dtype = resolve_device(cfg), inference_dtype(cfg)
    n = min(2, len(data))
    t, steps = data.materialize(range(n)).tensors, cfg.training.sample_steps  # read only the rows sampled from
    vae = profile_vae(cfg).to(device)  # not Encoders: the image and text encoders are not needed to decode
    module = module.to(device=device, dtype=dtype).eval()
    g = torch.Generator().manual_seed(cfg.seed)
    shape = tuple(t["latents"].shape[-3:])
    if stage == 1:
        z = sample_images(module, t["context"][:n], latent_shape=shape, steps=steps, generator=g)
        x = vae.decode(z.to(vae.dtype) / vae.config.scaling_factor, num_frames=1).sample.float().cpu()
        imgs = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        from PIL import Image

        path = tmp / "samples.png"
        Image.fromarray(np.concatenate(list(imgs), axis=1)).save(path)
        return [path]
    frames = t["latents"].shape[1]
    if cfg.training.stages[str(stage)].conditioning == "text":
        z = sample_text_video(module, t["context"][:n], t["null_context"], latent_shape=shape, num_frames=frames,
                              fps=t["fps"][:n], motion_bucket_id=t["motion_bucket"][:n], steps=steps, generator=g)
    else:
        if "z_cond_aug" in t:
            z_cond, sigma_aug = t["z_cond_aug"][:n, 0], t["sigma_aug"][:n, 0]
        else:  # a store for online augmentation holds the frame: encode it at the median sigma_aug
            from training.conditioning import COND_AUG_P_MEAN
            from training.encoders import encode_latents

            sigma_aug = torch.full((n,), float(np.exp(COND_AUG_P_MEAN)))
            frame = t["cond_frame"][:n]
            z_cond = encode_latents(vae, frame + sigma_aug.view(-1, 1, 1, 1) * torch.randn(frame.shape, generator=g))
        z = sample_video(module, z_cond, t["image_embeds"][:n], num_frames=frames, fps=t["fps"][:n],
                         motion_bucket_id=t["motion_bucket"][:n], sigma_aug=sigma_aug, steps=steps, generator=g)
    videos = decode_latents(vae, z, decode_chunk_size=frames).cpu()
    paths: list[Path] = []
    for i, v in enumerate(videos):
        paths += list(save_video(v, tmp / f"sample_{i}", fps=float(t["fps"][i])))
    return paths
