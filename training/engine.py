"""DeepSpeed training engine for the EDM v-prediction objective: config loading, steps, checkpoint/resume.

The DeepSpeed JSON files under ``infra/deepspeed`` hold what is fixed per recipe (ZeRO stage, AdamW, gradient
clipping, WarmupLR); ``load_ds_config`` fills in what depends on the run (batch sizes, precision, warm-up
length) so one file serves every stage and machine.

Resume contract: a run of N steps equals a run of k steps plus a fresh process resuming at k and running
N - k more. That holds because (a) data come from ``batches_fn(step)`` and noise from a generator seeded by
``seed + step``, never from the global RNG, and (b) model, optimizer and scheduler state travel in the
DeepSpeed checkpoint, with the step and global RNG states in ``client_state``.

Run ``python -m training.engine --help`` for a small CLI used by the tests (one scenario per process, since
torch.distributed state is process-global).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import socket
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

# DeepSpeed picks its accelerator at import; without CUDA its auto-detection works but logs a warning, and
# an explicit choice keeps behaviour the same on CPU CI boxes that happen to have a stray CUDA toolkit.
if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

import deepspeed

from training.edm import LogNormalSigma, VPredictionPreconditioning, edm_loss

__all__ = ["load_ds_config", "make_engine", "resume", "synthetic_batches", "train_steps"]

CONFIG_DIR = Path(__file__).resolve().parent.parent / "infra" / "deepspeed"

Batch = dict[str, Tensor]


def load_ds_config(
    path: str | Path,
    micro_batch: int,
    grad_accum: int,
    bf16: bool,
    *,
    world_size: int | None = None,
    warmup_steps: int | None = None,
) -> dict:
    """Read a DeepSpeed JSON config and set the run-dependent keys.

    DeepSpeed requires train_batch_size == micro_batch * grad_accum * world_size exactly, so all three are
    written together. ``bf16`` switches mixed precision; fp16 is always removed because SVD trains in bf16 or
    fp32 and fp16's loss scaler would change the optimizer state layout. On CPU pass bf16=False: the tests
    compare losses bit-for-bit and CPU bf16 kernels are neither fast nor needed there.
    """
    cfg = json.loads(Path(path).read_text())
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if micro_batch < 1 or grad_accum < 1 or world_size < 1:
        raise ValueError(f"need positive sizes, got {micro_batch=}, {grad_accum=}, {world_size=}")
    cfg["train_micro_batch_size_per_gpu"] = micro_batch
    cfg["gradient_accumulation_steps"] = grad_accum
    cfg["train_batch_size"] = micro_batch * grad_accum * world_size
    cfg.pop("fp16", None)
    cfg["bf16"] = {"enabled": bool(bf16)}
    if warmup_steps is not None:
        cfg.setdefault("scheduler", {"type": "WarmupLR", "params": {}})["params"]["warmup_num_steps"] = (
            warmup_steps
        )
    return cfg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ensure_dist() -> None:
    """Initialise torch.distributed once; a bare ``python`` call becomes a world of one.

    Under a launcher (deepspeed/torchrun) the env vars are already set and win. gloo is used without CUDA
    because the CPU accelerator would otherwise ask for oneCCL, which is not installed.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
        os.environ.setdefault(key, value)
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")


