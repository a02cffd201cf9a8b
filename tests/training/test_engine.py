"""DeepSpeed engine: exact resume (model, optimizer, scheduler and EMA) and ZeRO-3 start-up, on CPU.

Each scenario runs in its own ``python -m training.scenario`` process: torch.distributed and DeepSpeed keep
process-global state, and a resume is only meaningful from a fresh process (new model, new engine, new RNG).
Both the Stage I (tiny image UNet) and Stage II (tiny video UNet) objectives are covered.
`make setup` builds DeepSpeed's shared-memory comm op once; every process builds it with the same ninja.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "infra" / "deepspeed"
# Small warm-up and accumulation > 1 so scheduler state and micro-batch splitting both affect the losses.
COMMON = ["--seed", "3", "--lr", "1e-3", "--micro-batch", "2", "--grad-accum", "2", "--warmup-steps", "2"]
# Warm-up on, so the restored update count matters: decays 2/11, 3/12, then 0.3 from the third update.
EMA_DECAY = 0.3
EMA_ARGS = ["--ema-decay", str(EMA_DECAY), "--ema-warmup"]


def ema_decay(n: int) -> float:
    return min(EMA_DECAY, (1 + n) / (10 + n))


def ema_at(ckpt: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt / f"step{step}" / "ema.safetensors"))


def weights_at(ckpt: Path, step: int) -> dict[str, torch.Tensor]:
    state = torch.load(
        ckpt / f"step{step}" / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False
    )
    return state["module"]


def run_engine(tmp_path: Path, name: str, *args: str) -> dict:
    out = tmp_path / f"{name}.json"
    env = dict(os.environ)
    # Fresh port chosen inside the child; drop any inherited rendezvous so runs cannot collide.
    for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "training.scenario", *COMMON, *args, "--out", str(out)],
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


@pytest.mark.parametrize("stage", ["1", "2"])
@pytest.mark.slow
def test_resume_matches_uninterrupted_run(tmp_path, stage):
    run = ["--stage", stage, *EMA_ARGS]
    full_ckpt = tmp_path / "full"
    full = run_engine(
        tmp_path, "full", *run, "--steps", "6", "--ckpt-every", "1", "--ckpt-dir", str(full_ckpt)
    )
    # The run is "stopped" after step 3: a fresh process resumes from a folder holding only that checkpoint (the
    # uninterrupted run wrote it, so the first 3 losses are the same by construction).
    ckpt = tmp_path / "split"
    shutil.copytree(full_ckpt / "step3", ckpt / "step3")
    (ckpt / "latest").write_text("step3")
    second = run_engine(
        tmp_path, "second", *run, "--steps", "3", "--ckpt-every", "3", "--ckpt-dir", str(ckpt), "--resume"
    )

    assert second["start_step"] == 3
    assert (ckpt / "latest").read_text().strip() == "step6"
    resumed = full["losses"][:3] + second["losses"]
    assert len(full["losses"]) == len(resumed) == 6
    for a, b in zip(full["losses"], resumed):
        assert math.isfinite(a)
        assert abs(a - b) <= 1e-6 * abs(a), (full["losses"], resumed)
    # The losses must actually move, or equality would say nothing about restored optimizer state.
    assert len(set(full["losses"])) == 6

    # EMA: bit-identical after 6 uninterrupted steps and after 3 + resumed 3.
    ema_full, ema_split = ema_at(full_ckpt, 6), ema_at(ckpt, 6)
    assert set(ema_full) == set(ema_split)
    for name, t in ema_full.items():
        assert t.dtype == torch.float32
        assert torch.equal(t, ema_split[name]), name
    # ... and it is the EMA of the weights after each optimizer step (checked on the per-step checkpoints).
    for n in range(4, 7):
        theta, prev, cur = weights_at(full_ckpt, n), ema_at(full_ckpt, n - 1), ema_at(full_ckpt, n)
        d = ema_decay(n)
        for name, t in cur.items():
            torch.testing.assert_close(t, d * prev[name] + (1 - d) * theta[name], rtol=1e-5, atol=1e-6)
    theta = weights_at(full_ckpt, 6)
    assert any(not torch.equal(t, theta[name]) for name, t in ema_full.items())


@pytest.mark.slow
def test_zero3_initialises_and_steps(tmp_path):
    res = run_engine(
        tmp_path,
        "zero3",
        "--config", str(CONFIGS / "zero3.json"),
        "--steps", "1",
        "--ckpt-every", "1",
        *EMA_ARGS,
        "--ckpt-dir", str(tmp_path / "z3"),
    )  # fmt: skip
    assert len(res["losses"]) == 1 and math.isfinite(res["losses"][0])
    assert (tmp_path / "z3" / "latest").read_text().strip() == "step1"
    assert (tmp_path / "z3" / "step1" / "ema.safetensors").is_file()


def test_bf16_accumulates_and_reduces_in_fp32_and_exports_the_fp32_master_weights(tmp_path):
    """A real bf16 DeepSpeed engine on the CPU: gradients accumulate and reduce in fp32, and the export holds the
    optimizer's fp32 master weights exactly (read back independently from the ZeRO checkpoint), not the bf16
    working copies."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    for name in ("zero2.json", "zero3.json"):
        cfg = json.loads((CONFIGS / name).read_text())
        assert cfg["data_types"]["grad_accum_dtype"] == "fp32" and cfg["communication_data_type"] == "fp32"
    ckpt, export = tmp_path / "ckpt", tmp_path / "export"
    # COMMON warms up over 2 steps (lr 0 on the first): 3 steps move the master weights off the bf16 grid.
    res = run_engine(tmp_path, "bf16", "--bf16", "--steps", "3", "--ckpt-every", "3", "--ckpt-dir", str(ckpt),
                     "--export", str(export))
    assert res["model_dtype"] == "torch.bfloat16"
    assert res["grad_accum_dtype"] == res["optimizer_grad_accum_dtype"] == "torch.float32"
    assert res["communication_data_type"] == "torch.float32"

    exported = load_file(str(export / "diffusion_pytorch_model.safetensors"))
    master = get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag="step3")
    working = weights_at(ckpt, 3)
    assert set(exported) == set(master)
    for name, t in exported.items():
        assert t.dtype == torch.float32 and torch.equal(t, master[name].float()), name
    assert working["conv_in.weight"].dtype == torch.bfloat16
    assert sum(not torch.equal(t, working[name].float()) for name, t in exported.items()) > len(exported) // 2


def test_deepspeed_builds_with_this_environments_ninja_whatever_path_a_process_got(monkeypatch):
    """A process whose PATH finds a system ninja first (or the venv's later) still builds DeepSpeed's op with
    the environment's own, so no process takes another's build as stale."""
    import shutil as sh

    from training.engine import environment_ninja_first

    own = Path(sys.executable).parent
    assert (own / "ninja").is_file(), "ninja is a DeepSpeed requirement: make setup installs it in the venv"
    for path in ("/usr/bin:/bin", f"/usr/bin:{own}:/bin", f"{own}:/usr/bin"):
        monkeypatch.setenv("PATH", path)
        environment_ninja_first()
        assert sh.which("ninja") == str(own / "ninja")
        assert os.environ["PATH"].split(os.pathsep).count(str(own)) == 1
