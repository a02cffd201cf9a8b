"""Reduced precision on the CPU: whether this CPU has the instructions for it, and a warning where it has not.

``compute.dtype`` rounds the inference networks (curation's scorers, training's samplers and evaluation). On the CPU,
oneDNN runs bfloat16 in hardware where the CPU has AVX-512 BF16 or AMX-BF16, and float16 where it has AVX-512 FP16
or AMX-FP16; elsewhere it emulates them, slower than float32. Where it has them, bfloat16 runs CRAFT about twice
as fast as float32 (README, curation throughput).
"""

from __future__ import annotations

import warnings

import torch

# dtype -> (the instructions oneDNN needs for it, oneDNN's probe of this CPU)
_NATIVE = {
    "bfloat16": ("AVX-512 BF16 or AMX-BF16", torch.ops.mkldnn._is_mkldnn_bf16_supported),
    "float16": ("AVX-512 FP16 or AMX-FP16", torch.ops.mkldnn._is_mkldnn_fp16_supported),
}


def cpu_has_native(dtype: str) -> bool:
    """Whether this CPU runs ``dtype`` in hardware (float32 always)."""
    return dtype not in _NATIVE or bool(_NATIVE[dtype][1]())


def warn_if_emulated(device_type: str, dtype: str) -> None:
    """A warning when networks would run in ``dtype`` on a CPU that only emulates it."""
    if device_type == "cpu" and not cpu_has_native(dtype):
        warnings.warn(f"compute.dtype={dtype} on a CPU without {dtype} instructions ({_NATIVE[dtype][0]}): the "
                      "networks run emulated, slower than float32; set compute.dtype=float32", RuntimeWarning,
                      stacklevel=3)
