"""Exponential moving average of model weights, as SVD trains and releases its EMA weights.

``EMA(module, decay)`` keeps an fp32 shadow copy of every trainable parameter, keyed by parameter name;
``update(module)`` after each optimizer step does ``theta_ema <- d * theta_ema + (1 - d) * theta``.

Decay warm-up (``warmup=True``, off by default) follows sgm's ``LitEma`` (the code SVD was trained with): the
n-th update (n counted from 1) uses ``d_n = min(decay, (1 + n) / (10 + n))``, so the average forgets the random
initialisation within the first few hundred steps instead of over ~1/(1 - decay) steps. The update count is
saved with the weights, so a resumed run continues the same schedule.

ZeRO: under stages 0-2 every rank holds the full parameters and the shadows are read directly. Under ZeRO-3
parameters are partitioned, so reads and writes go through ``deepspeed.zero.GatheredParameters`` in chunks of
at most ``gather_numel`` elements (bounding the extra memory of the gather); every rank then keeps the same
full shadows, and ``update``/``copy_to``/``swapped`` are collective calls that all ranks must make. Full
shadows cost 4 bytes per parameter per rank (6 GB for the 1.5B-parameter SVD UNet; ``device="cpu"`` keeps
them in host memory instead). Saving is not collective: any one rank (by convention rank 0) writes the file.

The shadows follow the *module's* parameters. Under bf16 mixed precision those are the bf16 copies, so the
EMA averages bf16-rounded weights (in fp32); the fp32 master weights live in the optimizer. ``copy_to`` writes
the module parameters only, not the optimizer's master copy: it is for export and evaluation. To evaluate
mid-training, use ``swapped``, which restores the training weights afterwards.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

__all__ = ["EMA"]


def _numel(p: Tensor) -> int:
    # A ZeRO-3 parameter's .numel() is 0 while it is partitioned; ds_numel is its full size.
    return int(getattr(p, "ds_numel", p.numel()))


def _is_zero3(p: Tensor) -> bool:
    return hasattr(p, "ds_id")


class EMA:
    """fp32 moving average of a module's trainable parameters (see the module docstring)."""

    def __init__(
        self,
        module: torch.nn.Module,
        decay: float = 0.9999,
        *,
        warmup: bool = False,
        device: torch.device | str | None = None,
        gather_numel: int = 50_000_000,
    ):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.gather_numel = int(gather_numel)
        self._device = torch.device(device) if device is not None else None
        self.shadow: dict[str, Tensor] = {}
        for chunk in self._gathered(module):
            for name, p in chunk:
                dev = self._device or p.device
                self.shadow[name] = p.detach().to(device=dev, dtype=torch.float32, copy=True)
        if not self.shadow:
            raise ValueError("module has no trainable parameters")

    # -- helpers ------------------------------------------------------------------------------------------

    def _named(self, module: torch.nn.Module, strict_names: bool) -> list[tuple[str, Tensor]]:
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        if strict_names:
            names = {n for n, _ in named}
            if names != set(self.shadow):
                missing, extra = sorted(set(self.shadow) - names), sorted(names - set(self.shadow))
                raise KeyError(
                    f"module does not match the EMA: missing {missing[:5]}, unexpected {extra[:5]}"
                )
        return named

    def _gathered(
        self, module: torch.nn.Module, modifier_rank: int | None = None, strict_names: bool = False
    ) -> Iterator[list[tuple[str, Tensor]]]:
        """Yield the trainable (name, param) pairs in chunks, each fully materialised while it is being used.

        Under ZeRO-3 each chunk is all-gathered on entry and re-partitioned on exit (after broadcasting the
        ``modifier_rank``'s values when given). The chunking depends only on the module, so all ranks issue
        the same collectives in the same order.
        """
        named = self._named(module, strict_names)
        chunk: list[tuple[str, Tensor]] = []
        size = 0
        chunks = []
        for name, p in named:
            if chunk and size + _numel(p) > self.gather_numel:
                chunks.append(chunk)
                chunk, size = [], 0
            chunk.append((name, p))
            size += _numel(p)
        if chunk:
            chunks.append(chunk)
        for chunk in chunks:
            params = [p for _, p in chunk]
            if any(_is_zero3(p) for p in params):
                # Imported only here: a ZeRO-3 parameter means DeepSpeed is already imported and set up.
                import deepspeed

                ctx = deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)
            else:
                ctx = contextlib.nullcontext()
            with ctx, torch.no_grad():
                yield chunk

    def current_decay(self) -> float:
        """Decay the next ``update`` will use."""
        if not self.warmup:
            return self.decay
        n = self.num_updates + 1
        return min(self.decay, (1 + n) / (10 + n))

    # -- public API ---------------------------------------------------------------------------------------

    def update(self, module: torch.nn.Module) -> None:
        """One EMA step from ``module``'s current weights; call after each optimizer step (on every rank)."""
        d = self.current_decay()
        for chunk in self._gathered(module, strict_names=True):
            for name, p in chunk:
                s = self.shadow[name]
                s.lerp_(p.detach().to(device=s.device, dtype=torch.float32), 1.0 - d)
        self.num_updates += 1

    def copy_to(self, module: torch.nn.Module) -> None:
        """Overwrite ``module``'s trainable parameters with the EMA weights (cast to their dtype)."""
        for chunk in self._gathered(module, modifier_rank=0, strict_names=True):
            for name, p in chunk:
                p.data.copy_(self.shadow[name].to(device=p.device, dtype=p.dtype))

    @contextlib.contextmanager
    def swapped(self, module: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """Run the body with the EMA weights loaded into ``module``; the original weights come back after."""
        backup: dict[str, Tensor] = {}
        for chunk in self._gathered(module, strict_names=True):
            for name, p in chunk:
                backup[name] = p.detach().to(device=self.shadow[name].device, copy=True)
        self.copy_to(module)
        try:
            yield module
        finally:
            for chunk in self._gathered(module, modifier_rank=0, strict_names=True):
                for name, p in chunk:
                    p.data.copy_(backup[name].to(p.device))

    def state_dict(self) -> dict[str, Tensor]:
        return {name: t.detach().cpu().contiguous() for name, t in self.shadow.items()}

    def save(self, path: str | Path) -> None:
        """Write the shadows as safetensors (names as in ``module.named_parameters()``), atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"decay": repr(self.decay), "warmup": str(self.warmup), "num_updates": str(self.num_updates)}
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        save_file(self.state_dict(), str(tmp), metadata=meta)
        os.replace(tmp, path)

    def load(self, path: str | Path) -> None:
        """Restore shadows and update count from ``save``'s file; names and shapes must match exactly.

        The decay and warm-up setting stay those given to the constructor (a run may change them on resume).
        """
        from safetensors import safe_open

        tensors = load_file(str(path))
        if set(tensors) != set(self.shadow):
            missing, extra = sorted(set(self.shadow) - set(tensors)), sorted(set(tensors) - set(self.shadow))
            raise KeyError(f"{path} does not match the EMA: missing {missing[:5]}, unexpected {extra[:5]}")
        for name, t in tensors.items():
            if t.shape != self.shadow[name].shape:
                raise ValueError(
                    f"{name}: shape {tuple(t.shape)} in {path}, {tuple(self.shadow[name].shape)} here"
                )
        for name, t in tensors.items():
            self.shadow[name].copy_(t)
        with safe_open(str(path), framework="pt") as f:
            self.num_updates = int((f.metadata() or {}).get("num_updates", 0))
