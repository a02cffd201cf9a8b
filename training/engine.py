"""DeepSpeed training engine for the EDM v-prediction objective: config loading, steps, checkpoint/resume.

The DeepSpeed JSON files under ``infra/deepspeed`` hold what is fixed per recipe (ZeRO stage, AdamW, gradient
clipping, WarmupLR); ``load_ds_config`` fills in what depends on the run (batch sizes, precision, warm-up
length) so one file serves every stage and machine.

Resume contract: a run of N steps equals a run of k steps plus a fresh process resuming at k and running
N - k more. That holds because (a) data come from ``batches_fn(step)`` and each sample's noise from a
generator seeded by (seed, step, its index in the global batch), never from the global RNG, and (b) model, optimizer and scheduler state travel in the
DeepSpeed checkpoint, with the step and global RNG states in ``client_state``, and (c) the optional weight EMA
(``training.ema.EMA``) travels next to it as ``<ckpt_dir>/step{n}/ema.safetensors``. Where checkpoints live and
the order in which ranks save, upload and resume them is ``training.checkpoints``'s.

Numerics (as Stability's ``generative-models`` trains SVD): with ``bf16`` the network's working copy and its
compute are bf16, while DeepSpeed keeps fp32 master weights in the optimizer, accumulates gradients in fp32
(``data_types.grad_accum_dtype``) and reduces them across ranks in fp32 (``communication_data_type``); the EDM
skip path and the loss stay fp32 (``training.objectives``). ``master_state_dict`` reads the fp32 master weights,
which is what a stage exports and the next stage starts from.

Data parallelism: a rank trains on its contiguous share of the global batch of a step (``batches_fn`` gives the
global batch, or just that share when it reads it alone: ``training.data.RankBatches``), and every random draw
of a sample comes from a generator of its own, seeded by (seed, step, the sample's index in the global batch).
So 2 ranks x micro-batch 1, 1 rank x micro-batch 2 and 1 rank x 2 accumulated micro-batches of 1 train
identically up to fp32 summation order (``tests/training/test_distributed.py``).

``python -m training.scenario`` runs one tiny training scenario per process on top of this (the tests' driver: torch.distributed
state is process-global).
"""

from __future__ import annotations

import copy
import json
import os
import random
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

# DeepSpeed picks its accelerator at import; without CUDA its auto-detection works but logs a warning, and
# an explicit choice keeps behaviour the same on CPU CI boxes that happen to have a stray CUDA toolkit.
if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

import deepspeed

from training.checkpoints import EMA_FILE, Checkpoints, as_checkpoints
from training.edm import LogNormalSigma
from training.ema import EMA
from training.objectives import ImageObjective, Objective

__all__ = [
    "CONFIG_DIR",
    "StepResult",
    "load_ds_config",
    "make_engine",
    "master_state_dict",
    "resume",
    "seed_everything",
    "train_steps",
]

CONFIG_DIR = Path(__file__).resolve().parent.parent / "infra" / "deepspeed"

Batch = dict[str, Tensor]


@dataclass(frozen=True)
class StepResult:
    """What one optimizer step reports: the global batch's sigmas and per-sample losses, and its wall time."""

    step: int  # steps completed
    loss: float
    sigma: Tensor
    sample_losses: Tensor
    samples: int
    seconds: float


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
    fp32 and fp16's loss scaler would change the optimizer state layout. The JSON files accumulate and reduce
    gradients in fp32 either way (bf16's 8 mantissa bits lose small micro-batch gradients in a sum). On CPU
    pass bf16=False: the tests compare losses bit-for-bit and CPU bf16 kernels are neither fast nor needed there.
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


def environment_ninja_first() -> None:
    """Put this environment's ``bin`` first on PATH when it has ``ninja`` (a DeepSpeed dependency).

    DeepSpeed compiles its CPU shm op once per machine (``~/.cache/torch_extensions``) with the first ``ninja``
    on PATH. This environment's ninja and a system one hash the same build commands differently, so processes
    that found different ones (a PATH with or without the venv) each took the other's build as stale and
    compiled it again, about 75 CPU seconds each time.
    """
    bin_dir = str(Path(sys.executable).parent)
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p]
    if (Path(bin_dir) / "ninja").is_file() and path[:1] != [bin_dir]:
        os.environ["PATH"] = os.pathsep.join([bin_dir, *(p for p in path if p != bin_dir)])


