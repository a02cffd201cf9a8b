"""Training throughput per stage: samples/s, peak memory and model-FLOPs utilisation (MFU).

One process measures one configuration: it builds the stage's UNet, wraps it in the DeepSpeed engine from
``infra/deepspeed`` and runs the real training step (``training.engine.train_steps`` with the stage objective)
on synthetic latents of the stage's shape. Beside it, in the same process, it measures the device's dense
matrix-product rate (the roof a UNet step can at best approach) so every figure comes with a ratio:

  MFU      = model FLOPs per second / the device's peak bf16 rate from its data sheet (GPU only)
  MFU_roof = model FLOPs per second / the matrix-product rate measured here (CPU and GPU)

Model FLOPs per sample = 3 x forward FLOPs (backward = 2 x forward), counted by torch's FlopCounterMode on
one forward pass; activation recomputation (--grad-checkpointing) is not counted, as MFU conventionally omits it.

The throughput settings of ``training.perf`` (training/perf.py) are flags here, so a GPU run measures each one:
--parameter-alignment, --channels-last, --cudnn-benchmark, --fused-adamw, --overlap-comm, --compile blocks (its
compile time, the first step's extra time, is reported apart as ``compile_s``). ``misaligned_params`` counts the
weights that do not start on a 16-byte boundary inside DeepSpeed's flat buffer; --profile also reports the top
kernels and the share of GEMM time in Turing-generation (sm75) and Hopper (sm90) kernels.

Examples:
  python benchmarks/train_throughput.py --stage 2 --size tiny            # CPU, minutes
  python benchmarks/train_throughput.py --stage 2 --size svd --micro-batch 1 --out out.json   # H100/H200
  python benchmarks/train_throughput.py --stage 2 --size svd --micro-batch 2 --parameter-alignment --fused-adamw \
      --channels-last --cudnn-benchmark --profile prof.txt --out out.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Data-sheet dense bf16 peaks (no sparsity), FLOP/s.
PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}

# (height, width, frames) in pixels per stage and size; svd values are the paper's (docs/architecture.md, "The paper's numbers").
SHAPES = {
    ("tiny", 1): (64, 64, 1),
    ("tiny", 2): (64, 64, 4),
    ("tiny", 3): (96, 96, 4),
    ("small", 1): (128, 128, 1),
    ("small", 2): (128, 128, 8),
    ("small", 3): (192, 192, 8),
    ("svd", 1): (256, 384, 1),
    ("svd", 2): (320, 576, 14),
    ("svd", 3): (576, 1024, 14),
}
VAE_FACTOR = 8  # pixels per latent cell of SD's autoencoder; the tiny profile's shapes are latent-equivalent


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int, reps: int) -> float:
    """Dense n x n x n matrix products per second, in FLOP/s (the roof a training step can approach)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


# Substrings of GEMM kernel names by GPU generation: cuBLAS/CUTLASS name the target architecture in the kernel.
GEMM_SM75 = ("cutlass_75", "s1688gemm", "sm75")
GEMM_HOPPER = ("sm90", "nvjet", "wgmma")


def top_kernels(events, key: str, n: int = 15) -> list[dict]:
    """The ``n`` device kernels (not the aten ops that launch them) with the most self time, in ms."""
    kernels = [e for e in events if getattr(e, key, 0) > 0 and getattr(e, "self_cpu_time_total", 0) == 0]
    kernels.sort(key=lambda e: getattr(e, key), reverse=True)
    return [{"name": e.key, "ms": getattr(e, key) / 1e3, "calls": e.count} for e in kernels[:n]]


def gemm_shares(events, key: str) -> dict:
    """Share of all kernel time spent in sm75-class and in Hopper-class GEMM kernels."""
    total = sum(getattr(e, key, 0) for e in events if getattr(e, "self_cpu_time_total", 0) == 0) or 1
    share = lambda marks: sum(getattr(e, key, 0) for e in events if any(m in e.key for m in marks)) / total  # noqa: E731
    return {"gemm_sm75_share": share(GEMM_SM75), "gemm_hopper_share": share(GEMM_HOPPER)}


