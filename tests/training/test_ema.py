"""EMA of weights: the update rule, warm-up, swap/restore, safetensors round trip, and ZeRO-3 partitioning.

The ZeRO-3 case runs a real 2-process DeepSpeed job (torchrun, gloo on CPU) with a persistence threshold of
0, so every parameter is genuinely split between the ranks, and checks the EMA against a reference average
of the gathered weights computed independently after every optimizer step.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training.ema import EMA

REPO = Path(__file__).resolve().parents[2]


def small_module() -> torch.nn.Module:
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    m[1].weight.requires_grad_(False)  # frozen: not averaged
    return m


def perturb(m: torch.nn.Module, scale: float = 1.0) -> None:
    with torch.no_grad():
        for p in m.parameters():
            p.add_(scale * torch.randn_like(p))


def test_update_rule_and_trainable_only():
    m = small_module()
    ema = EMA(m, decay=0.9)
    assert set(ema.shadow) == {n for n, p in m.named_parameters() if p.requires_grad}
    assert "1.weight" not in ema.shadow
    expected = {n: p.detach().clone() for n, p in m.named_parameters() if p.requires_grad}
    for _ in range(3):
        perturb(m)
        ema.update(m)
        for n, p in m.named_parameters():
            if p.requires_grad:
                expected[n] = 0.9 * expected[n] + 0.1 * p.detach()
    assert ema.num_updates == 3
    for n, t in expected.items():
        torch.testing.assert_close(ema.shadow[n], t, rtol=1e-6, atol=1e-7)
    # The shadows are copies, not views of the parameters.
    assert all(ema.shadow[n].data_ptr() != p.data_ptr() for n, p in m.named_parameters() if p.requires_grad)


def test_decay_warmup_schedule():
    m = small_module()
    ema = EMA(m, decay=0.3, warmup=True)
    seen = []
    for _ in range(4):
        seen.append(ema.current_decay())
        ema.update(m)
    assert seen == pytest.approx([2 / 11, 3 / 12, 0.3, 0.3])
    assert EMA(m, decay=0.3).current_decay() == 0.3


def test_bf16_module_gets_fp32_shadows():
    m = small_module().to(torch.bfloat16)
    ema = EMA(m, decay=0.99)
    assert all(t.dtype == torch.float32 for t in ema.shadow.values())
    perturb(m)
    ema.update(m)
    ema.copy_to(m)
    assert all(p.dtype == torch.bfloat16 for p in m.parameters())


def test_swapped_restores_and_copy_to_overwrites():
    m = small_module()
    ema = EMA(m, decay=0.0)  # decay 0: the EMA is exactly the weights of the last update
    perturb(m)
    ema.update(m)
    ema_weights = {n: t.clone() for n, t in ema.shadow.items()}
    perturb(m)
    train = {n: p.detach().clone() for n, p in m.named_parameters()}
    x = torch.randn(5, 3)
    with ema.swapped(m) as inner:
        assert inner is m
        for n, p in m.named_parameters():
            assert torch.equal(p, ema_weights.get(n, train[n]))  # frozen params untouched
        y_ema = m(x)
    for n, p in m.named_parameters():
        assert torch.equal(p, train[n])
    # Restores also when the body fails.
    with pytest.raises(RuntimeError, match="boom"), ema.swapped(m):
        raise RuntimeError("boom")
    assert all(torch.equal(p, train[n]) for n, p in m.named_parameters())

    ema.copy_to(m)
    torch.testing.assert_close(m(x), y_ema, rtol=0, atol=0)
    assert all(torch.equal(p, ema_weights[n]) for n, p in m.named_parameters() if p.requires_grad)


def test_save_load_round_trip(tmp_path):
    m = small_module()
    ema = EMA(m, decay=0.7, warmup=True)
    for _ in range(5):
        perturb(m)
        ema.update(m)
    path = tmp_path / "sub" / "ema.safetensors"
    ema.save(path)
    assert set(load_file(str(path))) == set(ema.shadow)
    assert [p.name for p in path.parent.iterdir()] == ["ema.safetensors"]  # no temp file left behind

    other = EMA(small_module(), decay=0.7, warmup=True)
    other.load(path)
    assert other.num_updates == 5 and other.current_decay() == ema.current_decay()
    assert all(torch.equal(other.shadow[n], t) for n, t in ema.shadow.items())

    wrong = EMA(torch.nn.Linear(3, 4), decay=0.7)
    with pytest.raises(KeyError):
        wrong.load(path)
    with pytest.raises(KeyError):
        ema.update(torch.nn.Linear(3, 4))


ZERO3_SCENARIO = r"""
import json, sys
from pathlib import Path

