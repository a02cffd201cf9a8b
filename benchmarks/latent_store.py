"""Latent store reading: memory flat in the dataset size, and loader speed beside the training step it feeds.

Two measurements, each in fresh processes so peak RSS (``ru_maxrss``) belongs to one configuration:

1. Memory. Synthetic stores of the tiny Stage II shapes (latents 4x4x16x16, two conditioning latents, the 77x64
   text context; ``training.synthetic.synthetic_latent_store``) of N and 10 N clips. A training-like reader (rank 0 of
   2, ``training.data.RankBatches`` with DataLoader workers) reads one whole epoch of each; its peak RSS and its
   workers' must stay within 15 % from N to 10 N (the workers' figure is ``RUSAGE_CHILDREN``: the largest child
   process, which may be a helper that imports start, not a worker). The peer, measured the same way: loading the whole store into
   memory (``LatentStore.materialize``, what every rank did before the store was sharded), which grows with N.
2. Speed. In one process: a few real tiny Stage II training steps (``training.engine.train_steps``, DeepSpeed,
   text-to-video objective) fed by the store, then the loader alone over the same store; reported as samples/s
   and their ratio (loader / training: above 1, reading is not what a step waits for).

    python benchmarks/latent_store.py [--clips 400] [--shard-clips 16] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHAPE = {"frames": 4, "height": 16, "width": 16, "embed_dim": 64, "context": True}  # tiny Stage II latents
BATCH, PER_RANK = 8, 4  # a global batch of 8 over 2 ranks; this reader is rank 0


def _build(root: str, clips: int, shard_clips: int) -> None:
    from svdpipe.storage import open_storage
    from training.synthetic import synthetic_latent_store

    synthetic_latent_store(open_storage(root), "store", clips, shard_clips, val_clips=clips // 10, **SHAPE)


def _read(root: str, mode: str, workers: int) -> dict:
    """One reader process's figures (run as a child: ``--child``)."""
    import torch

    from svdpipe.storage import open_storage
    from training.data import TEXT_VIDEO, RankBatches
    from training.latent_store import LatentStore

    torch.set_num_threads(1)
    data = LatentStore.open(open_storage(root), "store").training()
    t0 = time.perf_counter()
    if mode == "whole":
        held = data.materialize()
        samples = len(held)
    else:
        steps = -(-len(data) // BATCH)  # one epoch of the global batch
        batches = RankBatches(data, TEXT_VIDEO, BATCH, 0, 0, PER_RANK, stop=steps, num_workers=workers)
        for step in range(steps):
            batches(step)
        batches.close()
        samples = steps * PER_RANK
    seconds = time.perf_counter() - t0
    return {"clips": len(data), "samples": samples, "seconds": seconds,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "workers_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def _child(root: str, mode: str, workers: int) -> dict:
    cmd = [sys.executable, __file__, "--child", root, mode, str(workers)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(
        Path(__file__).resolve().parent.parent)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def _speed(root: str, steps: int, workers: int) -> dict:
    """Tiny Stage II training steps fed by the store, then the loader alone (1 process, global batch 2)."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import torch

    from svdpipe.storage import open_storage
    from training.data import TEXT_VIDEO, RankBatches
    from training.edm import LogNormalSigma
    from training.engine import CONFIG_DIR, load_ds_config, make_engine, seed_everything, train_steps
    from training.latent_store import LatentStore
    from training.models import build_video_unet
    from training.objectives import TextVideoObjective

    data = LatentStore.open(open_storage(root), "store").training()
    seed_everything(0)
    model = build_video_unet("tiny", conditioning="text")
    engine = make_engine(model, load_ds_config(CONFIG_DIR / "zero2.json", 2, 1, bf16=False, world_size=1), 1e-4, 0)
    objective = TextVideoObjective(LogNormalSigma())
    batches = RankBatches(data, TEXT_VIDEO, 2, 0, 0, 2, num_workers=workers)
    train_steps(engine, batches, 2, 0, objective=objective)  # warm-up
    t0 = time.perf_counter()
    train_steps(engine, batches, steps, 2, objective=objective)
    train = steps * 2 / (time.perf_counter() - t0)
    batches.close()
    loader = {}
    for w in sorted({0, workers}):
        reader = RankBatches(data, TEXT_VIDEO, 2, 0, 0, 2, num_workers=w)
        reader(0)  # workers started
        n = 200
        t0 = time.perf_counter()
        for step in range(1, n + 1):
            reader(step)
        loader[w] = n * 2 / (time.perf_counter() - t0)
        reader.close()
    torch.distributed.destroy_process_group()
    return {"train_samples_s": train, "train_steps_s": train / 2, "loader_samples_s": loader}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(_read(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=400, help="clips of the 1x store (the other has 10x)")
    p.add_argument("--shard-clips", type=int, default=16)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reader")
    p.add_argument("--train-steps", type=int, default=6)
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="svdpipe-latent-bench-") as tmp:
        rows = []
        for scale in (1, 10):
            root = f"{tmp}/x{scale}"
            _build(root, a.clips * scale, a.shard_clips)
            size = sum(f.stat().st_size for f in Path(root).rglob("*") if f.is_file()) / 2**20
            for mode in ("stream", "whole"):
                r = _child(root, mode, a.workers if mode == "stream" else 0)
                rows.append({"scale": scale, "mode": mode, "store_mb": size, **r})
        speed = _speed(f"{tmp}/x1", a.train_steps, a.workers)

    print(f"{'store':>6} {'clips':>6} {'MiB':>6} {'reader':>22} {'samples':>8} {'s':>6} {'peak RSS MiB':>13} "
          f"{'workers MiB':>12}")
    for r in rows:
        reader = f"stream, {a.workers} workers" if r["mode"] == "stream" else "whole store in memory"
        print(f"{r['scale']:>5}x {r['clips']:>6} {r['store_mb']:>6.1f} {reader:>22} {r['samples']:>8} "
              f"{r['seconds']:>6.1f} {r['rss_mb']:>13.0f} "
              f"{(format(r['workers_rss_mb'], '.0f') if r['mode'] == 'stream' else '-'):>12}")
    by = {(r["scale"], r["mode"]): r for r in rows}
    for mode in ("stream", "whole"):
        g = by[(10, mode)]["rss_mb"] / by[(1, mode)]["rss_mb"] - 1
        w = (by[(10, mode)]["workers_rss_mb"] / by[(1, mode)]["workers_rss_mb"] - 1) if mode == "stream" else 0.0
        print(f"{mode}: peak RSS 1x -> 10x {g:+.1%}" + (f", workers {w:+.1%}" if mode == "stream" else ""))
    flat = abs(by[(10, "stream")]["rss_mb"] / by[(1, "stream")]["rss_mb"] - 1) <= 0.15 and abs(
        by[(10, "stream")]["workers_rss_mb"] / by[(1, "stream")]["workers_rss_mb"] - 1) <= 0.15
    print(f"flat within 15 %: {'yes' if flat else 'NO'}")
    t = speed["train_samples_s"]
    print(f"tiny Stage II training: {t:.2f} samples/s ({speed['train_steps_s']:.2f} steps/s of 2 samples)")
    for w, s in speed["loader_samples_s"].items():
        print(f"loader alone, {w} workers: {s:.0f} samples/s = {s / t:.0f}x the training rate")
    if not flat:
        sys.exit(1)


if __name__ == "__main__":
    main()