def profile_steps(engine, fn, start: int, objective, device, step_s: float, path: str) -> dict:
    """Kernel-time table of two steps, how busy the device was (kernel time / wall time), and the top kernels."""
    from torch.profiler import ProfilerActivity, profile

    from training.engine import train_steps

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        t = time.perf_counter()
        train_steps(engine, fn, 2, start, objective=objective)
        _sync(device)
        wall = time.perf_counter() - t
    events = prof.key_averages()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    busy = sum(getattr(e, key, 0) for e in events) / 1e6
    kernels = top_kernels(events, key)
    with open(path, "w") as fh:
        fh.write(f"wall {wall:.3f} s for 2 steps (timed run {step_s:.3f} s/step); {key} {busy:.3f} s\n")
        fh.write(events.table(sort_by=key, row_limit=40, max_name_column_width=70))
        fh.write("\ntop kernels (self time, 2 steps):\n")
        fh.writelines(f"{k['ms']:10.2f} ms {k['calls']:6d}x  {k['name']}\n" for k in kernels)
    return {"top_kernels": kernels, **gemm_shares(events, key)}


def forward_flops(objective, model, batch: dict, dtype: torch.dtype) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        objective.loss(model, batch, dtype)
    return counter.get_total_flops()


def build(stage: int, size: str, device: torch.device):
    from training.edm import LogNormalSigma
    from training.models import build_image_unet, build_video_unet, spec
    from training.objectives import ImageObjective, VideoObjective

    sigma = LogNormalSigma(-1.2, 1.2)
    if stage == 1:
        return build_image_unet(size, device=device), ImageObjective(sigma), spec(size)
    return build_video_unet(size, device=device), VideoObjective(sigma), spec(size)


