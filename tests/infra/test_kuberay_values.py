"""The KubeRay values: chart keys modelled strictly; the cluster can run what the curation engine asks of it."""

import pytest
import yaml
from pydantic import ValidationError

from infra import helm_values, kuberay_values


def test_kuberay_values_give_cpu_workers_gpu_workers_and_the_code_locations_image():
    values = kuberay_values.load_kuberay_values()
    (location,) = helm_values.load_helm_values().dagster_user_deployments.deployments
    # Ray workers import svdpipe's curation code: the same image as the Dagster code location.
    assert (values.image.repository, values.image.tag) == (location.image.repository, location.image.tag)
    assert values.head.rayStartParams["num-cpus"] == "0"  # the head only coordinates
    groups = values.groups()
    gpu = [g for g in groups.values() if "nvidia.com/gpu" in g.resources.limits and not g.disabled]
    cpu = [g for g in groups.values() if "nvidia.com/gpu" not in g.resources.limits]
    assert gpu and cpu  # scorer actors on GPUs, decode tasks on CPUs
    for g in groups.values():
        assert g.minReplicas <= g.replicas <= g.maxReplicas
        assert {"secretRef": {"name": "svdpipe-aws"}} in g.envFrom  # tasks read the S3 data root
    assert kuberay_values.head_address() == "ray://raycluster-kuberay-head-svc.ray.svc.cluster.local:10001"
    assert kuberay_values.head_address() in kuberay_values.KUBERAY_VALUES.read_text()


def test_a_misspelt_key_fails(tmp_path):
    raw = yaml.safe_load(kuberay_values.KUBERAY_VALUES.read_text())
    raw["worker"]["maxReplica"] = raw["worker"].pop("maxReplicas")
    bad = tmp_path / "values.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValidationError, match="maxReplica"):
        kuberay_values.load_kuberay_values(bad)
