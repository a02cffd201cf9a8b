"""The Kubernetes side of the deployment (docs/deployment.md): ``infra/helm/`` values checked, not just written.

The keys of the official Dagster chart that ``infra/helm/dagster-values.yaml`` sets are modelled strictly (a
misspelt key fails here instead of being ignored by Helm), then rendered into the K8sRunLauncher and
k8s_job_executor config that dagster-k8s's own schemas validate and turn into Job manifests.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

INFRA = Path(__file__).resolve().parent
HELM_VALUES = INFRA / "helm" / "dagster-values.yaml"
TRAINING_RUN_K8S = INFRA / "helm" / "training-run.yaml"


# ---------------------------------------------------------------------------------------------- Helm values
# The keys of the official Dagster chart (helm repo https://dagster-io.github.io/helm, chart `dagster`) that
# infra/helm/dagster-values.yaml sets. extra="forbid": a misspelt key fails here instead of being ignored by Helm.

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Image(_Strict):
    repository: str
    tag: str
    pullPolicy: str = Field(pattern="^(Always|IfNotPresent|Never)$")


class SecretRef(_Strict):
    name: str


class UserDeployment(_Strict):
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    image: Image
    dagsterApiGrpcArgs: list[str]
    port: int
    includeConfigInLaunchedRuns: dict[str, bool] | None = None
    env: list[dict[str, Any]] = []
    envSecrets: list[SecretRef] = []
    resources: dict[str, dict[str, Any]] = {}


class UserDeployments(_Strict):
    enabled: bool
    enableSubchart: bool
    deployments: list[UserDeployment] = Field(min_length=1)


class K8sRunLauncherValues(_Strict):
    image: Image | None = None
    imagePullPolicy: str = "Always"
    jobNamespace: str | None = None
    loadInclusterConfig: bool = True
    envConfigMaps: list[SecretRef] = []
    envSecrets: list[SecretRef] = []
    envVars: list[str] = []
    labels: dict[str, str] = {}
    resources: dict[str, dict[str, Any]] = {}
    runK8sConfig: dict[str, Any] = {}
    failPodOnRunFailure: bool = False


class RunLauncherValues(_Strict):
    type: str = Field(pattern="^K8sRunLauncher$")
    config: dict[str, K8sRunLauncherValues]


class TagLimit(_Strict):
    key: str
    value: str | None = None
    limit: int = Field(ge=1)


class QueuedRunCoordinatorValues(_Strict):
    maxConcurrentRuns: int = Field(ge=1)
    tagConcurrencyLimits: list[TagLimit] = []
    dequeueIntervalSeconds: int | None = None


class RunCoordinatorValues(_Strict):
    enabled: bool
    type: str = Field(pattern="^QueuedRunCoordinator$")
    config: dict[str, QueuedRunCoordinatorValues]


class DaemonValues(_Strict):
    enabled: bool
    runCoordinator: RunCoordinatorValues
    runMonitoring: dict[str, Any] = {}


class PostgresqlValues(_Strict):
    enabled: bool
    postgresqlHost: str
    postgresqlUsername: str
    postgresqlPassword: str
    postgresqlDatabase: str
    postgresqlParams: dict[str, str] = {}
    service: dict[str, int]


class GlobalValues(_Strict):
    postgresqlSecretName: str
    serviceAccountName: str


class HelmValues(_Strict):
    global_: GlobalValues = Field(alias="global")
    generatePostgresqlPasswordSecret: bool
    dagsterWebserver: dict[str, Any]
    dagster_user_deployments: UserDeployments = Field(alias="dagster-user-deployments")
    runLauncher: RunLauncherValues
    dagsterDaemon: DaemonValues
    postgresql: PostgresqlValues
    telemetry: dict[str, bool] = {}


def load_yaml(path: str | Path) -> Any:
    return yaml.safe_load(Path(path).read_text())


def load_helm_values(path: str | Path = HELM_VALUES) -> HelmValues:
    return HelmValues.model_validate(load_yaml(path))


def rendered_run_launcher(values: HelmValues, namespace: str = "dagster") -> dict[str, Any]:
    """The ``run_launcher`` block the chart writes into the instance ConfigMap (its _run-launcher.tpl), for
    ``K8sRunLauncher.config_type()``; ``namespace`` stands for the Helm release namespace."""
    cfg = values.runLauncher.config["k8sRunLauncher"]
    out: dict[str, Any] = {
        "load_incluster_config": cfg.loadInclusterConfig,
        "job_namespace": cfg.jobNamespace or namespace,
        "image_pull_policy": cfg.imagePullPolicy,
        "service_account_name": values.global_.serviceAccountName,
        "dagster_home": {"env": "DAGSTER_HOME"},
        "instance_config_map": {"env": "DAGSTER_K8S_INSTANCE_CONFIG_MAP"},
        "postgres_password_secret": {"env": "DAGSTER_K8S_PG_PASSWORD_SECRET"},
        "env_config_maps": [{"env": "DAGSTER_K8S_PIPELINE_RUN_ENV_CONFIGMAP"}] + [c.name for c in cfg.envConfigMaps],
        "fail_pod_on_run_failure": cfg.failPodOnRunFailure,
    }
    if cfg.image:
        out["job_image"] = f"{cfg.image.repository}:{cfg.image.tag}"
    optional = {"env_secrets": [s.name for s in cfg.envSecrets], "env_vars": cfg.envVars, "labels": cfg.labels,
                "resources": cfg.resources, "run_k8s_config": _snake_keys(cfg.runK8sConfig)}
    out.update({k: v for k, v in optional.items() if v})
    return out


def rendered_run_coordinator(values: HelmValues) -> dict[str, Any]:
    """The ``run_coordinator`` config the chart writes (its _run-coordinator.tpl)."""
    cfg = values.dagsterDaemon.runCoordinator.config["queuedRunCoordinator"]
    out: dict[str, Any] = {"max_concurrent_runs": cfg.maxConcurrentRuns}
    if cfg.tagConcurrencyLimits:
        out["tag_concurrency_limits"] = [t.model_dump(exclude_none=True) for t in cfg.tagConcurrencyLimits]
    if cfg.dequeueIntervalSeconds:
        out["dequeue_interval_seconds"] = cfg.dequeueIntervalSeconds
    return out


def _snake_keys(run_k8s_config: dict[str, Any]) -> dict[str, Any]:
    """runK8sConfig's top-level camelCase keys (containerConfig, podSpecConfig, ...) as dagster-k8s names them."""
    return {re.sub(r"(?<!^)([A-Z])", r"_\1", k).lower(): v for k, v in run_k8s_config.items()}


