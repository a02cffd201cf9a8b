"""Dagster resources: the run configuration (with its storage), MLflow, and the Ray cluster.

Both are built from the same ``SvdpipeConfig`` so that the UI, schedules, sensors and the CLI read one config.
The code location fills the profile, data root and params file with the resolved ones (project settings, then
environment; ``orchestration.definitions``), so the launchpad shows what a run will read; the CLI passes its own.
"""


from contextlib import contextmanager
from functools import cached_property
from typing import Iterator, Optional

import dagster as dg
from dagster_ray import LocalRay

from svdpipe import tracking
from svdpipe.config import load_config
from svdpipe.config_schema import SvdpipeConfig
from svdpipe.storage import Storage, open_storage


class SvdpipeResource(dg.ConfigurableResource):
    """The resolved run configuration and the storage of its data root."""

    profile: Optional[str] = None
    data_root: Optional[str] = None
    overrides: list[str] = []
    params_file: Optional[str] = None

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # MLflow runs opened while this run executes (evaluation, comparison) become children of its parent run.
        tracking.set_pipeline_run(context.dagster_run.run_id if context.dagster_run else None)

    @cached_property
    def config(self) -> SvdpipeConfig:
        return load_config(self.profile, self.data_root, self.overrides, params_file=self.params_file)

    @cached_property
    def storage(self) -> Storage:
        return open_storage(self.config.data_root)


def mlflow_run(cfg: SvdpipeConfig, run_id: str, experiment_id: str | None = None) -> dg.MetadataValue | str:
    """An MLflow run in asset metadata: a link to its page where the store has a web UI, else its id."""
    url = tracking.run_url(cfg, run_id, experiment_id)
    return dg.MetadataValue.url(url) if url else run_id


class MlflowResource(dg.ConfigurableResource):
    """Opens MLflow runs tagged with the Dagster run, asset and partition that produced them; the asset's
    materialization gets ``mlflow_run`` (see ``mlflow_run``)."""

    svdpipe: SvdpipeResource

    @contextmanager
    def start_run(self, context: dg.AssetExecutionContext, run_name: str, **tags: str) -> Iterator:
        dagster_tags = {"dagster.run_id": context.run.run_id, "dagster.asset": context.asset_key.to_user_string()}
        if context.has_partition_key:
            dagster_tags["dagster.partition"] = context.partition_key
        cfg = self.svdpipe.config
        with tracking.start_run(cfg, run_name, {**dagster_tags, **tags}) as run:
            context.add_asset_metadata({"mlflow_run": mlflow_run(cfg, run.info.run_id, run.info.experiment_id)})
            yield run


class RayClusterResource(LocalRay):
    """dagster-ray's Ray resource for the steps that spread work (``compute.engine: ray``).

    It connects the step to ``compute.ray_address`` (a ``ray start --head`` cluster or a KubeRay head service) or
    starts a local cluster, and disconnects when the step ends; the curation engine runs on that connection. With
    ``compute.engine: local`` it does nothing, so steps never start Ray they do not use. For a cluster made per run
    on Kubernetes, dagster-ray's ``KubeRayCluster`` takes this resource's place (the engine uses whatever
    connection the resource opened).
    """

    svdpipe: SvdpipeResource

    @property
    def ray_address(self) -> str:  # type: ignore[override]
        # "local", never None: None would join whatever cluster this machine started last.
        return self.svdpipe.config.compute.ray_address or "local"

    @contextmanager
    def yield_for_execution(self, context: dg.InitResourceContext) -> Iterator["RayClusterResource"]:
        if self.svdpipe.config.compute.engine != "ray":
            yield self
            return
        with super().yield_for_execution(context) as resource:
            yield resource