def build_shm_op() -> None:
    """Compile (or load) DeepSpeed's CPU shm op as every stage process does; ``make setup`` runs it once."""
    from deepspeed.comm.torch import build_shm_op as build

    environment_ninja_first()
    build()


def _ensure_dist() -> None:
    """Initialise torch.distributed once; a bare ``python`` call becomes a world of one.

    Under a launcher (deepspeed/torchrun) the env vars are already set and win. gloo is used without CUDA
    because the CPU accelerator would otherwise ask for oneCCL, which is not installed.
    """
    environment_ninja_first()  # before DeepSpeed's communication backend builds or loads its shm op
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


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def _slice(batch: Batch, lo: int, hi: int) -> Batch:
    return {k: v[lo:hi] for k, v in batch.items()}


def sample_seed(seed: int, step: int, index: int) -> int:
    """Seed of the random draws of sample ``index`` of the global batch of ``step``."""
    return ((seed * 1_000_003 + step) * 1_000_033 + index) % 2**63


def draw_samples(objective: Objective, batch: Batch, seed: int, step: int, first: int) -> Batch:
    """The objective's draws for ``batch``, samples ``first ..`` of the global batch of ``step``: each sample's from
    its own generator (``sample_seed``), so a rank draws its samples' noise alone, as any other split would."""
    n = next(iter(batch.values())).shape[0]
    draws = [objective.draw({k: v[i:i + 1] for k, v in batch.items()},
                            torch.Generator().manual_seed(sample_seed(seed, step, first + i))) for i in range(n)]
    return {k: torch.cat([d[k] for d in draws]) for k in draws[0]} if draws else {}


def _step_batch(objective: Objective, batches_fn, step: int, seed: int, per_rank: int) -> Batch:
    """This rank's contiguous share of the global batch of ``step``, with the objective's draws. ``batches_fn``
    gives the global batch, or only this rank's share when it says so (``rank_share``, training.data)."""
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    lo = rank * per_rank
    if getattr(batches_fn, "rank_share", False):
        mine = batches_fn(step)
        n, want = next(iter(mine.values())).shape[0], per_rank
    else:
        batch = batches_fn(step)
        n, want = next(iter(batch.values())).shape[0], per_rank * world
        mine = _slice(batch, lo, lo + per_rank)
    if n != want:
        raise ValueError(f"batch of {n} is not {per_rank} per rank x world {world} (micro x accum x world)")
    mine.update(draw_samples(objective, mine, seed, step, lo))
    return mine


def _accumulate(engine, objective: Objective, mine: Batch, micro: int, accum: int) -> Tensor:
    """Forward and backward of ``accum`` micro-batches (DeepSpeed steps the optimizer at the boundary); this
    rank's per-sample losses."""
    per_sample = []
    for i in range(accum):
        mb = {k: v.to(engine.device) for k, v in _slice(mine, i * micro, (i + 1) * micro).items()}
        loss_i = objective.loss(engine, mb)
        engine.backward(loss_i.mean())
        engine.step()
        per_sample.append(loss_i.detach().float())
    return torch.cat(per_sample)