def seed_everything(seed: int) -> None:
    """Seed the global RNGs; the training loop itself does not draw from them (see module docstring)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_engine(model: torch.nn.Module, ds_config: dict, lr: float, seed: int):
    """Wrap ``model`` in a DeepSpeed engine with the config's AdamW and WarmupLR, peak learning rate ``lr``.

    ``lr`` overrides the JSON's value in both the optimizer and the scheduler's warm-up target, since
    WarmupLR otherwise ramps to its own warmup_max_lr and silently ignores the optimizer's lr.
    """
    _ensure_dist()
    seed_everything(seed)
    cfg = copy.deepcopy(ds_config)
    cfg.setdefault("optimizer", {"type": "AdamW", "params": {"torch_adam": True}})["params"]["lr"] = lr
    if cfg.get("scheduler", {}).get("type") == "WarmupLR":
        cfg["scheduler"]["params"]["warmup_max_lr"] = lr
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=cfg)
    engine.train()
    # Kept on the engine so train_steps derives per-step noise seeds without another argument.
    engine.svd_seed = seed
    return engine


def synthetic_batches(
    batch_size: int,
    seed: int,
    *,
    channels: int = 4,
    size: int = 16,
    context_len: int = 1,
    context_dim: int = 32,
) -> Callable[[int], Batch]:
    """Deterministic fake latents and text context; batch ``step`` depends only on (seed, step).

    Defaults match ``build_image_unet("tiny")`` (4 latent channels, 16x16, cross-attention dim 32).
    """

    def batches_fn(step: int) -> Batch:
        # Offset by a large odd constant so the data stream never coincides with the noise stream (seed+step).
        g = torch.Generator().manual_seed(seed * 1_000_003 + step + 7_919)
        latents = torch.randn(batch_size, channels, size, size, generator=g)
        context = torch.randn(batch_size, context_len, context_dim, generator=g)
        return {"latents": latents, "context": context}

    return batches_fn


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def train_steps(
    engine,
    batches_fn: Callable[[int], Batch],
    steps: int,
    start_step: int = 0,
    ckpt_dir: str | Path | None = None,
    ckpt_every: int = 0,
    *,
    sigma_dist: LogNormalSigma | None = None,
    seed: int | None = None,
) -> list[float]:
    """Run ``steps`` optimizer steps from ``start_step`` and return each step's mean loss.

    One step consumes ``batches_fn(step)``, a batch of micro_batch * grad_accum samples split into the
    engine's micro-batches; DeepSpeed scales each backward by 1/grad_accum and only applies the optimizer at
    the accumulation boundary, so one loop iteration here is one optimizer (and scheduler) step.
    Checkpoints go to ``ckpt_dir`` as tag ``step{n}`` after every ``ckpt_every``-th completed step.
    """
    precond = VPredictionPreconditioning()
    sigma_dist = sigma_dist or LogNormalSigma()
    seed = engine.svd_seed if seed is None else seed
    accum = engine.gradient_accumulation_steps()
    # Inputs must match the parameters' dtype: DeepSpeed casts the module to bf16 when bf16 is enabled.
    dtype = torch.bfloat16 if engine.bfloat16_enabled() else torch.float32

    def F(x: Tensor, c_noise: Tensor, **cond) -> Tensor:
        return engine(x, c_noise, **cond).sample

    losses: list[float] = []
    for step in range(start_step, start_step + steps):
        batch = batches_fn(step)
        x0_all = batch["latents"]
        if x0_all.shape[0] % accum:
            raise ValueError(f"batch of {x0_all.shape[0]} does not split into {accum} micro-batches")
        # Noise generator per step, independent of global RNG, so a resumed process draws the same noise.
        g = torch.Generator().manual_seed(seed + step)
        sigma_all = sigma_dist.sample(x0_all.shape[0], generator=g)
        noise_all = torch.randn(x0_all.shape, generator=g)
        step_loss = 0.0
        for x0, ctx, sigma, n in zip(
            x0_all.chunk(accum), batch["context"].chunk(accum), sigma_all.chunk(accum), noise_all.chunk(accum)
        ):
            dev = engine.device
            x0, ctx, sigma, n = (t.to(dev) for t in (x0, ctx, sigma, n))
            x = (x0 + n * sigma.view(-1, 1, 1, 1)).to(dtype)
            D = precond.denoise(F, x, sigma.to(dtype), encoder_hidden_states=ctx.to(dtype))
            loss = edm_loss(D.float(), x0, sigma, precond.sigma_data).mean()
            engine.backward(loss)
            engine.step()
            step_loss += loss.item() / accum
        losses.append(step_loss)
        done = step + 1
        if ckpt_dir is not None and ckpt_every > 0 and done % ckpt_every == 0:
            engine.save_checkpoint(
                str(ckpt_dir), tag=f"step{done}", client_state={"step": done, "rng": _rng_state()}
            )
    return losses


def resume(engine, ckpt_dir: str | Path, tag: str | None = None) -> int:
    """Load the ``latest`` (or given ``tag``) checkpoint into ``engine``; return the step to continue from.

    Returns 0 when ``ckpt_dir`` holds no checkpoint, so callers can resume unconditionally.
    """
    if tag is None and not (Path(ckpt_dir) / "latest").is_file():
        return 0
    path, client_state = engine.load_checkpoint(str(ckpt_dir), tag=tag)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load a checkpoint from {ckpt_dir} (tag={tag})")
    if "rng" in client_state:
        _set_rng_state(client_state["rng"])
    return int(client_state["step"])


def _main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Train the tiny image UNet on synthetic latents (test/demo run).")
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
    p.add_argument("--out", required=True, help="JSON file for {start_step, losses}")
    a = p.parse_args(argv)

    from training.models import build_image_unet

    # The model is seeded before construction so the uninterrupted and resumed runs start from the same
    # weights (a resumed run overwrites them from the checkpoint anyway).
    seed_everything(a.seed)
    model = build_image_unet("tiny")
    cfg = load_ds_config(a.config, a.micro_batch, a.grad_accum, a.bf16, warmup_steps=a.warmup_steps)
    engine = make_engine(model, cfg, a.lr, a.seed)
    start = resume(engine, a.ckpt_dir) if a.resume else 0
    batches = synthetic_batches(a.micro_batch * a.grad_accum, a.seed)
    losses = train_steps(engine, batches, a.steps, start, a.ckpt_dir, a.ckpt_every)
    Path(a.out).write_text(json.dumps({"start_step": start, "losses": losses}))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    _main()
