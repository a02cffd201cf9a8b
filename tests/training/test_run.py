"""A training stage process: killed mid-way and started again, it continues and reproduces the uninterrupted run."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from stage_process import assert_same_losses, kill, losses, stage_args, start, wait, wait_for_checkpoint
from svdpipe.config import load_config
from svdpipe.storage import open_storage
from training.latents import build_latents

STEPS = 8
SETTINGS = [f"training.stages.1.steps={STEPS}", "training.checkpoint_every=2", "training.keep_checkpoints=2"]


def _start(root, tmp_path, name):
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/{name}.db"}
    return start(["-m", "training.run", *stage_args(root, SETTINGS), "--no-progress"], tmp_path / f"{name}.log",
                 env=env)


@pytest.mark.slow
def test_killed_stage_resumes_and_matches_uninterrupted_run(curated_copy, tmp_path):
    cfg = load_config("tiny", str(curated_copy), SETTINGS)
    build_latents(open_storage(str(curated_copy)), "uncurated", cfg, progress=False)
    other = tmp_path / "other"
    shutil.copytree(curated_copy, other)

    _wait = lambda proc, name: wait(proc, tmp_path / f"{name}.log")  # noqa: E731
    _wait(_start(curated_copy, tmp_path, "whole"), "whole")

    proc = _start(other, tmp_path, "killed")
    wait_for_checkpoint(other, 2, [proc], tmp_path / "killed.log")
    kill(proc)
    info_key = other / "models/uncurated/stage1/svdpipe_model.json"
    assert not info_key.exists()  # killed before the end: no model yet

    _wait(_start(other, tmp_path, "killed"), "killed")
    info = json.loads(info_key.read_text())
    assert info["resumed_from"] >= 2 and info["steps"] == STEPS
    assert_same_losses(losses(f"sqlite:///{tmp_path}/whole.db"), losses(f"sqlite:///{tmp_path}/killed.db"), STEPS)
    # Only the newest checkpoints are kept.
    assert len(list((other / "checkpoints/uncurated/stage1").glob("step*"))) == 2

    # Started again with nothing changed, the stage is up to date and is not retrained.
    proc = subprocess.run([
        sys.executable, "-m", "training.run", "--stage", "1", "--variant", "uncurated", "--data-root", str(other),
        "--no-progress", *[a for s in SETTINGS for a in ("--set", s)]],
        env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/killed.db"},
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["skipped"] is True
