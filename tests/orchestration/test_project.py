"""One project home and one resolved config: the settings file decides the data root, profile and params of
every command and of the code location, from any folder; a variant added in params reaches the partitions."""

import json
import subprocess
import sys

import yaml

from svdpipe import project
from svdpipe.config import load_config, resolve_sources

PARAMS_WITH_A_VARIANT = {"variants": {"uncurated": {"description": "all"},
                                      "long_only": {"description": "long clips", "min_duration_s": 3.0}}}


def test_settings_resolve_the_same_from_any_folder_below_the_home(tmp_path):
    home = tmp_path / "proj"
    deep = home / "a" / "b"
    deep.mkdir(parents=True)
    params = home / "params.yaml"
    params.write_text(yaml.safe_dump(PARAMS_WITH_A_VARIANT))
    project.write_settings(home, project.ProjectSettings(data_root=str(home / "demo" / "root"), params=str(params),
                                                         set=("ingest.workers=3",)))
    assert project.project_home({}, cwd=deep) == home
    env = {"SVDPIPE_HOME": str(home)}
    src = resolve_sources(environ=env)
    assert src.data_root == str(home / "demo" / "root") and src.params_file == str(params)
    assert set(src.config.variants) == {"uncurated", "long_only"} and src.config.ingest.workers == 3
    # The environment and explicit options still win over the settings.
    assert load_config(data_root="/elsewhere", environ=env).data_root == "/elsewhere"
    assert load_config(environ={**env, "SVDPIPE__INGEST__WORKERS": "5"}).ingest.workers == 5
    # Without settings the state lives under the home, never under the working directory.
    bare = tmp_path / "bare"
    assert load_config(environ={"SVDPIPE_HOME": str(bare)}).data_root == str(bare / "data")
    assert project.dagster_home({"SVDPIPE_HOME": str(bare)}) == bare / ".dagster"


def _code_location(env: dict, cwd) -> dict:
    """What the code location `svdpipe ui` serves builds from this environment: partitions, launchpad default,
    sensor default statuses, the data root on an asset."""
    script = """
import json
import dagster as dg
from orchestration.definitions import defs
graph = defs.resolve_asset_graph()
node = graph.get(dg.AssetKey("evaluation"))
job = defs.resolve_job_def("evaluate")
launchpad = job.run_config_schema.config_type.fields["resources"].config_type.fields["svdpipe"]
print(json.dumps({
    "variants": node.partitions_def.get_partition_keys(),
    "launchpad": launchpad.config_type.fields["config"].default_value,
    "sensors": {s.name: s.default_status.value for s in defs.sensors},
    "metadata_root": node.metadata["data_root"],
    "description": node.description,
}))
"""
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_variant_added_in_params_reaches_the_code_location_and_the_cli(cli, tmp_path):
    home = tmp_path / "proj"
    home.mkdir()
    (home / "params.yaml").write_text(yaml.safe_dump(PARAMS_WITH_A_VARIANT))
    watch = tmp_path / "incoming"
    env = {**cli.env, "SVDPIPE_HOME": str(home)}
    cli.env = env
    out = cli("settings", "--data-root", str(home / "root"), "--params", str(home / "params.yaml"),
              "--set", f"ingest.watch={watch}").stdout
    assert "long_only" in out and str(home / "root") in out
    assert yaml.safe_load((home / project.SETTINGS_FILE).read_text())["data_root"] == str(home / "root")

    location = _code_location(env, cwd=tmp_path)
    assert location["variants"] == ["long_only", "uncurated"]
    assert location["launchpad"]["data_root"] == str(home / "root")
    assert location["launchpad"]["params_file"] == str(home / "params.yaml")
    assert location["metadata_root"] == str(home / "root") and str(home / "root") in location["description"]
    # ingest.watch set: the new-videos sensor and the automation sensor run without a click.
    assert location["sensors"] == {"new_videos_sensor": "RUNNING", "default_automation_condition_sensor": "RUNNING"}

    # The CLI takes the variant from the same settings: a usage error about the data, not an unknown variant.
    proc = cli("curate", "--variant", "long_only", check=False)
    assert proc.returncode == 2 and "nothing ingested under " + str(home / "root") in proc.stderr, proc.stderr
    proc = cli("curate", "--variant", "nope", check=False)
    assert "configured: long_only, uncurated" in proc.stderr

    # Without ingest.watch both sensors start stopped (nothing to watch); the default variants are back.
    cli("settings", "--reset", "--data-root", str(home / "root"))
    location = _code_location(env, cwd=tmp_path)
    assert set(location["sensors"].values()) == {"STOPPED"} and location["variants"] == ["svd", "uncurated"]


def test_a_params_file_for_another_profile_is_refused_not_silently_laid_over(tmp_path):
    import pytest

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"profile": "tiny", "training": {"stages": {"3": {"steps": 12}}}}))
    assert load_config("tiny", params_file=params, environ={}).training.stages["3"].steps == 12
    with pytest.raises(ValueError, match="is for profile 'tiny', not 'svd'"):
        load_config("svd", params_file=params, environ={})
