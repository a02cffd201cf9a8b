"""DeepSpeed engine: exact resume and ZeRO-3 start-up, on CPU with the tiny image UNet.

Each scenario runs in its own ``python -m training.engine`` process: torch.distributed and DeepSpeed keep
process-global state, and a resume is only meaningful from a fresh process (new model, new engine, new RNG).
The first DeepSpeed start on a machine JIT-builds its shared-memory comm op (~1 min, then cached).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "infra" / "deepspeed"
# Small warm-up and accumulation > 1 so scheduler state and micro-batch splitting both affect the losses.
COMMON = ["--seed", "3", "--lr", "1e-3", "--micro-batch", "2", "--grad-accum", "2", "--warmup-steps", "2"]


def run_engine(tmp_path: Path, name: str, *args: str) -> dict:
    out = tmp_path / f"{name}.json"
    env = dict(os.environ)
    # Fresh port chosen inside the child; drop any inherited rendezvous so runs cannot collide.
    for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "training.engine", *COMMON, *args, "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,  # the assert below shows the child's stderr instead of a bare CalledProcessError
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def test_configs_load_and_adjust():
    from training.engine import load_ds_config

    for name, stage in (("zero2.json", 2), ("zero3.json", 3)):
        cfg = load_ds_config(
            CONFIGS / name, micro_batch=3, grad_accum=4, bf16=False, world_size=2, warmup_steps=5
        )
        assert cfg["zero_optimization"]["stage"] == stage
        assert cfg["train_batch_size"] == 24
        assert cfg["bf16"] == {"enabled": False} and "fp16" not in cfg
        assert cfg["optimizer"]["type"] == "AdamW"
        assert cfg["scheduler"]["type"] == "WarmupLR"
        assert cfg["scheduler"]["params"]["warmup_num_steps"] == 5
        assert cfg["gradient_clipping"] > 0
    with pytest.raises(ValueError):
        load_ds_config(CONFIGS / "zero2.json", micro_batch=0, grad_accum=1, bf16=False)


def test_resume_matches_uninterrupted_run(tmp_path):
    full = run_engine(
        tmp_path, "full", "--steps", "6", "--ckpt-every", "3", "--ckpt-dir", str(tmp_path / "full")
    )
    ckpt = tmp_path / "split"
    first = run_engine(tmp_path, "first", "--steps", "3", "--ckpt-every", "3", "--ckpt-dir", str(ckpt))
    assert (ckpt / "latest").read_text().strip() == "step3"
    second = run_engine(
        tmp_path, "second", "--steps", "3", "--ckpt-every", "3", "--ckpt-dir", str(ckpt), "--resume"
    )

    assert second["start_step"] == 3
    assert (ckpt / "latest").read_text().strip() == "step6"
    resumed = first["losses"] + second["losses"]
    assert len(full["losses"]) == len(resumed) == 6
    for a, b in zip(full["losses"], resumed):
        assert math.isfinite(a)
        assert abs(a - b) <= 1e-6 * abs(a), (full["losses"], resumed)
    # The losses must actually move, or equality would say nothing about restored optimizer state.
    assert len(set(full["losses"])) == 6


def test_zero3_initialises_and_steps(tmp_path):
    res = run_engine(
        tmp_path,
        "zero3",
        "--config", str(CONFIGS / "zero3.json"),
        "--steps", "1",
        "--ckpt-every", "1",
        "--ckpt-dir", str(tmp_path / "z3"),
    )  # fmt: skip
    assert len(res["losses"]) == 1 and math.isfinite(res["losses"][0])
    assert (tmp_path / "z3" / "latest").read_text().strip() == "step1"
