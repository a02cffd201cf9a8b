"""One training stage of one curation variant, end to end: the process that ``torchrun`` (or Dagster Pipes) starts.

    python -m training.run --stage 2 --variant svd --data-root ROOT [--profile tiny] [--set k=v ...]
    torchrun --nproc-per-node 8 -m training.run --stage 2 ...          # the same on 8 GPUs (or --nnodes N)

Stage 1 trains the image UNet (from scratch, or from ``training.image_unet_path``); stage 2 inflates the stage-1
model into the video UNet (text-to-video or image-to-video, ``training.stages.N.conditioning``); stage 3 continues
the stage-2 model at the finetuning resolution and noise (adding the image conditioning when stage 2 was text).
``train_stage`` is ``prepare`` (data, model, engine, resume), ``train`` (steps, checkpoints) and ``export``
(fp32 master weights to a diffusers folder, samples, MLflow), on the device ``compute.device`` names. Each
stage reads its latents (``training.latents``), trains with DeepSpeed (``training.engine``), checkpoints every
``training.checkpoint_every`` steps under the data root (``training.checkpoints``: ``ROOT/checkpoints/<variant>/
stage<N>``, on S3 too) and resumes from the newest one, logs one MLflow run (continued on resume)
and writes ``models/<variant>/stage<N>`` (stage 3: a ``StableVideoDiffusionPipeline`` folder).

A stage whose model already exists for the same inputs is not retrained (a rerun is idempotent).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from svdpipe.config import load_config

from svdpipe.config_schema import LAUNCH_FIELDS, SvdpipeConfig
from svdpipe.processes import die_with_parent
from svdpipe.storage import Storage, open_storage
from training import checkpoints, model_store
from training.checkpoints import Checkpoints
from training.stage_report import StageReport, materialization_metadata

__all__ = [
    "StageRun", "build_model", "export", "main", "prepare", "stage_fingerprint", "train", "train_stage", "up_to_date",
]


def stage_fingerprint(cfg: SvdpipeConfig, variant: str, stage: int, dataset_version: str, parent: dict | None) -> str:
    """What a stage's model depends on: data, its stage config, the shared training config and its parent model.

    Gradient checkpointing and the latent store's layout change memory and speed, not results, so switching them
    never retrains a stage."""
    t = cfg.training
    shared = t.model_dump(mode="json", exclude={
        "stages", "checkpoint_every", "keep_checkpoints", "latent_store", *LAUNCH_FIELDS})
    text = json.dumps(
        [variant, stage, dataset_version,
         t.stages[str(stage)].model_dump(mode="json", exclude={"grad_checkpointing"}), shared, cfg.seed,
         parent and parent.get("fingerprint")],
        sort_keys=True,
    )
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def build_model(root: Storage, cfg: SvdpipeConfig, variant: str, stage: int):
    """The stage's starting network (every rank builds the same): Stage I from scratch or ``image_unet_path``;
    Stage II inflates Stage I with ``conv_in`` sized for its conditioning; later stages continue their parent,
    widening ``conv_in`` when they add the image conditioning (text-to-video -> image-to-video)."""
    from diffusers import UNet2DConditionModel, UNetSpatioTemporalConditionModel

    from training.engine import seed_everything
    from training.inflation import inflate, widen_conv_in
    from training.models import build_image_unet, build_video_unet

    size, sc = cfg.training.model_size, cfg.training.stages[str(stage)]
    seed_everything(cfg.seed + stage)  # every rank builds the same initial weights
    if stage == 1:
        path = cfg.training.image_unet_path
        if path:
            sub = "unet" if (Path(path) / "unet").is_dir() else None
            model = UNet2DConditionModel.from_pretrained(path, subfolder=sub)
        else:
            model = build_image_unet(size)
    else:
        parent = model_store.get_dir(root, model_store.model_key(variant, stage - 1))
        if stage == 2:
            model = build_video_unet(size, conditioning=sc.conditioning)
            inflate(UNet2DConditionModel.from_pretrained(parent), model)
        else:
            model = UNetSpatioTemporalConditionModel.from_pretrained(parent)
            latent = model.config.out_channels
            want = 2 * latent if sc.conditioning == "image" else latent
            if model.config.in_channels > want:
                raise ValueError(f"stage {stage} is text-conditioned but its parent (stage {stage - 1}) is "
                                 "image-to-video; a stage cannot drop the image conditioning")
            widen_conv_in(model, want)
    if sc.grad_checkpointing:
        model.enable_gradient_checkpointing()  # activations recomputed in backward: Stage III fits 80 GB cards
    return model


def _pipes():
    """Dagster Pipes when launched by a Dagster asset (rank 0 only), else nothing."""
    if int(os.environ.get("RANK", "0")) == 0 and os.environ.get("DAGSTER_PIPES_CONTEXT"):
        from dagster_pipes import open_dagster_pipes

        return open_dagster_pipes()
    return nullcontext(None)


@dataclass
class StageRun:
    """What ``prepare`` sets up for one stage and ``train``/``export`` use."""

    cfg: SvdpipeConfig
    variant: str
    stage: int
    root: Storage
    key: str
    fingerprint: str
    dataset_version: str
    parent: dict | None
    data: object  # training.latent_store.LatentStore: the training rows
    ckpt: Checkpoints
    engine: object
    ema: object
    objective: object
    batches: object
    start: int


def up_to_date(cfg: SvdpipeConfig, variant: str, stage: int) -> tuple[str, str, dict | None, dict | None]:
    """(fingerprint, dataset version, parent info, stored info when it matches) of a stage."""
    if str(stage) not in cfg.training.stages:
        raise ValueError(f"no training.stages.{stage} in the config; stages: {sorted(cfg.training.stages)}")
    root = open_storage(cfg.data_root)
    selection = json.loads(root.read_text(f"curated/{variant}/selection.json"))
    dataset_version = selection["clip_ids_sha1"]
    parent = model_store.read_info(root, model_store.model_key(variant, stage - 1)) if stage > 1 else None
    if stage > 1 and parent is None:
        raise FileNotFoundError(f"stage {stage} starts from stage {stage - 1}: train it first (--stage {stage - 1})")
    fingerprint = stage_fingerprint(cfg, variant, stage, dataset_version, parent)
    done = model_store.read_info(root, model_store.model_key(variant, stage))
    return fingerprint, dataset_version, parent, (done if done and done.get("fingerprint") == fingerprint else None)


def _stage_batches(cfg: SvdpipeConfig, stage: int, data, per_rank: int):
    """This rank's share of every step's global batch, streamed from the latent store (training.data)."""
    from training.data import RankBatches, spec_for

    sc, ls = cfg.training.stages[str(stage)], cfg.training.latent_store
    spec = spec_for(stage, sc.conditioning, cfg.training.cond_aug_online)
    world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    return RankBatches(data, spec, per_rank * world, cfg.seed + 1000 * stage, rank, per_rank, stop=sc.steps,
                       num_workers=ls.num_workers, prefetch_factor=ls.prefetch_factor)


def prepare(cfg: SvdpipeConfig, variant: str, stage: int, fingerprint: str, dataset_version: str,
            parent: dict | None) -> StageRun:
    """Data, model, DeepSpeed engine (resumed from the newest checkpoint), objective and batches of a stage."""
    from training.device import resolve_device

    device = resolve_device(cfg)
    if device.type == "cpu":
        os.environ["DS_ACCELERATOR"] = "cpu"  # read when DeepSpeed is imported (below), even with a GPU present
    from training.edm import LogNormalSigma
    from training.ema import EMA
    from training.engine import CONFIG_DIR, load_ds_config, make_engine, resume
    from training.latents import load_latents
    from training.objectives import objective_for
    from training import perf

    sc = cfg.training.stages[str(stage)]
    root = open_storage(cfg.data_root)
    data = load_latents(root, variant, sc).training()  # a tiny corpus may hold out everything: all rows then
    model = perf.prepare_model(build_model(root, cfg, variant, stage), cfg.training.perf)
    ds_path = Path(cfg.training.deepspeed)
    ds_path = ds_path if ds_path.suffix == ".json" else CONFIG_DIR / f"{cfg.training.deepspeed}.json"
    # bf16 compute on CUDA (fp32 master weights, accumulation and reduction); fp32 on the CPU.
    # WarmupLR needs at least one step; one step of warm-up is no warm-up at all.
    ds = perf.ds_config(load_ds_config(ds_path, sc.micro_batch, sc.grad_accum, bf16=device.type == "cuda",
                                       warmup_steps=max(1, sc.warmup_steps)), cfg.training.perf)
    engine = make_engine(model, ds, sc.lr, seed=cfg.seed + stage)
    ema = EMA(engine.module, sc.ema_decay) if sc.ema_decay else None
    ckpt = checkpoints.for_stage(root, variant, stage, keep=cfg.training.keep_checkpoints)
    ckpt.reset(fingerprint)  # checkpoints of other inputs never resume into this run
    start = resume(engine, ckpt, ema=ema)
    cond_vae = None
    if stage > 1 and sc.conditioning == "image" and cfg.training.cond_aug_online:
        from training.latents import profile_vae

        cond_vae = profile_vae(cfg).to(engine.device)  # fp32, as SVD encodes (first-stage autocast off)
    objective = objective_for(stage, sc.conditioning, LogNormalSigma(sc.P_mean, sc.P_std), sc.p_drop, cond_vae)
    return StageRun(cfg, variant, stage, root, model_store.model_key(variant, stage), fingerprint, dataset_version,
                    parent, data, ckpt, engine, ema, objective,
                    _stage_batches(cfg, stage, data, sc.micro_batch * sc.grad_accum), start)


def _open_report(run: StageRun, stack: ExitStack, pipes, progress: bool) -> tuple[StageReport | None, dict]:
    """Rank 0's MLflow run and progress (with the DVC hashes of every dataset the stage reads)."""
    if torch.distributed.get_rank() != 0:
        return None, {}
    from svdpipe.dvc_hash import dvc_hashes

    variant, stage = run.variant, run.stage
    used = {f"curated/{variant}": f"curated/{variant}", f"latents/{variant}": f"latents/{variant}"}
    if stage > 1:
        used[model_store.model_key(variant, stage - 1)] = model_store.model_key(variant, stage - 1)
    dvc = dvc_hashes(run.root, used)
    extras = dict(pipes.extras) if pipes is not None else {}
    report = stack.enter_context(StageReport(
        run.cfg, variant, stage, run.dataset_version, run.ckpt, run.cfg.training.stages[str(stage)].steps,
        run.start, pipes=pipes, progress=progress,
        tags={**{k: str(v) for k, v in extras.get("mlflow_tags", {}).items()},
              **{f"dvc.{k}": h for k, h in dvc.items()}},
    ))
    report.log_text("train_clips", json.dumps(run.data.clip_ids()))
    return report, dvc


