"""The project home: one folder that holds svdpipe's local state and the project settings file.

The home is ``$SVDPIPE_HOME``, else the nearest folder at or above the working directory that holds a
``svdpipe.yaml`` (as git finds its repository), else ``$XDG_DATA_HOME/svdpipe`` (``~/.local/share/svdpipe``).
Under it, unless set otherwise:

- ``svdpipe.yaml``: the project settings — the data root, profile, params file and ``--set`` overrides that every
  command, the Dagster code location, its schedules and sensors use by default (``svdpipe settings`` writes it);
- ``data/``: the data root;
- ``.dagster/``: the Dagster instance (``$DAGSTER_HOME``);
- ``.mlflow/``: the MLflow store (``$MLFLOW_TRACKING_URI``);
- ``.cache/``: this machine's scratch, e.g. the staging folder of DeepSpeed checkpoints kept on S3
  (``training.checkpoints``).

So a command gives the same answer from any folder of the project, and a checkout after ``make demo`` serves the
demo's data to ``make ui``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field

SETTINGS_FILE = "svdpipe.yaml"


class ProjectSettings(BaseModel):
    """What ``svdpipe.yaml`` holds: the defaults of ``--data-root``, ``--profile``, ``--params`` and ``--set``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_root: str | None = Field(None, description="a folder (relative to the project home) or s3://bucket/prefix")
    profile: str | None = Field(None, description="config profile (configs/<profile>.yaml)")
    params: str | None = Field(None, description="params file in the profile's shape (relative to the home)")
    set: tuple[str, ...] = Field((), description="section.field=value overrides, applied before the environment's")


def project_home(environ: Mapping[str, str] | None = None, discover: bool = True, cwd: Path | None = None) -> Path:
    """``$SVDPIPE_HOME``, else (``discover``) the nearest folder up from ``cwd`` with a settings file, else the
    user's data folder."""
    environ = os.environ if environ is None else environ
    if environ.get("SVDPIPE_HOME"):
        return Path(environ["SVDPIPE_HOME"]).expanduser().resolve()
    if discover:
        here = (cwd or Path.cwd()).resolve()
        for folder in (here, *here.parents):
            if (folder / SETTINGS_FILE).is_file():
                return folder
    xdg = environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg).expanduser().resolve() / "svdpipe"


def _absolute(home: Path, path: str | None) -> str | None:
    if path is None or "://" in path:
        return path
    return str((home / Path(path).expanduser()).resolve())


def read_settings(home: Path) -> ProjectSettings:
    """The settings of ``home`` with paths made absolute; empty settings when there is no file."""
    path = home / SETTINGS_FILE
    if not path.is_file():
        return ProjectSettings()
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        settings = ProjectSettings.model_validate(raw)
    except Exception as e:  # noqa: BLE001 - name the file whatever is wrong with it
        raise ValueError(f"project settings {path} are invalid: {e}") from e
    return settings.model_copy(update={"data_root": _absolute(home, settings.data_root),
                                       "params": _absolute(home, settings.params)})


def write_settings(home: Path, settings: ProjectSettings) -> Path:
    """Write ``home/svdpipe.yaml`` (paths absolute, so the file means the same from anywhere)."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / SETTINGS_FILE
    data = settings.model_copy(update={"data_root": _absolute(Path.cwd(), settings.data_root),
                                       "params": _absolute(Path.cwd(), settings.params)})
    body = {k: v for k, v in data.model_dump(mode="json").items() if v not in (None, [], ())}
    path.write_text("# svdpipe project settings: the defaults of every command and of the Dagster code location.\n"
                    "# Written by `svdpipe settings`; see `svdpipe settings --help`.\n" + yaml.safe_dump(body))
    return path


def dagster_home(environ: Mapping[str, str] | None = None) -> Path:
    """``$DAGSTER_HOME``, else ``<project home>/.dagster``."""
    environ = os.environ if environ is None else environ
    if environ.get("DAGSTER_HOME"):
        return Path(environ["DAGSTER_HOME"]).expanduser().resolve()
    return project_home(environ) / ".dagster"


def mlflow_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Folder of the embedded MLflow store (SQLite file and artifacts): ``<project home>/.mlflow``."""
    return project_home(environ) / ".mlflow"


def cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """This machine's scratch folder: ``<project home>/.cache`` (on a cluster, give each node its own home)."""
    return project_home(environ) / ".cache"
