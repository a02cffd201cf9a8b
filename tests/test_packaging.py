"""`pip install .` gives a working svdpipe: profiles, Dagster and DeepSpeed configs travel as package data, and
the command works from a folder outside the checkout with its state under the project home."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_an_installed_svdpipe_runs_from_another_folder(tmp_path, corpus):
    target, source = tmp_path / "site", tmp_path / "source"
    # A copy of the tracked files: setuptools builds in the source folder (build/), and the checkout stays clean.
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    # A real, non-editable install of them (no dependencies: the venv has them).
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-compile", "--target", str(target), str(source)], check=True, capture_output=True,
                   timeout=600, cwd=tmp_path)
    for data in ("configs/tiny.yaml", "configs/svd.yaml", "infra/dagster.yaml", "infra/deepspeed/zero2.json",
                 "infra/deepspeed/zero3.json"):
        assert (target / data).is_file(), f"{data} is not package data"

    work, home = tmp_path / "somewhere", tmp_path / "home"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SVDPIPE", "DAGSTER_", "MLFLOW_"))}
    env.update(PYTHONPATH=str(target), SVDPIPE_HOME=str(home))  # the installed copy, not the checkout

    def svdpipe(*args):
        proc = subprocess.run([sys.executable, "-m", "orchestration.cli", *args], env=env, cwd=work,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    assert "Usage:" in svdpipe("--help")
    located = subprocess.run([sys.executable, "-c", "import svdpipe.config as c; print(c.__file__)"], env=env,
                             cwd=work, capture_output=True, text=True, check=True).stdout
    assert located.startswith(str(target)), located
    out = svdpipe("ingest", str(corpus[0]))
    assert "accepted" in out
    assert (home / "data" / "metadata" / "videos.parquet").is_file()
    assert (home / ".dagster" / "dagster.yaml").is_file() and (home / ".mlflow" / "mlflow.db").is_file()
    assert sorted(p.name for p in work.iterdir()) == []  # nothing written where the command ran
