"""The repository's dvc.yaml reproduces the whole chain on a small corpus and pushes to the local and S3 remote.

Sample corpus -> ingest -> curate -> train_stage{1,2,3}@<variant> -> evaluate, every stage calling the svdpipe
CLI in a temporary copy of the repository layout (dvc.yaml, params.yaml with minimal steps, and the code folders
the training stages depend on), then `dvc push` to the default local remote and to the SeaweedFS S3 remote.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from svdpipe.dvc_hash import dir_hash

REPO = Path(__file__).resolve().parents[2]
VARIANTS = ("uncurated",)
# The code the training stages depend on, and what `python -m training.run` (run from the repo root) reads.
CODE = ("training", "assets", "infra")


def _dvc(args, cwd, env):
    proc = subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, check=False, timeout=900)
    assert proc.returncode == 0, f"dvc {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _minimal_params() -> dict:
    """params.yaml with the sample corpus, training and evaluation cut to the least that exercises every stage."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["sample_corpus"].update(videos=2, seconds=4)
    for stage in params["training"]["stages"].values():
        stage["steps"] = 2
    params["training"]["sample_steps"] = 2
    # One variant and two latent resolutions keep the test at a few minutes; dvc.yaml's foreach is the same.
    params["variants"] = {v: params["variants"][v] for v in VARIANTS}
    params["training"]["stages"]["3"].update(height=64, width=64)
    params["evaluation"].update(max_videos=2, sample_steps=2)
    return params


@pytest.mark.slow
def test_dvc_repro_and_push(tmp_path, s3, bucket):
    work = tmp_path / "repo"
    work.mkdir()
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, work / name)
    with open(work / ".dvcignore", "a") as f:
        f.write("\n__pycache__/\n")
    for name in CODE:
        shutil.copytree(REPO / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    (work / "params.yaml").write_text(yaml.safe_dump(_minimal_params()))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "DAGSTER_HOME": str(tmp_path / "dagster"), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    _dvc(["init", "--no-scm", "-q"], work, env)
    shutil.copy(REPO / ".dvc/config", work / ".dvc/config")
    _dvc(["config", "core.no_scm", "true"], work, env)

    _dvc(["repro"], work, env)
    table = pd.read_parquet(work / "data/pipeline/metadata/videos.parquet")
    assert (table["status"] == "accepted").sum() == 2 and (table["status"] == "rejected").sum() == 6
    for variant in VARIANTS:
        assert (work / f"data/pipeline/curated/{variant}/selection.json").exists()
        for stage in (1, 2, 3):
            info = json.loads((work / f"data/pipeline/models/{variant}/stage{stage}/svdpipe_model.json").read_text())
            assert info["steps"] == 2 and info["variant"] == variant
    assert (work / "data/pipeline/metadata/clips.parquet").exists()

    # dvc.lock records every stage's outputs, with the directory hashes dir_hash computes the same way
    lock = yaml.safe_load((work / "dvc.lock").read_text())["stages"]
    expected = {"sample_corpus", "ingest", "curate", "evaluate",
                *(f"train_stage{s}@{v}" for s in (1, 2, 3) for v in VARIANTS)}
    assert expected <= set(lock)
    outs = {o["path"]: o for stage in lock.values() for o in stage.get("outs", [])}
    for variant in VARIANTS:
        for path in (f"data/pipeline/latents/{variant}",
                     *(f"data/pipeline/models/{variant}/stage{s}" for s in (1, 2, 3))):
            assert outs[path]["md5"].endswith(".dir")
            assert dir_hash(work / path) == outs[path]["md5"], path
    assert dir_hash(work / "data/pipeline/curated") == outs["data/pipeline/curated"]["md5"]
    for variant in VARIANTS:  # what a training run records of its dataset is the hash dvc.lock has for that dep
        deps = {d["path"]: d for d in lock[f"train_stage1@{variant}"]["deps"]}
        assert dir_hash(work / "data/pipeline", f"curated/{variant}") == deps[f"data/pipeline/curated/{variant}"]["md5"]

    # evaluation metrics per variant, shown by `dvc metrics show`
    metrics = json.loads((work / "data/metrics/evaluation.json").read_text())
    assert set(VARIANTS) <= set(metrics)
    shown = _dvc(["metrics", "show", "--json"], work, env)
    assert "val_loss" in shown and "val_loss" in _dvc(["metrics", "show"], work, env)

    # a second repro changes nothing
    again = _dvc(["repro"], work, env)
    assert "up to date" in again and "Running stage" not in again
    assert _dvc(["status"], work, env).strip().endswith("up to date.")

    _dvc(["push"], work, env)  # the default remote: a local folder beside the repository
    assert any((work / ".dvc-remote").rglob("*"))
    _dvc(["remote", "modify", "--local", "s3", "url", f"s3://{bucket}/dvc"], work, env)
    _dvc(["remote", "modify", "--local", "s3", "endpointurl", s3.endpoint], work, env)
    _dvc(["push", "-r", "s3"], work, env)
    listed = s3.client().list_objects_v2(Bucket=bucket, Prefix="dvc/")
    assert listed["KeyCount"] > 0
    keys = [o["Key"] for page in s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="dvc/")
            for o in page.get("Contents", [])]
    stage3 = outs[f"data/pipeline/models/{VARIANTS[0]}/stage3"]["md5"]
    assert any(k.endswith(f"{stage3[:2]}/{stage3[2:]}") for k in keys)
    assert "in sync" in _dvc(["status", "--cloud", "-r", "s3"], work, env)