def train(run: StageRun, report: StageReport | None) -> list[float]:
    """The stage's remaining optimizer steps, checkpointing (and pruning) as configured."""
    from training.engine import train_steps

    cfg, sc = run.cfg, run.cfg.training.stages[str(run.stage)]
    return train_steps(
        run.engine, run.batches, max(sc.steps - run.start, 0), run.start, run.ckpt,
        cfg.training.checkpoint_every, objective=run.objective, seed=cfg.seed + run.stage,
        on_step=report.step if report is not None else None, ema=run.ema,
    )


def train_stage(cfg: SvdpipeConfig, variant: str, stage: int, *, force: bool = False, progress: bool = True) -> dict:
    """Train one stage (resuming if interrupted) and return its model info (also in models/<variant>/stage<N>)."""
    fingerprint, dataset_version, parent, done = up_to_date(cfg, variant, stage)
    if done and not force:
        with _pipes() as pipes:
            if pipes is not None:
                pipes.log.info(f"stage {stage} of {variant!r} is up to date (run {done.get('run_id')}); not retrained")
                pipes.report_asset_materialization(metadata=materialization_metadata(cfg, done, skipped=True),
                                                   data_version=fingerprint)
        return {**done, "skipped": True}

    with _pipes() as pipes, ExitStack() as stack:
        run = prepare(cfg, variant, stage, fingerprint, dataset_version, parent)
        report, dvc = _open_report(run, stack, pipes, progress)
        t0 = time.perf_counter()
        losses = train(run, report)
        info = {
            "variant": variant, "stage": stage, "fingerprint": fingerprint, "dataset_version": dataset_version,
            "steps": cfg.training.stages[str(stage)].steps, "resumed_from": run.start,
            "final_loss": losses[-1] if losses else None, "parent_run_id": parent and parent.get("run_id"),
            "train_clips": len(run.data), "seconds": time.perf_counter() - t0,
            "world_size": torch.distributed.get_world_size(), "dvc_hashes": dvc,
            "conditioning": "text" if stage == 1 else cfg.training.stages[str(stage)].conditioning,
        }
        export(run, info, report)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    return info