def batches(stage: int, size: str, global_batch: int, seed: int, s, shape):
    from training.synthetic import synthetic_image_batches, synthetic_video_batches

    h, w, frames = shape
    lh, lw = (h // VAE_FACTOR, w // VAE_FACTOR) if size == "svd" else (h // 4, w // 4)
    if stage == 1:
        L = 77 if size == "svd" else 8  # text tokens: OpenCLIP's context length, or a short one for tiny
        return synthetic_image_batches(
            global_batch, seed, height=lh, width=lw, context_len=L, context_dim=s.cross_attention_dim
        )
    return synthetic_video_batches(
        global_batch, seed, frames=frames, height=lh, width=lw, embed_dim=s.cross_attention_dim, aug_samples=2
    )


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", type=int, choices=(1, 2, 3), required=True)
    p.add_argument("--size", choices=("tiny", "small", "svd"), default="tiny")
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (allocator, kernels)")
    p.add_argument("--zero", type=int, choices=(2, 3), default=2)
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--frames", type=int)
    p.add_argument("--compile", choices=("none", "blocks"), default="none",
                   help="training.perf.compile: blocks = torch.compile each res-block and transformer (after the FLOP count)")
    p.add_argument("--parameter-alignment", action="store_true", help="training.perf.parameter_alignment (ZeRO-2)")
    p.add_argument("--channels-last", action="store_true", help="training.perf.channels_last")
    p.add_argument("--cudnn-benchmark", action="store_true", help="training.perf.cudnn_benchmark")
    p.add_argument("--fused-adamw", action="store_true", help="training.perf.fused_adamw")
    p.add_argument("--overlap-comm", action="store_true", help="training.perf.overlap_comm")
    p.add_argument("--profile", help="write a torch.profiler table of 2 extra steps to this file")
    p.add_argument("--out", help="append the result as one JSON line to this file")
    a = p.parse_args(argv)

    from svdpipe.config_schema import PerfConfig
    from training.engine import CONFIG_DIR, load_ds_config, make_engine, train_steps
    from training.perf import compile_blocks, ds_config, misaligned_parameters, prepare_model

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = device.type == "cuda"
    dtype = torch.bfloat16 if bf16 else torch.float32
    h, w, f = SHAPES[(a.size, a.stage)]
    shape = (a.height or h, a.width or w, a.frames or f)

    roof = matmul_rate(device, dtype, 8192 if bf16 else 1024, 20 if bf16 else 5)
    torch.manual_seed(0)
    model, objective, s = build(a.stage, a.size, device)
    if a.grad_checkpointing:
        model.enable_gradient_checkpointing()
    params = sum(p.numel() for p in model.parameters())
    perf = PerfConfig(parameter_alignment=a.parameter_alignment, channels_last=a.channels_last,
                      cudnn_benchmark=a.cudnn_benchmark, compile=a.compile, fused_adamw=a.fused_adamw,
                      overlap_comm=a.overlap_comm)
    prepare_model(model, perf.model_copy(update={"compile": "none"}))  # compiled after the FLOP count
    ds = ds_config(load_ds_config(CONFIG_DIR / f"zero{a.zero}.json", a.micro_batch, 1, bf16, warmup_steps=1), perf)
    engine = make_engine(model, ds, 1e-5, seed=0)
    misaligned = len(misaligned_parameters(engine.module))
    world = torch.distributed.get_world_size()
    fn = batches(a.stage, a.size, a.micro_batch * world, 0, s, shape)

    probe = {k: v[: a.micro_batch].to(device) for k, v in fn(0).items()}
    probe.update({k: v.to(device) for k, v in objective.draw(probe, torch.Generator().manual_seed(0)).items()})
    flops_fwd = forward_flops(objective, engine, probe, dtype) / a.micro_batch
    del probe

    if a.compile == "blocks":
        compile_blocks(engine.module)
    # The first step apart: with --compile it holds the compile time, reported as compile_s.
    _sync(device)
    t = time.perf_counter()
    train_steps(engine, fn, 1, 0, objective=objective)
    _sync(device)
    first_s = time.perf_counter() - t
    train_steps(engine, fn, max(a.warmup - 1, 0), 1, objective=objective)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _sync(device)
    t = time.perf_counter()
    losses = train_steps(engine, fn, a.steps, max(a.warmup, 1), objective=objective)
    _sync(device)
    seconds = time.perf_counter() - t

    kernels = {}
    if a.profile:
        kernels = profile_steps(engine, fn, max(a.warmup, 1) + a.steps, objective, device, seconds / a.steps, a.profile)
    samples_per_s = a.steps * a.micro_batch * world / seconds
    achieved = 3 * flops_fwd * samples_per_s / world  # per device
    name = torch.cuda.get_device_name() if bf16 else "cpu"
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    result = {
        "stage": a.stage,
        "size": a.size,
        "device": name,
        "world_size": world,
        "zero": a.zero,
        "dtype": str(dtype).removeprefix("torch."),
        "grad_checkpointing": a.grad_checkpointing,
        "compiled": a.compile,
        "perf": perf.model_dump(),
        "misaligned_params": misaligned,
        "compile_s": first_s - seconds / a.steps if a.compile != "none" else None,
        "params": params,
        "shape_hwf": shape,
        "micro_batch": a.micro_batch,
        "samples_per_s": samples_per_s,
        "frames_per_s": samples_per_s * shape[2],
        "step_s": seconds / a.steps,
        "model_tflop_per_sample": 3 * flops_fwd / 1e12,
        "achieved_tflops": achieved / 1e12,
        "matmul_roof_tflops": roof / 1e12,
        "mfu_roof": achieved / roof,
        "mfu": achieved / peak if peak else None,
        "peak_memory_gib": peak_memory_bytes(device) / 2**30,
        "final_loss": losses[-1],
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        **kernels,
    }
    line = json.dumps(result)
    if torch.distributed.get_rank() == 0:
        print(line, flush=True)
        if a.out:
            with open(a.out, "a") as fh:
                fh.write(line + "\n")
    torch.distributed.destroy_process_group()
    return result


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
