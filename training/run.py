"""One training stage of one curation variant, end to end: the process that ``torchrun`` (or Dagster Pipes) starts.

    python -m training.run --stage 2 --variant svd --data-root ROOT [--profile tiny] [--set k=v ...]
    torchrun --nproc-per-node 8 -m training.run --stage 2 ...          # the same on 8 GPUs (or --nnodes N)

Stage 1 trains the image UNet (from scratch, or from ``training.image_unet_path``); stage 2 inflates the stage-1
model into the video UNet; stage 3 continues the stage-2 model at the finetuning resolution and noise. Each
stage reads its latents (``training.latents``), trains with DeepSpeed (``training.engine``), checkpoints every
``training.checkpoint_every`` steps and resumes from the newest one, logs one MLflow run (continued on resume)
and writes ``models/<variant>/stage<N>`` (stage 3: a ``StableVideoDiffusionPipeline`` folder).

A stage whose model already exists for the same inputs is not retrained (a rerun is idempotent).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import time
from contextlib import ExitStack, nullcontext
from pathlib import Path

import torch

from svdpipe.config import SvdpipeConfig, load_config
from svdpipe.storage import LocalStorage, Storage, open_storage
from training import model_store
from training.stage_report import StageReport, materialization_metadata

__all__ = ["main", "stage_fingerprint", "train_stage"]


def stage_fingerprint(cfg: SvdpipeConfig, variant: str, stage: int, dataset_version: str, parent: dict | None) -> str:
    """What a stage's model depends on: data, its stage config, the shared training config and its parent model."""
    t = cfg.training
    shared = t.model_dump(mode="json", exclude={"stages", "nproc", "checkpoint_every", "keep_checkpoints"})
    text = json.dumps(
        [variant, stage, dataset_version, t.stages[str(stage)].model_dump(mode="json"), shared, cfg.seed,
         parent and parent.get("fingerprint")],
        sort_keys=True,
    )
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def checkpoint_dir(root: Storage, variant: str, stage: int) -> Path:
    """DeepSpeed writes checkpoints to a file system: under the data root when it is local, else ./.checkpoints."""
    key = f"checkpoints/{variant}/stage{stage}"
    return root.local_path(key) if isinstance(root, LocalStorage) else Path(".checkpoints").resolve() / key


def build_model(root: Storage, cfg: SvdpipeConfig, variant: str, stage: int):
    from diffusers import UNet2DConditionModel, UNetSpatioTemporalConditionModel

    from training.engine import seed_everything
    from training.inflation import inflate
    from training.models import build_image_unet, build_video_unet

    size = cfg.training.model_size
    seed_everything(cfg.seed + stage)  # every rank builds the same initial weights
    if stage == 1:
        path = cfg.training.image_unet_path
        if path:
            sub = "unet" if (Path(path) / "unet").is_dir() else None
            return UNet2DConditionModel.from_pretrained(path, subfolder=sub)
        return build_image_unet(size)
    parent = model_store.get_dir(root, model_store.model_key(variant, stage - 1))
    if stage == 2:
        video = build_video_unet(size)
        inflate(UNet2DConditionModel.from_pretrained(parent), video)
        return video
    return UNetSpatioTemporalConditionModel.from_pretrained(parent)