def export(run: StageRun, info: dict, report: StageReport | None) -> None:
    """Write the stage's diffusers folder from the fp32 master weights (the EMA's, when configured) from rank 0,
    then its MLflow artifacts. The next stage loads these fp32 weights."""
    from training.engine import master_state_dict
    from training.export import fp32_copy

    weights = master_state_dict(run.engine)  # collective: every rank takes part
    if run.ema is not None:
        weights.update(run.ema.state_dict())  # fp32 shadows of every trainable parameter
    if torch.distributed.get_rank() != 0:
        return
    module = fp32_copy(run.engine.module, weights)
    with tempfile.TemporaryDirectory(prefix="svdpipe-export-") as tmp:
        out = Path(tmp) / "model"
        if run.stage < 3:
            from training.export import save_unet

            save_unet(module, out)
        else:
            from training.export import export_svd_pipeline
            from training.latents import Encoders

            enc = Encoders(run.cfg)
            export_svd_pipeline(module, enc.vae, enc.image_encoder, enc.feature_extractor, out)
        info["run_id"] = report.run_id if report is not None else None
        if report is not None:
            report.finish(module, out, info, run.data)
        model_store.put_dir(run.root, out, run.key, info)


def main(argv: list[str] | None = None) -> None:
    die_with_parent()  # started by svdpipe (Pipes) or by its torchrun agent: stop with it, whatever kills it
    p = argparse.ArgumentParser(description="Train one svdpipe stage (run under torchrun for several processes).")
    p.add_argument("--stage", type=int, choices=(1, 2, 3), required=True)
    p.add_argument("--variant", required=True, help="curation variant whose curated dataset and latents to use")
    p.add_argument("--data-root", default=None)
    p.add_argument("--profile", default=None)
    p.add_argument("--params", default=None, help="YAML overlay (e.g. params.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="section.field=value")
    p.add_argument("--force", action="store_true", help="retrain even if the stage's model is up to date")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    cfg = load_config(a.profile, a.data_root, a.overrides, params_file=a.params)
    info = train_stage(cfg, a.variant, a.stage, force=a.force, progress=not a.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: v for k, v in info.items() if k != "fingerprint"}), flush=True)


if __name__ == "__main__":
    main()