def _gather(mine: Tensor) -> Tensor:
    """Every rank's per-sample losses in global batch order, on the CPU. Gathered on the tensor's device:
    NCCL only moves GPU tensors."""
    gathered = [torch.empty_like(mine) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(gathered, mine)
    return torch.cat(gathered).cpu()


def train_steps(
    engine,
    batches_fn: Callable[[int], Batch],
    steps: int,
    start_step: int = 0,
    ckpt_dir: Checkpoints | str | Path | None = None,
    ckpt_every: int = 0,
    *,
    objective: Objective | None = None,
    seed: int | None = None,
    on_step: Callable[[StepResult], None] | None = None,
    ema: EMA | None = None,
) -> list[float]:
    """Run ``steps`` optimizer steps from ``start_step`` and return each step's mean loss over the global batch.

    ``batches_fn(step)`` gives the *global* batch of micro_batch * grad_accum * world_size samples (or, with
    ``rank_share``, this rank's share of it); each rank takes its contiguous share, draws the objective's
    randomness per sample from a generator seeded by (seed, step, sample's index in the global batch) and splits
    it into ``grad_accum`` micro-batches. DeepSpeed scales each backward
    by 1/grad_accum, averages gradients over ranks and steps the optimizer at the boundary, so one iteration
    here is one optimizer (and scheduler) step whatever the split. Checkpoints go to ``ckpt_dir`` (a
    ``training.checkpoints.Checkpoints``, or a folder) as tag ``step{n}`` after every ``ckpt_every``-th completed
    step; ``latest`` points at the newest once every rank has saved it.

    ``ema`` (built on ``engine.module``) is updated after every optimizer step, on every rank (a collective
    under ZeRO-3), and rank 0 writes it to ``<ckpt_dir>/step{n}/ema.safetensors`` *before* the DeepSpeed
    checkpoint, so a checkpoint that ``latest`` names always has its EMA. ``on_step`` runs after the update.
    """
    objective = objective or ImageObjective(LogNormalSigma())
    seed = engine.svd_seed if seed is None else seed
    accum = engine.gradient_accumulation_steps()
    micro = engine.train_micro_batch_size_per_gpu()
    ckpt = as_checkpoints(ckpt_dir) if ckpt_dir is not None else None

    losses: list[float] = []
    for step in range(start_step, start_step + steps):
        t0 = time.perf_counter()
        mine = _step_batch(objective, batches_fn, step, seed, micro * accum)
        sample_losses = _gather(_accumulate(engine, objective, mine, micro, accum))
        sigma = _gather(mine["sigma"].float().to(engine.device))
        losses.append(float(sample_losses.mean()))
        if ema is not None:
            ema.update(engine.module)
        done = step + 1
        # The step is reported before its checkpoint: a run killed once `latest` names step N has logged step N.
        if on_step is not None:
            n = sample_losses.shape[0]
            on_step(StepResult(done, losses[-1], sigma, sample_losses, n, time.perf_counter() - t0))
        if ckpt is not None and ckpt_every > 0 and done % ckpt_every == 0:
            ckpt.save(engine, f"step{done}", {"step": done, "rng": _rng_state()}, ema=ema)
    return losses


def master_state_dict(engine) -> dict[str, Tensor]:
    """The fp32 master weights of ``engine.module`` as a full CPU state dict (collective: call on every rank).

    Under bf16 the module holds bf16 working copies; the optimizer's fp32 partitions are the weights training
    actually updates, so these are exported, not ``module.float()`` (which would round every weight to 8
    mantissa bits). Without a master copy (fp32 training) a parameter is its own master. Buffers come from the
    module as they are.
    """
    from deepspeed.utils import safe_get_full_fp32_param

    out: dict[str, Tensor] = {}
    for name, p in engine.module.named_parameters():
        full = safe_get_full_fp32_param(p) if p.requires_grad else None
        out[name] = (full if full is not None else p.detach()).float().cpu().clone()
    persistent = set(engine.module.state_dict().keys())
    for name, b in engine.module.named_buffers():
        if name in persistent:
            out[name] = b.detach().cpu().clone()
    return out


def resume(engine, ckpt_dir: Checkpoints | str | Path, tag: str | None = None, *, ema: EMA | None = None) -> int:
    """Load the ``latest`` (or given ``tag``) checkpoint into ``engine``; return the step to continue from.

    Collective. Returns 0 when ``ckpt_dir`` holds no checkpoint, so callers can resume unconditionally. Every
    rank reads ``latest`` from the checkpoints' home and loads the tag from its node's copy (downloaded first when
    the home is on S3). With ``ema``, its shadows and update count are reloaded from the checkpoint's
    ``ema.safetensors`` on every rank; a missing file is an error rather than a silent restart of the average.
    """
    ckpt = as_checkpoints(ckpt_dir)
    tag = tag or ckpt.latest()
    if tag is None:
        return 0
    ckpt.fetch(tag)
    ema_path = ckpt.local_dir / tag / EMA_FILE
    if ema is not None and not ema_path.is_file():
        raise FileNotFoundError(f"checkpoint {tag} in {ckpt.uri()} has no EMA weights ({ema_path})")
    path, client_state = engine.load_checkpoint(str(ckpt.local_dir), tag=tag)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load a checkpoint from {ckpt.uri()} (tag={tag})")
    if ema is not None:
        ema.load(ema_path)
    if "rng" in client_state:
        _set_rng_state(client_state["rng"])
    return int(client_state["step"])
