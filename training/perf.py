"""Throughput settings of the training step (``training.perf``): the same maths, set up so a GPU runs it faster.

Two entry points, used by ``training.run`` and ``benchmarks/train_throughput.py`` alike:

- ``prepare_model(model, perf)`` before the model goes into DeepSpeed: cuDNN autotuning, NHWC convolution inputs
  (``channels_last``) and regional ``torch.compile`` (each res-block and transformer of the UNet on its own, which
  compiles in a fraction of the time the whole 1.5B-parameter UNet takes, and reuses one graph for blocks of equal
  shape).
- ``ds_config(ds, perf)`` on the DeepSpeed config: 16-byte parameter alignment in ZeRO-1/2's flat weight buffer,
  torch's fused AdamW and overlapped gradient reduction.

Why alignment: ZeRO-1/2 packs every bf16 weight into one flat buffer and makes each parameter a view into it. The
video UNet has one-element ``mix_factor`` weights (the learned blend of spatial and temporal paths); each one moves
every later weight by 2 bytes, off the 16-byte alignment that cuBLAS's Hopper (TMA/wgmma) GEMM kernels need, so it
falls back to Turing-generation ``cutlass_75 ... s1688gemm`` kernels. DeepSpeed 0.19's
``zero_optimization.parameter_alignment`` pads between parameters; ``misaligned_parameters`` checks the result.

Why channels_last is a hook on the convolutions rather than weights in NHWC: ZeRO-1/2 replaces every weight by a
contiguous view of its flat buffer, so a weight's own memory format does not survive ``deepspeed.initialize``.
A convolution whose input is NHWC runs cuDNN's NHWC kernels whatever the weight's format.
"""

from __future__ import annotations

import copy

import torch

from svdpipe.config_schema import PerfConfig

__all__ = ["compile_blocks", "ds_config", "misaligned_parameters", "prepare_model"]

ALIGN_BYTES = 16  # what cuBLAS(Lt)'s TMA-based kernels require of every operand's start address


def _nhwc_input(module: torch.nn.Module, args: tuple):
    x = args[0]
    if isinstance(x, torch.Tensor) and x.dim() == 4:
        return (x.contiguous(memory_format=torch.channels_last), *args[1:])
    return None


def compile_blocks(model: torch.nn.Module, **compile_kwargs) -> int:
    """``torch.compile`` every res-block and transformer of a diffusers UNet in place; returns how many.

    In place (``Module.compile``) keeps parameter names and the module tree, so DeepSpeed, checkpoints and
    ``save_pretrained`` see the same model. The down/up-samplers and embeddings stay eager: they are a few kernels.
    """
    blocks = [*getattr(model, "down_blocks", []), getattr(model, "mid_block", None), *getattr(model, "up_blocks", [])]
    n = 0
    for block in blocks:
        for name in ("resnets", "attentions"):
            for module in getattr(block, name, None) or []:
                module.compile(**compile_kwargs)
                n += 1
    if n == 0:
        raise ValueError(f"{type(model).__name__} has no down/mid/up blocks with resnets or attentions to compile")
    return n


def prepare_model(model: torch.nn.Module, perf: PerfConfig) -> torch.nn.Module:
    """Apply the model-side settings of ``perf`` (in place; call once, before ``make_engine``) and return the model."""
    torch.backends.cudnn.benchmark = perf.cudnn_benchmark
    if getattr(model, "_svdpipe_perf", None) is not None:
        raise RuntimeError("prepare_model was already applied to this model")
    if perf.channels_last:
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.register_forward_pre_hook(_nhwc_input)
    if perf.compile == "blocks":
        compile_blocks(model)
    model._svdpipe_perf = perf
    return model


def ds_config(ds: dict, perf: PerfConfig) -> dict:
    """A copy of the DeepSpeed config ``ds`` with the optimizer- and ZeRO-side settings of ``perf``."""
    cfg = copy.deepcopy(ds)
    zero = cfg.setdefault("zero_optimization", {})
    if perf.parameter_alignment:
        if zero.get("stage", 0) not in (1, 2):
            raise ValueError("training.perf.parameter_alignment applies to ZeRO stages 1 and 2 (flat weight buffer); "
                             f"this DeepSpeed config uses stage {zero.get('stage', 0)}")
        zero["parameter_alignment"] = True
    if perf.overlap_comm:
        zero["overlap_comm"] = True
    if perf.fused_adamw:
        opt = cfg.get("optimizer", {})
        params = opt.get("params", {})
        if opt.get("type") not in ("Adam", "AdamW") or not params.get("torch_adam"):
            raise ValueError("training.perf.fused_adamw needs the DeepSpeed config's optimizer to be torch's "
                             '(optimizer.type "AdamW" with params.torch_adam true)')
        params["fused"] = True  # DeepSpeed passes unknown params on to torch.optim.AdamW
    return cfg


def misaligned_parameters(model: torch.nn.Module, align_bytes: int = ALIGN_BYTES) -> list[str]:
    """Names of the parameters whose data does not start on an ``align_bytes`` boundary."""
    return [n for n, p in model.named_parameters() if p.numel() and p.data_ptr() % align_bytes]
