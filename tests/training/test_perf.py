"""Throughput settings (training.perf): each leaves the training maths as it is, and each takes effect.

One process trains the tiny video UNet (which has the one-element ``mix_factor`` weights) under real DeepSpeed
ZeRO-2 engines for two steps per setting: equal losses with every setting on and off, and the setting visible
(aligned flat buffer, fused optimizer, NHWC convolution inputs, compiled blocks). torch.distributed state is
process-global, hence one child process for all engines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from svdpipe.config import load_config

from svdpipe.config_schema import PerfConfig
from training.engine import CONFIG_DIR, load_ds_config
from training.perf import ds_config

REPO = Path(__file__).resolve().parents[2]

SCENARIO = r"""
import json, sys, torch
from training.engine import CONFIG_DIR, load_ds_config, make_engine, train_steps
from training.edm import LogNormalSigma
from training.models import build_video_unet
from training.objectives import VideoObjective
from training.perf import compile_blocks, misaligned_parameters, prepare_model, ds_config
from training.synthetic import synthetic_video_batches
from svdpipe.config_schema import PerfConfig

ds = load_ds_config(CONFIG_DIR / "zero2.json", 2, 1, False, warmup_steps=1)
out = {}
for name, kw in json.loads(sys.argv[2]).items():
    backend = kw.pop("backend", None)
    perf = PerfConfig(**kw)
    torch.manual_seed(0)
    model = prepare_model(build_video_unet("tiny"), perf)
    if backend:
        compile_blocks(model, backend=backend)
    engine = make_engine(model, ds_config(ds, perf), 1e-3, seed=0)
    nhwc = []
    hooks = [m.register_forward_hook(lambda m, a, y: nhwc.append(y.is_contiguous(memory_format=torch.channels_last)))
             for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    batches = synthetic_video_batches(2, 0, embed_dim=model.config.cross_attention_dim)
    losses = train_steps(engine, batches, 2, 0, objective=VideoObjective(LogNormalSigma()))
    for h in hooks:
        h.remove()
    opt = engine.optimizer.optimizer
    out[name] = {
        "losses": losses,
        "weights": float(sum(p.double().sum() for p in model.parameters())),
        "misaligned": len(misaligned_parameters(model)),
        "fused": bool(opt.defaults.get("fused")),
        "nhwc_convs": sum(nhwc), "convs": len(nhwc),
        "compiled": sum(getattr(m, "_compiled_call_impl", None) is not None for m in model.modules()),
    }
open(sys.argv[1], "w").write(json.dumps(out))
"""

SETTINGS = {
    "base": {},
    "aligned": {"parameter_alignment": True},
    "fused": {"fused_adamw": True},
    "nhwc": {"channels_last": True, "cudnn_benchmark": True},
    # aot_eager: dynamo's capture and AOTAutograd's joint graph of every block, without inductor's C++ build,
    # which on a shared 2-core box takes minutes; the GPU benchmark compiles with inductor (compile="blocks").
    "compiled": {"backend": "aot_eager"},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("perf")
    env = dict(os.environ)
    for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    script = tmp / "scenario.py"
    script.write_text(SCENARIO)
    out = tmp / "out.json"
    proc = subprocess.run([sys.executable, str(script), str(out), json.dumps(SETTINGS)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def test_alignment_pads_flat_buffer_and_keeps_losses(trained):
    base, aligned = trained["base"], trained["aligned"]
    assert base["misaligned"] > 0  # the mix_factor scalars shift later weights off 16 bytes
    assert aligned["misaligned"] == 0
    assert aligned["losses"] == base["losses"]
    assert aligned["weights"] == base["weights"]


def test_fused_adamw_is_used_and_keeps_losses(trained):
    assert not trained["base"]["fused"] and trained["fused"]["fused"]
    assert trained["fused"]["losses"] == pytest.approx(trained["base"]["losses"], rel=1e-6, abs=0)
    assert trained["fused"]["weights"] == pytest.approx(trained["base"]["weights"], rel=1e-6)


def test_channels_last_runs_every_conv_nhwc_and_keeps_losses(trained):
    base, nhwc = trained["base"], trained["nhwc"]
    assert base["nhwc_convs"] < base["convs"]
    assert nhwc["nhwc_convs"] == nhwc["convs"] > 0
    assert nhwc["losses"] == pytest.approx(base["losses"], rel=1e-5, abs=0)


def test_compiled_blocks_keep_losses(trained):
    assert trained["base"]["compiled"] == 0 and trained["compiled"]["compiled"] > 0
    assert trained["compiled"]["losses"] == pytest.approx(trained["base"]["losses"], rel=1e-5, abs=0)


def test_prepare_model_compiles_each_block_once():
    import torch

    from training.models import build_image_unet
    from training.perf import prepare_model

    model = prepare_model(build_image_unet("tiny"), PerfConfig(compile="blocks", cudnn_benchmark=True))
    compiled = [m for m in model.modules() if getattr(m, "_compiled_call_impl", None) is not None]
    assert len(compiled) == sum(len(b.resnets) + len(getattr(b, "attentions", None) or [])
                                for b in [*model.down_blocks, model.mid_block, *model.up_blocks])
    assert torch.backends.cudnn.benchmark
    with pytest.raises(RuntimeError, match="already"):
        prepare_model(model, PerfConfig())
    torch.backends.cudnn.benchmark = False


def test_ds_config_sets_deepspeed_keys_and_refuses_what_cannot_apply():
    ds = load_ds_config(CONFIG_DIR / "zero2.json", 2, 1, False)
    assert ds_config(ds, PerfConfig()) == ds
    out = ds_config(ds, PerfConfig(parameter_alignment=True, fused_adamw=True, overlap_comm=True))
    assert out["zero_optimization"]["parameter_alignment"] is True
    assert out["zero_optimization"]["overlap_comm"] is True
    assert out["optimizer"]["params"]["fused"] is True
    assert "fused" not in ds["optimizer"]["params"]  # the input is not changed
    zero3 = load_ds_config(CONFIG_DIR / "zero3.json", 2, 1, False)
    with pytest.raises(ValueError, match="ZeRO stages 1 and 2"):
        ds_config(zero3, PerfConfig(parameter_alignment=True))
    with pytest.raises(ValueError, match="torch_adam"):
        ds_config({**ds, "optimizer": {"type": "Lamb", "params": {}}}, PerfConfig(fused_adamw=True))


def test_svd_profile_turns_the_settings_on():
    perf = load_config("svd", environ={}).training.perf
    assert perf.parameter_alignment and perf.fused_adamw and perf.channels_last and perf.cudnn_benchmark
    assert load_config("tiny", environ={}).training.perf == PerfConfig()


def test_gpu_small_profile_builds_small_unets_on_cuda():
    from training.models import build_video_unet, count_parameters

    cfg = load_config("gpu-small", environ={})
    assert cfg.compute.device == "cuda" and cfg.training.model_size == "small"
    assert 2_000_000 < count_parameters(build_video_unet("small", device="meta")) < 200_000_000
