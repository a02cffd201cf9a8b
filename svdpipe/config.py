"""The one typed run configuration, resolved (its schema: ``svdpipe.config_schema``).

A run's configuration is built in one direction only:

    configs/<profile>.yaml  ->  --params FILE  ->  project settings' set  ->  SVDPIPE__SECTION__FIELD  ->  --set

and then validated by pydantic. The resolved object is what every stage reads, what is logged to MLflow params
and what is shown in Dagster metadata (``SvdpipeConfig.flat()``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import yaml

from svdpipe import project
from svdpipe.config_schema import SvdpipeConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
ENV_PREFIX = "SVDPIPE__"


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ValueError(f"config override {dotted!r}: {k!r} is not a section")
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``section.field=value`` with ``value`` parsed as YAML, so numbers, lists and booleans keep their types."""
    if "=" not in text:
        raise ValueError(f"config override {text!r} must look like section.field=value")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def env_overrides(environ: Mapping[str, str]) -> list[tuple[str, Any]]:
    """``SVDPIPE__INGEST__WORKERS=4`` becomes ``("ingest.workers", 4)``."""
    out = []
    for name, raw in sorted(environ.items()):
        if name.startswith(ENV_PREFIX):
            key = name[len(ENV_PREFIX):].lower().replace("__", ".")
            out.append((key, yaml.safe_load(raw) if raw.strip() else ""))
    return out


def available_profiles() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _merge(base: dict, extra: dict) -> dict:
    for k, v in extra.items():
        base[k] = _merge(dict(base.get(k) or {}), v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return base


def load_config(
    profile: str | None = None,
    data_root: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    environ: Mapping[str, str] | None = None,
    params_file: str | Path | None = None,
) -> SvdpipeConfig:
    """Resolve a run's configuration: profile YAML, params file, project settings, environment, explicit overrides.

    Each of ``profile``, ``data_root`` and ``params_file`` not given falls back to the environment
    (``SVDPIPE_PROFILE``, ``SVDPIPE_DATA_ROOT``), then to the project settings (``svdpipe.project``), then to
    ``tiny``, ``<project home>/data`` and none. ``params_file`` is a YAML in the profile's shape (DVC's
    ``params.yaml``); its top-level keys that are not config sections belong to DVC stages and are left to them.
    An explicit ``environ`` is the whole outside world: the project home is then ``environ['SVDPIPE_HOME']`` (or
    the user default), never searched for from the working directory.
    """
    return resolve_sources(profile, data_root, overrides, environ, params_file).config


class ConfigSources(NamedTuple):
    """A resolved configuration and where it came from (what a subprocess needs to resolve it again)."""

    config: SvdpipeConfig
    profile: str
    data_root: str
    params_file: str | None
    home: Path


def resolve_sources(
    profile: str | None = None,
    data_root: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    environ: Mapping[str, str] | None = None,
    params_file: str | Path | None = None,
) -> ConfigSources:
    """``load_config`` that also returns the profile, data root, params file and project home it used."""
    hermetic = environ is not None
    environ = os.environ if environ is None else environ
    home = project.project_home(environ, discover=not hermetic)
    settings = project.read_settings(home)
    profile = profile or environ.get("SVDPIPE_PROFILE") or settings.profile or "tiny"
    path = CONFIG_DIR / f"{profile}.yaml"
    if not path.exists():
        raise ValueError(f"unknown profile {profile!r}; available: {', '.join(available_profiles())}")
    tree = yaml.safe_load(path.read_text()) or {}
    params_file = str(params_file) if params_file else settings.params
    if params_file:
        params = yaml.safe_load(Path(params_file).read_text()) or {}
        if params.get("profile") not in (None, profile):
            # Its values were chosen for its profile: laid over another they would silently replace that one's
            # (the svd schedule trained with the tiny profile's steps).
            raise ValueError(f"params file {params_file} is for profile {params['profile']!r}, not {profile!r}: "
                             f"use a params file written for {profile!r} (or set its `profile:`)")
        _merge(tree, {k: v for k, v in params.items() if k in SvdpipeConfig.model_fields and k != "profile"})
    tree["profile"] = profile
    for text in settings.set:
        _set_dotted(tree, *parse_override(text))
    for key, value in env_overrides(environ):
        _set_dotted(tree, key, value)
    for text in overrides:
        _set_dotted(tree, *parse_override(text))
    root = str(data_root or environ.get("SVDPIPE_DATA_ROOT") or settings.data_root or home / "data")
    if "://" not in root:  # a folder means the same to every process, whatever its working directory
        root = str(Path(root).expanduser().resolve())
    tree["data_root"] = root
    return ConfigSources(SvdpipeConfig.model_validate(tree), profile, root, params_file, home)


_ACTIVE: ConfigSources | None = None


def activate(sources: ConfigSources) -> ConfigSources:
    """Make ``sources`` the configuration this process builds its Dagster definitions from (the CLI calls this
    with its options before it loads them; partitions, schedules and sensors then follow the same config)."""
    global _ACTIVE
    _ACTIVE = sources
    return sources


def active_sources() -> ConfigSources:
    """The configuration of this process's Dagster definitions: the one ``activate`` set, else the project
    settings and environment resolved once (what ``svdpipe ui``'s code location reads)."""
    global _ACTIVE
    if _ACTIVE is None:
        _ACTIVE = resolve_sources()
    return _ACTIVE