def validate_dagster_config(config_type, value: Any, what: str) -> Any:
    """Dagster's own config validation (the check the daemon does at start-up); returns the processed value."""
    from dagster._config import process_config
    from dagster._config.config_type import ConfigType
    from dagster._config.field import resolve_to_config_type

    ct = config_type if isinstance(config_type, ConfigType) else resolve_to_config_type(config_type)
    result = process_config(ct, value)
    if not result.success:
        raise ValueError(f"{what}: " + "; ".join(e.message for e in result.errors))
    return result.value


@contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def check_helm(values_path: str | Path = HELM_VALUES, training_path: str | Path = TRAINING_RUN_K8S,
               release: str = "svdpipe", namespace: str = "dagster") -> dict[str, Any]:
    """Validate the Helm values and the training-run settings the way Dagster would use them in the cluster.

    1. the chart keys we set, against the models above;
    2. the run launcher and run coordinator blocks the chart renders, against K8sRunLauncher's and
       QueuedRunCoordinator's config schemas (with the variables the chart puts into the daemon's pod);
    3. the training executor config, against ``k8s_job_executor``'s schema, and the training run tags;
    4. a dry run: K8sRunLauncher built from that config (a kubeconfig that is never contacted) renders the run
       worker Job of a training run, and the step Job the executor would create, with the kubernetes client's
       models (unknown fields fail there).
    Returns the processed configs and both Job manifests (as dicts).
    """
    import tempfile

    import kubernetes
    from dagster import DagsterRun
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster_k8s import K8sRunLauncher, k8s_job_executor
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import (
        UserDefinedDagsterK8sConfig,
        construct_dagster_k8s_job,
        get_user_defined_k8s_config,
    )

    values = load_helm_values(values_path)
    training = load_yaml(training_path)
    chart_env = {"DAGSTER_HOME": "/opt/dagster/dagster_home",
                 "DAGSTER_K8S_INSTANCE_CONFIG_MAP": f"{release}-instance",
                 "DAGSTER_K8S_PG_PASSWORD_SECRET": values.global_.postgresqlSecretName,
                 "DAGSTER_K8S_PIPELINE_RUN_ENV_CONFIGMAP": f"{release}-pipeline-env"}
    out: dict[str, Any] = {}
    with _environ(chart_env), tempfile.TemporaryDirectory() as tmp:
        launcher_cfg = validate_dagster_config(K8sRunLauncher.config_type(), rendered_run_launcher(values, namespace),
                                               "runLauncher.config.k8sRunLauncher")
        out["run_coordinator"] = validate_dagster_config(QueuedRunCoordinator.config_type(),
                                                         rendered_run_coordinator(values),
                                                         "dagsterDaemon.runCoordinator")
        out["executor"] = validate_dagster_config(k8s_job_executor.config_schema.as_field().config_type,
                                                  training["execution"]["config"], f"{training_path}: execution")
        tags = {k: v if isinstance(v, str) else json.dumps(v) for k, v in training["tags"].items()}
        out["run_tags"] = tags
        user_run_config = get_user_defined_k8s_config(tags)  # validates the dagster-k8s/config tag, if any

        kubeconfig = Path(tmp) / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "dry-run",
            "clusters": [{"name": "dry-run", "cluster": {"server": "https://127.0.0.1:1"}}],
            "users": [{"name": "dry-run", "user": {"token": "unused"}}],
            "contexts": [{"name": "dry-run", "context": {"cluster": "dry-run", "user": "dry-run"}}]}))
        launcher = K8sRunLauncher.from_config_value(
            None, {**launcher_cfg, "load_incluster_config": False, "kubeconfig_file": str(kubeconfig)})
        out["run_launcher"] = launcher_cfg
        run = DagsterRun(job_name="training", run_id="0123abcd-0000-0000-0000-000000000000", tags=tags)
        context = K8sContainerContext.create_for_run(run, launcher, include_run_tags=True)
        # The chart gives runs the image of the code location that launched them (DAGSTER_CURRENT_IMAGE).
        image = values.dagster_user_deployments.deployments[0].image
        job_config = context.get_k8s_job_config(job_image=f"{image.repository}:{image.tag}", run_launcher=launcher)
        run_job = construct_dagster_k8s_job(job_config, ["dagster", "api", "execute_run"], "dagster-run-0123abcd",
                                            user_defined_k8s_config=context.run_k8s_config, component="run_worker")
        step_config = UserDefinedDagsterK8sConfig.from_dict(out["executor"].get("step_k8s_config", {}))
        step_job = construct_dagster_k8s_job(job_config, ["dagster", "api", "execute_step"], "dagster-step-0123abcd",
                                             user_defined_k8s_config=step_config, component="step_worker")
        api = kubernetes.client.ApiClient()
        out["run_job"] = api.sanitize_for_serialization(run_job)
        out["step_job"] = api.sanitize_for_serialization(step_job)
        out["namespace"] = context.namespace
        out["user_run_k8s_config"] = user_run_config
    return out
