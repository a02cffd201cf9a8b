"""One tiny training run per process, for the tests and for trying the engine by hand.

``python -m training.scenario --help``: a tiny image (Stage I) or video (Stage II) UNet trained by
``training.engine`` on synthetic batches or a latent store, optionally resumed, checkpointed and exported; rank 0
writes the per-step losses and the engine's data types as JSON. One scenario per process, since torch.distributed
and DeepSpeed keep process-global state.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from training.edm import LogNormalSigma
from training.ema import EMA
from training.engine import (
    CONFIG_DIR, load_ds_config, make_engine, master_state_dict, resume, seed_everything, train_steps,
)
from training.objectives import ImageObjective, VideoObjective


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Train a tiny UNet on synthetic latents (test/demo run).")
    p.add_argument("--stage", type=int, choices=(1, 2), default=1, help="1: image UNet, 2: video UNet")
    p.add_argument("--config", default=str(CONFIG_DIR / "zero2.json"))
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--ckpt-dir", required=True)
    p.add_argument("--ckpt-every", type=int, default=1)
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --ckpt-dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--warmup-steps", type=int, default=None)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute activations in the backward pass")
    p.add_argument("--export", default=None, help="after training, save the UNet from the fp32 master weights here")
    p.add_argument(
        "--ema-decay", type=float, default=None, help="keep an EMA of the weights (saved per ckpt)"
    )
    p.add_argument("--ema-warmup", action="store_true", help="sgm-style EMA decay warm-up")
    p.add_argument("--out", required=True, help="JSON file for {start_step, world_size, losses} (rank 0)")
    p.add_argument("--latent-store", default=None,
                   help="read batches from the latent store under this data root's key 'store' (each rank its own "
                        "samples, training.data.RankBatches) instead of synthetic ones")
    p.add_argument("--loader-workers", type=int, default=0, help="DataLoader workers with --latent-store")
    a = p.parse_args(argv)

    from training.models import build_image_unet, build_video_unet
    from training.synthetic import synthetic_image_batches, synthetic_video_batches

    if a.stage == 1:
        build, objective, make_batches = (
            build_image_unet,
            ImageObjective(LogNormalSigma()),
            synthetic_image_batches,
        )
    else:
        build, objective, make_batches = (
            build_video_unet,
            VideoObjective(LogNormalSigma()),
            synthetic_video_batches,
        )
    # The model is seeded before construction so every run (uninterrupted, resumed, any world size) starts
    # from the same weights; a resumed run overwrites them from the checkpoint anyway.
    seed_everything(a.seed)
    model = build("tiny")
    if a.grad_checkpointing:
        model.enable_gradient_checkpointing()
    # Conditioning width follows the built UNet, so the CLI keeps working if the tiny spec changes.
    width = model.config.cross_attention_dim
    batch_kw = {"context_dim": width} if a.stage == 1 else {"embed_dim": width}
    cfg = load_ds_config(a.config, a.micro_batch, a.grad_accum, a.bf16, warmup_steps=a.warmup_steps)
    engine = make_engine(model, cfg, a.lr, a.seed)
    ema = EMA(engine.module, a.ema_decay, warmup=a.ema_warmup) if a.ema_decay is not None else None
    start = resume(engine, a.ckpt_dir, ema=ema) if a.resume else 0
    world = torch.distributed.get_world_size()
    if a.latent_store:
        from svdpipe.storage import open_storage
        from training.data import IMAGE, VIDEO, RankBatches
        from training.latent_store import LatentStore

        data = LatentStore.open(open_storage(a.latent_store), "store").training()
        per_rank = a.micro_batch * a.grad_accum
        batches = RankBatches(data, IMAGE if a.stage == 1 else VIDEO, per_rank * world, a.seed,
                              torch.distributed.get_rank(), per_rank, num_workers=a.loader_workers)
    else:
        batches = make_batches(a.micro_batch * a.grad_accum * world, a.seed, **batch_kw)
    losses = train_steps(
        engine, batches, a.steps, start, a.ckpt_dir, a.ckpt_every, objective=objective, seed=a.seed, ema=ema
    )
    master = master_state_dict(engine) if a.export else None
    if torch.distributed.get_rank() == 0:
        if master is not None:
            from training.export import fp32_copy, save_unet

            save_unet(fp32_copy(engine.module, master), a.export)
        model_dtype, accum_dtype = engine.get_data_types()
        Path(a.out).write_text(json.dumps({
            "start_step": start, "world_size": world, "losses": losses, "model_dtype": str(model_dtype),
            "grad_accum_dtype": str(accum_dtype), "optimizer_grad_accum_dtype":
            str(getattr(engine.optimizer, "gradient_accumulation_dtype", None)),
            "communication_data_type": str(engine.communication_data_type),
        }))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