def _prune(ckpt_dir: Path, keep: int) -> None:
    tags = sorted((p for p in ckpt_dir.glob("step*") if p.is_dir()), key=lambda p: int(p.name[4:]))
    for old in tags[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _pipes():
    """Dagster Pipes when launched by a Dagster asset (rank 0 only), else nothing."""
    if int(os.environ.get("RANK", "0")) == 0 and os.environ.get("DAGSTER_PIPES_CONTEXT"):
        from dagster_pipes import open_dagster_pipes

        return open_dagster_pipes()
    return nullcontext(None)


def train_stage(cfg: SvdpipeConfig, variant: str, stage: int, *, force: bool = False, progress: bool = True) -> dict:
    """Train one stage (resuming if interrupted) and return its model info (also in models/<variant>/stage<N>)."""
    from training.data import image_batches, video_batches
    from training.edm import LogNormalSigma
    from training.ema import EMA
    from training.engine import CONFIG_DIR, load_ds_config, make_engine, resume, train_steps
    from training.latents import load_latents
    from training.objectives import ImageObjective, VideoObjective
    from training import perf

    if str(stage) not in cfg.training.stages:
        raise ValueError(f"no training.stages.{stage} in the config; stages: {sorted(cfg.training.stages)}")
    sc = cfg.training.stages[str(stage)]
    root = open_storage(cfg.data_root)
    key = model_store.model_key(variant, stage)
    selection = json.loads(root.read_text(f"curated/{variant}/selection.json"))
    dataset_version = selection["clip_ids_sha1"]
    parent = model_store.read_info(root, model_store.model_key(variant, stage - 1)) if stage > 1 else None
    if stage > 1 and parent is None:
        raise FileNotFoundError(f"stage {stage} starts from stage {stage - 1}: train it first (--stage {stage - 1})")
    fingerprint = stage_fingerprint(cfg, variant, stage, dataset_version, parent)
    done = model_store.read_info(root, key)
    if done and done.get("fingerprint") == fingerprint and not force:
        with _pipes() as pipes:
            if pipes is not None:
                pipes.log.info(f"stage {stage} of {variant!r} is up to date (run {done.get('run_id')}); not retrained")
                pipes.report_asset_materialization(metadata=materialization_metadata(done, skipped=True),
                                                   data_version=fingerprint)
        return {**done, "skipped": True}

    with _pipes() as pipes, ExitStack() as stack:
        data = load_latents(root, variant, sc).split(val=False)
        if len(data) == 0:
            data = load_latents(root, variant, sc)  # a tiny corpus may hold out everything; train on all then
        ckpt_dir = checkpoint_dir(root, variant, stage)
        marker = ckpt_dir / "fingerprint.json"
        if marker.is_file() and json.loads(marker.read_text()).get("fingerprint") != fingerprint:
            shutil.rmtree(ckpt_dir)  # checkpoints of other inputs never resume into this run
        model = perf.prepare_model(build_model(root, cfg, variant, stage), cfg.training.perf)
        cuda = torch.cuda.is_available()
        ds_path = Path(cfg.training.deepspeed)
        ds_path = ds_path if ds_path.suffix == ".json" else CONFIG_DIR / f"{cfg.training.deepspeed}.json"
        # WarmupLR needs at least one step; one step of warm-up is no warm-up at all.
        ds = perf.ds_config(load_ds_config(ds_path, sc.micro_batch, sc.grad_accum, bf16=cuda,
                                           warmup_steps=max(1, sc.warmup_steps)), cfg.training.perf)
        engine = make_engine(model, ds, sc.lr, seed=cfg.seed + stage)
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        ema = EMA(engine.module, sc.ema_decay) if sc.ema_decay else None
        start = resume(engine, ckpt_dir, ema=ema)
        if rank == 0:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps({"fingerprint": fingerprint}))
        sigma = LogNormalSigma(sc.P_mean, sc.P_std)
        objective = ImageObjective(sigma, sc.p_drop) if stage == 1 else VideoObjective(sigma, sc.p_drop)
        global_batch = sc.micro_batch * sc.grad_accum * world
        make_batches = image_batches if stage == 1 else video_batches
        batches = make_batches(data, global_batch, cfg.seed + 1000 * stage)

        report = None
        if rank == 0:
            from svdpipe.dvc_hash import dvc_hashes

            # The DVC hash of every dataset this stage reads, as dvc.lock would record it.
            used = {f"curated/{variant}": f"curated/{variant}", f"latents/{variant}": f"latents/{variant}"}
            if stage > 1:
                used[model_store.model_key(variant, stage - 1)] = model_store.model_key(variant, stage - 1)
            dvc = dvc_hashes(root, used)
            extras = dict(pipes.extras) if pipes is not None else {}
            report = stack.enter_context(StageReport(
                cfg, variant, stage, dataset_version, ckpt_dir, sc.steps, start, pipes=pipes,
                tags={**{k: str(v) for k, v in extras.get("mlflow_tags", {}).items()},
                      **{f"dvc.{k}": h for k, h in dvc.items()}}, progress=progress,
            ))
            report.log_text("train_clips", json.dumps(data.index["clip_ids"]))
        t0 = time.perf_counter()

        def on_step(r) -> None:
            if r.step % cfg.training.checkpoint_every == 0 and rank == 0:
                _prune(ckpt_dir, cfg.training.keep_checkpoints)
            if report is not None:
                report.step(r)

        losses = train_steps(
            engine, batches, max(sc.steps - start, 0), start, ckpt_dir, cfg.training.checkpoint_every,
            objective=objective, seed=cfg.seed + stage, on_step=on_step, ema=ema,
        )
        elapsed = time.perf_counter() - t0
        info = {
            "variant": variant, "stage": stage, "fingerprint": fingerprint, "dataset_version": dataset_version,
            "steps": sc.steps, "resumed_from": start, "final_loss": losses[-1] if losses else None,
            "parent_run_id": parent and parent.get("run_id"), "train_clips": len(data),
            "seconds": elapsed, "world_size": world, "dvc_hashes": dvc if rank == 0 else {},
        }
        _export(engine, ema, cfg, root, variant, stage, key, info, report, data)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    return info


def _export(engine, ema, cfg, root, variant, stage, key, info, report, data) -> None:
    """Write the stage's diffusers folder (EMA weights when configured) from rank 0, then its MLflow artifacts."""
    import deepspeed

    module = engine.module
    params = list(module.parameters())
    gathered = deepspeed.zero.GatheredParameters(params) if engine.zero_optimization_stage() == 3 else nullcontext()
    with gathered, (ema.swapped(module) if ema is not None else nullcontext()):
        if torch.distributed.get_rank() != 0:
            return
        module = module.float()
        with tempfile.TemporaryDirectory(prefix="svdpipe-export-") as tmp:
            out = Path(tmp) / "model"
            if stage < 3:
                from training.export import save_unet

                save_unet(module, out)
            else:
                from training.export import export_svd_pipeline
                from training.latents import Encoders

                enc = Encoders(cfg)
                export_svd_pipeline(module, enc.vae, enc.image_encoder, enc.feature_extractor, out)
            info["run_id"] = report.run_id if report is not None else None
            if report is not None:
                report.finish(module, out, info, data)
            model_store.put_dir(root, out, key, info)


def main(argv: list[str] | None = None) -> None:
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
