"""Where networks run: one device setting (``compute.device``) and inputs moved to the network where it is used.

``resolve_device`` turns the setting into a device (``auto``: CUDA when present, else CPU); ``inference_dtype``
is ``compute.dtype`` as a torch dtype (training keeps its own precision: bf16 on CUDA, fp32 master weights).
``to_model`` moves a tensor to a network's device and dtype, so a caller may hand any network fp32 CPU tensors
and a bf16 GPU model still gets what its kernels take.
"""

from __future__ import annotations

import torch
from torch import Tensor

from svdpipe.config_schema import SvdpipeConfig
from svdpipe.precision import warn_if_emulated

__all__ = ["inference_dtype", "model_device_dtype", "resolve_device", "to_model"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(cfg: SvdpipeConfig | str) -> torch.device:
    """``compute.device`` as a device: ``auto`` is CUDA when present, else CPU; asking for CUDA without it fails."""
    name = cfg if isinstance(cfg, str) else cfg.compute.device
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"compute.device={name!r} is not a device: use auto, cpu, cuda or cuda:N") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"compute.device={name!r} but CUDA is not available here: set compute.device=auto or cpu")
    return device


def inference_dtype(cfg: SvdpipeConfig) -> torch.dtype:
    """``compute.dtype`` as a torch dtype (with a warning where the CPU that runs it only emulates it)."""
    warn_if_emulated(resolve_device(cfg).type, cfg.compute.dtype)
    return _DTYPES[cfg.compute.dtype]


def model_device_dtype(model) -> tuple[torch.device, torch.dtype] | None:
    """Device and dtype of a network's first floating-point parameter (None for a plain function)."""
    params = getattr(model, "parameters", None)
    if params is None:
        return None
    for p in params():
        if p.is_floating_point():
            return p.device, p.dtype
    return None


def to_model(x: Tensor, model) -> Tensor:
    """``x`` on ``model``'s device, floating-point tensors also in its dtype; integers keep theirs."""
    where = model_device_dtype(model)
    if where is None:
        return x
    device, dtype = where
    return x.to(device=device, dtype=dtype) if x.is_floating_point() else x.to(device)
