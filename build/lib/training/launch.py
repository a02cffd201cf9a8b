"""The command that starts a training stage: plain ``python -m training.run``, or ``torchrun`` for several processes.

The Dagster asset, the CLI and DVC all start stages through this one function, so the same entry point runs on
one CPU, one GPU, several GPUs (``training.nproc``) or several nodes (``nnodes``/``rdzv``, or DeepSpeed's
launcher with ``infra/deepspeed/hostfile.example``; see docs/deployment.md).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["command"]


def command(
    stage: int,
    variant: str,
    *,
    profile: str | None = None,
    data_root: str | None = None,
    params_file: str | None = None,
    overrides: Sequence[str] = (),
    nproc: int = 1,
    nnodes: int = 1,
    rdzv_endpoint: str | None = None,
    force: bool = False,
    python: str = sys.executable,
) -> list[str]:
    args = ["-m", "training.run", "--stage", str(stage), "--variant", variant]
    for flag, value in (("--profile", profile), ("--data-root", data_root), ("--params", params_file)):
        if value:
            args += [flag, str(value)]
    for o in overrides:
        args += ["--set", o]
    if force:
        args.append("--force")
    if nproc == 1 and nnodes == 1:
        return [python, *args]
    launcher = [python, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--nnodes={nnodes}"]
    if nnodes == 1:
        launcher.append("--standalone")
    else:
        if not rdzv_endpoint:
            raise ValueError("several nodes need a rendezvous endpoint (host:port of the first node)")
        launcher += ["--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}"]
    return [*launcher, *args]
