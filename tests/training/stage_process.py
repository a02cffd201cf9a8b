"""Helpers of the tests that start training stage processes, kill them and compare their per-step losses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow

from svdpipe.storage import open_storage
from training.checkpoints import for_stage, tag_step

REPO = Path(__file__).resolve().parents[2]
VARIANT = "uncurated"


def stage_args(root, settings: list[str], stage: int = 1) -> list[str]:
    """The arguments of one tiny stage on ``root`` (after ``-m training.run`` or ``-m training.launch``)."""
    return ["--stage", str(stage), "--variant", VARIANT, "--data-root", str(root), "--profile", "tiny",
            *[a for s in settings for a in ("--set", s)]]


def start(args: list[str], log: Path, *, env: dict | None = None, cwd: Path | None = None) -> subprocess.Popen:
    """``python ARGS`` in a session of its own (killed as a group), output appended to ``log``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)  # a rendezvous of the test's own would leak into the children
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    with open(log, "a") as out:
        return subprocess.Popen([sys.executable, *args], env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL the process and its process group (torchrun's workers, each in a session of its own, die with their
    agent: training.torchrun)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def wait(proc: subprocess.Popen, log: Path, timeout: float = 600) -> None:
    try:
        assert proc.wait(timeout=timeout) == 0, log.read_text()[-3000:]
    finally:
        kill(proc)


def latest_step(root, stage: int = 1) -> int:
    """The step the root's ``latest`` names (-1: none yet), wherever the root is."""
    tag = for_stage(open_storage(str(root)), VARIANT, stage).latest()
    return tag_step(tag) if tag else -1


# The request that writes a checkpoint's ``latest`` pointer (an S3 PUT; s3_gate.S3Gate closes after it).
LATEST_WRITTEN = rb"PUT [^ ]*/latest[ ?]"


def wait_for_checkpoint(root, step: int, procs: list[subprocess.Popen], log: Path, timeout: float = 600,
                        gate=None) -> None:
    """Until ``latest`` names ``step`` or later (the poll may wake after a later one was written). With an S3
    ``gate`` (the run's endpoint) it first waits for the gate to close after the first ``latest``: the run is held
    there, so a kill after this always lands before the run's end. Without one, tests kill at the first checkpoint
    and the steps still to run are their margin against a run that finishes before the kill."""
    deadline = time.time() + timeout
    while gate is not None and not gate.closed.wait(0.2):
        assert all(p.poll() is None for p in procs), log.read_text()[-3000:]
        assert time.time() < deadline, "no checkpoint was written"
    while latest_step(root) < step:
        assert all(p.poll() is None for p in procs), log.read_text()[-3000:]
        assert time.time() < deadline, f"no step-{step} checkpoint appeared"
        time.sleep(0.2)


def losses(tracking_uri: str, stage: int = 1) -> dict[int, float]:
    """Per-step losses of the stage's one MLflow run (a step logged again after a resume: the newer value)."""
    client = mlflow.MlflowClient(tracking_uri)
    (run,) = client.search_runs(client.get_experiment_by_name("svdpipe").experiment_id, f"tags.stage = '{stage}'")
    history = sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.timestamp)
    return {m.step: m.value for m in history}


def assert_same_losses(whole: dict[int, float], resumed: dict[int, float], steps: int) -> None:
    assert sorted(whole) == sorted(resumed) == list(range(1, steps + 1))
    for step in whole:
        assert abs(whole[step] - resumed[step]) <= 1e-5 * max(1.0, abs(whole[step])), (step, whole, resumed)
