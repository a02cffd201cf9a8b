"""A training stage process: killed mid-way and started again, it continues and reproduces the uninterrupted run."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow

from svdpipe.config import load_config
from svdpipe.storage import open_storage
from training.latents import build_latents

STEPS = 8
SETTINGS = [f"training.stages.1.steps={STEPS}", "training.checkpoint_every=2", "training.keep_checkpoints=2"]


def _start(root, tmp_path, name):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/{name}.db", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "training.run", "--stage", "1", "--variant", "uncurated", "--data-root", str(root),
           "--profile", "tiny", "--no-progress"] + [a for s in SETTINGS for a in ("--set", s)]
    log = open(tmp_path / f"{name}.log", "a")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True), env


def _losses(tmp_path, name) -> dict[int, float]:
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/{name}.db")
    (run,) = client.search_runs(client.get_experiment_by_name("svdpipe").experiment_id, "tags.stage = '1'")
    return {m.step: m.value for m in sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.timestamp)}


def _wait(proc, tmp_path, name, timeout=600):
    try:
        assert proc.wait(timeout=timeout) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def _latest_step(latest: Path) -> int:
    text = latest.read_text().strip() if latest.is_file() else ""
    return int(text[4:]) if text.startswith("step") and text[4:].isdigit() else -1


def test_killed_stage_resumes_and_matches_uninterrupted_run(curated_copy, tmp_path):
    cfg = load_config("tiny", str(curated_copy), SETTINGS)
    build_latents(open_storage(str(curated_copy)), "uncurated", cfg, progress=False)
    other = tmp_path / "other"
    shutil.copytree(curated_copy, other)

    proc, _ = _start(curated_copy, tmp_path, "whole")
    _wait(proc, tmp_path, "whole")

    proc, _ = _start(other, tmp_path, "killed")
    latest = other / "checkpoints/uncurated/stage1/latest"
    deadline = time.time() + 600
    # Any checkpoint at or after step 4 will do: the poll may wake after a later one was written.
    while _latest_step(latest) < 4:
        assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        assert time.time() < deadline, "no step-4 checkpoint appeared"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    info_key = other / "models/uncurated/stage1/svdpipe_model.json"
    assert not info_key.exists()  # killed before the end: no model yet

    proc, _ = _start(other, tmp_path, "killed")
    _wait(proc, tmp_path, "killed")
    info = json.loads(info_key.read_text())
    assert info["resumed_from"] >= 4 and info["steps"] == STEPS
    whole, resumed = _losses(tmp_path, "whole"), _losses(tmp_path, "killed")
    assert sorted(whole) == sorted(resumed) == list(range(1, STEPS + 1))
    for step in whole:
        assert abs(whole[step] - resumed[step]) <= 1e-5 * max(1.0, abs(whole[step])), (step, whole, resumed)
    # Only the newest checkpoints are kept.
    assert len(list((other / "checkpoints/uncurated/stage1").glob("step*"))) == 2

    # Started again with nothing changed, the stage is up to date and is not retrained.
    proc = subprocess.run([
        sys.executable, "-m", "training.run", "--stage", "1", "--variant", "uncurated", "--data-root", str(other),
        "--no-progress", *[a for s in SETTINGS for a in ("--set", s)]],
        env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/killed.db"}, capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["skipped"] is True
