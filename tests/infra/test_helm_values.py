"""The Kubernetes deployment values are checked by the schemas of what consumes them, and dry-run into Jobs."""

from __future__ import annotations

import importlib

import dagster as dg
import pytest
import yaml
from pydantic import ValidationError

from infra import helm_values
from infra.deploy import DAGSTER_POSTGRES_YAML


@pytest.fixture(scope="module")
def checked():
    return helm_values.check_helm()


def test_values_render_a_valid_instance_and_training_jobs(checked):
    values = helm_values.load_helm_values()
    (location,) = values.dagster_user_deployments.deployments
    assert location.dagsterApiGrpcArgs == ["--module-name", "orchestration.definitions"]

    # The queue the chart renders is the one of infra/dagster.postgres.yaml.
    local = yaml.safe_load(DAGSTER_POSTGRES_YAML.read_text())["concurrency"]["runs"]
    assert checked["run_coordinator"]["max_concurrent_runs"] == local["max_concurrent_runs"]
    assert checked["run_coordinator"]["tag_concurrency_limits"] == local["tag_concurrency_limits"]
    assert checked["run_tags"]["svdpipe/stage"] == "train"
    assert {"key": "svdpipe/stage", "value": "train", "limit": 1} in local["tag_concurrency_limits"]

    # Run worker: the chart's defaults, no GPU; runs in the job namespace with the code location's image.
    assert checked["namespace"] == "dagster"
    run_pod = checked["run_job"]["spec"]["template"]["spec"]
    (run_container,) = run_pod["containers"]
    assert run_container["image"] == f"{location.image.repository}:{location.image.tag}"
    assert "nvidia.com/gpu" not in run_container["resources"].get("limits", {})
    assert run_pod["nodeSelector"] == {"svdpipe/pool": "cpu"}
    env = {e["name"]: e for e in run_container["env"]}
    assert env["DAGSTER_PG_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "svdpipe-postgresql-secret"

    # Training step: all 8 GPUs of a GPU node, requested and limited, tolerating the GPU taint.
    step_pod = checked["step_job"]["spec"]["template"]["spec"]
    (step_container,) = step_pod["containers"]
    assert step_container["resources"]["requests"]["nvidia.com/gpu"] == "8"
    assert step_container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in step_pod["tolerations"]
    assert step_pod["nodeSelector"] == {"svdpipe/pool": "gpu"}
    assert checked["executor"]["max_concurrent"] == 1


def test_user_deployment_module_is_the_code_location():
    module = helm_values.load_helm_values().dagster_user_deployments.deployments[0].dagsterApiGrpcArgs[1]
    defs = importlib.import_module(module).defs
    assert isinstance(defs, dg.Definitions)
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"ingested_batch", "videos"} <= keys


def _variant(tmp_path, source, name, edit):
    data = yaml.safe_load(source.read_text())
    edit(data)
    out = tmp_path / name
    out.write_text(yaml.safe_dump(data))
    return out


def test_mistakes_are_rejected(tmp_path):
    def misspelt_chart_key(v):
        v["runLauncher"]["config"]["k8sRunLauncher"]["jobNamespaces"] = "dagster"

    def bad_pull_policy(v):
        v["dagster-user-deployments"]["deployments"][0]["image"]["pullPolicy"] = "Sometimes"

    for edit in (misspelt_chart_key, bad_pull_policy):
        with pytest.raises(ValidationError):
            helm_values.check_helm(values_path=_variant(tmp_path, helm_values.HELM_VALUES, "values.yaml", edit))

    def executor_field_typo(t):
        t["execution"]["config"]["max_concurent"] = 1

    def k8s_field_typo(t):
        t["execution"]["config"]["step_k8s_config"]["pod_spec_config"]["node_selektor"] = {"a": "b"}

    def bad_tag_config(t):
        t["tags"]["dagster-k8s/config"] = {"container_config": "8 GPUs please"}

    for edit, message in ((executor_field_typo, "max_concurent"), (k8s_field_typo, "node_selektor"),
                          (bad_tag_config, "container_config")):
        with pytest.raises(Exception, match=message):
            helm_values.check_helm(training_path=_variant(tmp_path, helm_values.TRAINING_RUN_K8S, "training.yaml", edit))