import torch

from training.engine import CONFIG_DIR, load_ds_config, make_engine, seed_everything, train_steps  # 1st: sets DS_ACCELERATOR
import deepspeed
from training.ema import EMA
from training.models import build_image_unet
from training.objectives import ImageObjective
from training.edm import LogNormalSigma
from training.synthetic import synthetic_image_batches

out = Path(sys.argv[1])
seed_everything(5)
model = build_image_unet("tiny")
cfg = load_ds_config(CONFIG_DIR / "zero3.json", micro_batch=1, grad_accum=1, bf16=False, warmup_steps=1)
cfg["zero_optimization"]["stage3_param_persistence_threshold"] = 0  # partition every parameter
engine = make_engine(model, cfg, lr=1e-2, seed=5)
rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
module = engine.module
trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
checks = {"world": world}

# Every parameter is partitioned: no full tensor outside a gather, each rank holds a share.
checks["partitioned"] = all(p.numel() == 0 for _, p in trainable) and all(
    p.ds_tensor.numel() < p.ds_numel for _, p in trainable if p.ds_numel >= world
)

def full_params():
    with deepspeed.zero.GatheredParameters([p for _, p in trainable]):
        return {n: p.detach().clone() for n, p in trainable}

decay = 0.8
ema = EMA(module, decay, gather_numel=20_000)  # small chunks: several gathers per call
ref = full_params()
checks["init_equal"] = all(torch.equal(ema.shadow[n], t) for n, t in ref.items())

def on_step(_):
    for n, t in full_params().items():
        ref[n].lerp_(t, 1 - decay)

width = module.config.cross_attention_dim
batches = synthetic_image_batches(world, 5, context_dim=width)
losses = train_steps(engine, batches, 3, objective=ImageObjective(LogNormalSigma()), ema=ema, on_step=on_step)
train = full_params()
checks["ema_matches_reference"] = all(torch.equal(ema.shadow[n], t) for n, t in ref.items())
checks["ema_differs_from_weights"] = any(not torch.equal(ema.shadow[n], t) for n, t in train.items())

with ema.swapped(module):
    checks["swapped_loads_ema"] = all(torch.equal(ema.shadow[n], t) for n, t in full_params().items())
    checks["still_partitioned"] = all(p.numel() == 0 for _, p in trainable)
checks["swap_restores"] = all(torch.equal(train[n], t) for n, t in full_params().items())

# Training continues from the restored weights on every rank: one more step works and moves the EMA.
before = {n: t.clone() for n, t in ema.shadow.items()}
losses += train_steps(engine, batches, 1, 3, objective=ImageObjective(LogNormalSigma()), ema=ema)
checks["fourth_step_moves_ema"] = any(not torch.equal(before[n], t) for n, t in ema.shadow.items())

ema.copy_to(module)
checks["copy_to"] = all(torch.equal(ema.shadow[n], t) for n, t in full_params().items())

# Export path: save on rank 0, load on every rank, copy into a plain (non-ZeRO) model.
path = out.parent / "ema.safetensors"
if rank == 0:
    ema.save(path)
torch.distributed.barrier()
fresh = EMA(module, decay)
fresh.load(path)
checks["load_round_trip"] = fresh.num_updates == 4 and all(
    torch.equal(fresh.shadow[n], t) for n, t in ema.shadow.items()
)
plain = build_image_unet("tiny")
ema.copy_to(plain)
checks["copy_to_plain"] = all(torch.equal(ema.shadow[n], p) for n, p in plain.named_parameters())
checks["losses"] = losses
if rank == 0:
    out.write_text(json.dumps(checks))
torch.distributed.destroy_process_group()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_zero3_two_ranks_partitioned(tmp_path):
    script = tmp_path / "zero3_ema.py"
    script.write_text(ZERO3_SCENARIO)
    out = tmp_path / "checks.json"
    env = dict(os.environ)
    for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master-port", str(free_port()), str(script), str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    checks = json.loads(out.read_text())
    losses = checks.pop("losses")
    assert checks.pop("world") == 2
    assert all(checks.values()), checks
    assert len(losses) == 4 and all(map(lambda v: v == v, losses))
