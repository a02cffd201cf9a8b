"""The command that starts a training stage: plain ``python -m training.run``, or torchrun (``training.torchrun``) for
several processes.

The Dagster asset, the CLI and DVC all start stages through this one function, so the same entry point runs on
one CPU, one GPU, several GPUs (``training.nproc``) or several nodes (``training.nnodes``, ``rdzv_endpoint``,
``rdzv_backend``, ``node_rank``; or DeepSpeed's launcher with ``infra/deepspeed/hostfile.example``; see
docs/deployment.md). On the other nodes of a multi-node job, ``python -m training.launch`` starts the same stage
command from the same configuration:

    python -m training.launch --stage 2 --variant svd --data-root s3://bucket/root [--dry-run] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from svdpipe.config_schema import SvdpipeConfig

__all__ = ["command", "for_config", "main", "rdzv_id"]


def rdzv_id(data_root: str, variant: str, stage: int) -> str:
    """The rendezvous id of one stage: the same on every node without a word between them, and apart from every
    other stage or data root that may use the same endpoint."""
    return f"svdpipe-{variant}-stage{stage}-{hashlib.sha1(str(data_root).encode()).hexdigest()[:10]}"


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
    rdzv_backend: str = "c10d",
    node_rank: int = 0,
    job_id: str | None = None,
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
    # torchrun's agent, dying with the process that starts it (svdpipe.processes); it takes torchrun's flags.
    launcher = [python, "-m", "training.torchrun", f"--nproc-per-node={nproc}", f"--nnodes={nnodes}"]
    if nnodes == 1:
        launcher.append("--standalone")
    else:
        if not rdzv_endpoint:
            raise ValueError("several nodes need a rendezvous endpoint (host:port of the first node)")
        launcher += [f"--rdzv-backend={rdzv_backend}", f"--rdzv-endpoint={rdzv_endpoint}"]
        if rdzv_backend == "static":
            launcher.append(f"--node-rank={node_rank}")  # c10d assigns node ranks itself (torchrun ignores it)
        if job_id:
            launcher.append(f"--rdzv-id={job_id}")
    return [*launcher, *args]


def for_config(cfg: SvdpipeConfig, stage: int, variant: str, **sources) -> list[str]:
    """``command`` with the processes and nodes of ``cfg.training`` (``sources``: profile, data_root, params_file,
    overrides, force, as the stage process should resolve its configuration)."""
    t = cfg.training
    return command(stage, variant, nproc=t.nproc, nnodes=t.nnodes, rdzv_endpoint=t.rdzv_endpoint,
                   rdzv_backend=t.rdzv_backend, node_rank=t.node_rank,
                   job_id=rdzv_id(cfg.data_root, variant, stage), **sources)


def main(argv: list[str] | None = None) -> None:
    from svdpipe.config import load_config
    from svdpipe.processes import die_with_parent

    die_with_parent()  # kept across the exec below: the stage started from here stops with this launcher's parent

    p = argparse.ArgumentParser(description="Start one svdpipe training stage on this node (torchrun when "
                                "training.nproc or training.nnodes > 1).")
    p.add_argument("--stage", type=int, choices=(1, 2, 3), required=True)
    p.add_argument("--variant", required=True)
    p.add_argument("--data-root", default=None)
    p.add_argument("--profile", default=None)
    p.add_argument("--params", default=None, help="YAML overlay (e.g. params.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="section.field=value")
    p.add_argument("--force", action="store_true", help="retrain even if the stage's model is up to date")
    p.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    a = p.parse_args(argv)
    cfg = load_config(a.profile, a.data_root, a.overrides, params_file=a.params)
    cmd = for_config(cfg, a.stage, a.variant, profile=cfg.profile, data_root=cfg.data_root,
                     params_file=a.params, overrides=a.overrides, force=a.force)
    if a.dry_run:
        print(" ".join(cmd))
        return
    sys.stdout.flush()
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
