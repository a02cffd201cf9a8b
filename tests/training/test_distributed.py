"""Data-parallel correctness: 2 ranks reproduce 1 rank with the same global batch (Stage II video objective).

All runs train the tiny video UNet for a few steps from the same seed on the same global batch of 2 samples:

* reference: 1 process, micro-batch 2;
* 1 process, micro-batch 1, gradient accumulation 2;
* ``torchrun --nproc_per_node 2`` (gloo on CPU), ZeRO-2, micro-batch 1;
* ``torchrun --nproc_per_node 2``, ZeRO-3 with every parameter partitioned, micro-batch 1;
* from a latent store, each rank reading only its own samples: 2 processes with a DataLoader worker each,
  micro-batch 1, against 1 process, micro-batch 2.

The engine draws each sample's randomness from a generator seeded by (seed, step, its index in the batch), and
DeepSpeed averages gradients over micro-batches and ranks, so every run computes the same losses, gradients
and updates up to fp32 summation order. Checked per step: the mean loss; at the end: the EMA weights, and for
ZeRO-2 the model weights. Each launch costs a DeepSpeed start-up of several seconds, hence one launch per run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from svdpipe.storage import open_storage
from training.synthetic import synthetic_latent_store

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "infra" / "deepspeed"
STEPS = 4
LR = 1e-3
# Loss moves ~1e-2 per step here; fp32 summation-order noise is ~1e-7 relative.
LOSS_RTOL = 1e-5
COMMON = [
    "--stage", "2",
    "--seed", "11",
    "--lr", str(LR),
    "--warmup-steps", "2",
    "--steps", str(STEPS),
    "--ckpt-every", str(STEPS),
    "--ema-decay", "0.5",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(tmp_path: Path, name: str, nproc: int, *args: str) -> dict:
    t0 = time.perf_counter()
    out, ckpt = tmp_path / f"{name}.json", tmp_path / name
    env = dict(os.environ)
    for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    engine_args = ["-m", "training.scenario", *COMMON, *args, "--ckpt-dir", str(ckpt), "--out", str(out)]
    if nproc == 1:
        cmd = [sys.executable, *engine_args]
    else:
        torchrun = Path(sys.executable).with_name("torchrun")
        cmd = [str(torchrun), "--nproc_per_node", str(nproc), "--master-port", str(free_port()), *engine_args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(out.read_text())
    assert res["world_size"] == nproc and len(res["losses"]) == STEPS
    res["ema"] = load_file(str(ckpt / f"step{STEPS}" / "ema.safetensors"))
    model_states = ckpt / f"step{STEPS}" / "mp_rank_00_model_states.pt"  # ZeRO-3 saves partitions instead
    if model_states.is_file():
        res["module"] = torch.load(model_states, map_location="cpu", weights_only=False)["module"]
    print(f"{name}: {time.perf_counter() - t0:.1f} s")
    return res


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    tmp = tmp_path_factory.mktemp("dist")
    zero3 = json.loads((CONFIGS / "zero3.json").read_text())
    zero3["zero_optimization"]["stage3_param_persistence_threshold"] = 0  # really split every parameter
    (tmp / "zero3_split.json").write_text(json.dumps(zero3))
    store = tmp / "latents"
    synthetic_latent_store(open_storage(str(store)), "store", 10, 3, val_clips=2, frames=3, context=False)
    return {
        "store_1proc_mb2": launch(tmp, "store_1proc_mb2", 1, "--micro-batch", "2", "--latent-store", str(store)),
        "store_2proc_mb1": launch(tmp, "store_2proc_mb1", 2, "--micro-batch", "1", "--latent-store", str(store),
                                  "--loader-workers", "1"),
        "1proc_mb2": launch(tmp, "1proc_mb2", 1, "--micro-batch", "2", "--grad-accum", "1"),
        "1proc_mb1_accum2": launch(tmp, "1proc_mb1_accum2", 1, "--micro-batch", "1", "--grad-accum", "2"),
        "2proc_zero2_mb1": launch(tmp, "2proc_zero2_mb1", 2, "--micro-batch", "1", "--grad-accum", "1"),
        "2proc_zero3_mb1": launch(
            tmp, "2proc_zero3_mb1", 2, "--micro-batch", "1", "--config", str(tmp / "zero3_split.json")
        ),
    }


@pytest.mark.parametrize("name", ["1proc_mb1_accum2", "2proc_zero2_mb1", "2proc_zero3_mb1", "store_2proc_mb1"])
@pytest.mark.slow
def test_same_global_batch_same_training(runs, name):
    """Synthetic global batches sliced per rank, or (store_*) each rank reading only its samples from a latent
    store through DataLoader workers."""
    ref, run = runs["store_1proc_mb2" if name.startswith("store_") else "1proc_mb2"], runs[name]
    assert len(set(ref["losses"])) == STEPS  # training moves, so equal losses mean equal updates
    diffs = [abs(a - b) for a, b in zip(ref["losses"], run["losses"])]
    print(f"{name}: max |loss diff| vs 1proc_mb2 = {max(diffs):.3e} over {STEPS} steps")
    for a, b in zip(ref["losses"], run["losses"]):
        assert abs(a - b) <= LOSS_RTOL * abs(a), (ref["losses"], run["losses"])

    # Weights: compared as whole vectors. Element-wise equality is not expected: parameters whose gradient is
    # zero in exact arithmetic (e.g. a conv bias feeding a GroupNorm) get fp32 rounding noise as gradient, and
    # Adam's normalised step turns that noise into an update of up to +-lr, with a summation-order-dependent
    # sign. Those few elements bound the max difference by lr * steps; the rest agree to fp32 precision.
    for key in ("ema", "module"):
        if key not in run:  # ZeRO-3 checkpoints hold partitions, not the full module
            continue
        assert set(run[key]) == set(ref[key])
        a = torch.cat([ref[key][k].flatten().float() for k in sorted(ref[key])])
        b = torch.cat([run[key][k].flatten().float() for k in sorted(ref[key])])
        rel, worst = float((a - b).norm() / a.norm()), float((a - b).abs().max())
        print(f"{name}: {key} weights: relative L2 diff {rel:.2e}, max |diff| {worst:.2e}")
        assert rel < 1e-4 and worst <= LR * STEPS, (key, rel, worst)
