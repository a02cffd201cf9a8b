"""The repository's dvc.yaml reproduces on a small corpus and pushes to the local and the S3 remote."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[2]


def _dvc(args, cwd, env):
    proc = subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, f"dvc {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_dvc_repro_and_push(tmp_path, s3, bucket):
    work = tmp_path / "repo"
    work.mkdir()
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, work / name)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["sample_corpus"].update(videos=2, seconds=4)
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "DAGSTER_HOME": str(tmp_path / "dagster"), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    _dvc(["init", "--no-scm", "-q"], work, env)
    shutil.copy(REPO / ".dvc/config", work / ".dvc/config")
    _dvc(["config", "core.no_scm", "true"], work, env)

    _dvc(["repro"], work, env)
    table = pd.read_parquet(work / "data/pipeline/metadata/videos.parquet")
    assert (table["status"] == "accepted").sum() == 2 and (table["status"] == "rejected").sum() == 6
    assert "dvc.lock" in os.listdir(work)
    for variant in ("uncurated", "svd"):
        assert (work / f"data/pipeline/curated/{variant}/selection.json").exists()
    assert (work / "data/pipeline/metadata/clips.parquet").exists()
    assert "up to date" in _dvc(["repro"], work, env)

    _dvc(["push"], work, env)  # the default remote: a local folder beside the repository
    assert any((work / ".dvc-remote").rglob("*"))
    _dvc(["remote", "modify", "--local", "s3", "url", f"s3://{bucket}/dvc"], work, env)
    _dvc(["remote", "modify", "--local", "s3", "endpointurl", s3.endpoint], work, env)
    _dvc(["push", "-r", "s3"], work, env)
    listed = s3.client().list_objects_v2(Bucket=bucket, Prefix="dvc/")
    assert listed["KeyCount"] > 0
