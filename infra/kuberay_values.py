"""``infra/helm/kuberay-values.yaml`` checked, not just written: the keys of KubeRay's ``ray-cluster`` chart it sets.

extra="forbid" everywhere: a misspelt key fails here instead of being ignored by Helm. ``head_address`` is the
``compute.ray_address`` a Dagster run in the same Kubernetes cluster uses to reach the Ray head.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from infra.helm_values import Image, _Strict  # one strict base and image model for every chart's values

KUBERAY_VALUES = Path(__file__).resolve().parent / "helm" / "kuberay-values.yaml"
CLIENT_PORT = 10001  # the chart's Ray client port on the head service


class Resources(_Strict):
    requests: dict[str, str | int] = {}
    limits: dict[str, str | int] = {}


class Head(_Strict):
    rayStartParams: dict[str, str] = {}
    resources: Resources
    envFrom: list[dict[str, Any]] = []


class WorkerGroup(_Strict):
    groupName: str | None = None  # the chart's `worker` names its group; additional groups are keyed by name
    disabled: bool = False
    replicas: int = Field(ge=0)
    minReplicas: int = Field(ge=0)
    maxReplicas: int = Field(ge=1)
    rayStartParams: dict[str, str] = {}
    resources: Resources
    envFrom: list[dict[str, Any]] = []
    nodeSelector: dict[str, str] = {}
    tolerations: list[dict[str, str]] = []


class KubeRayValues(_Strict):
    image: Image
    head: Head
    worker: WorkerGroup
    additionalWorkerGroups: dict[str, WorkerGroup] = {}

    def groups(self) -> dict[str, WorkerGroup]:
        return {self.worker.groupName or "workergroup": self.worker, **self.additionalWorkerGroups}


def load_kuberay_values(path: Path = KUBERAY_VALUES) -> KubeRayValues:
    return KubeRayValues.model_validate(yaml.safe_load(path.read_text()))


def head_address(release: str = "raycluster", namespace: str = "ray") -> str:
    """The Ray client address of the chart's head service (``<release>-kuberay-head-svc``)."""
    return f"ray://{release}-kuberay-head-svc.{namespace}.svc.cluster.local:{CLIENT_PORT}"
