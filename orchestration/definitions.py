"""The Dagster code location: every asset, check, job, schedule, sensor and resource of svdpipe.

Built from one resolved configuration (``svdpipe.config.active_sources``: the CLI's options, else the project
settings and the environment), so the UI, the CLI, the schedule and the sensors read the same data root and
the same variants. Every asset shows the data root it reads in its description and definition metadata.
"""

import dagster as dg

from assets import curation, evaluation, ingestion, training
from assets.checks import asset_checks
from assets.resources import MlflowResource, RayClusterResource, SvdpipeResource
from orchestration.jobs import JOBS
from orchestration.schedules import retrain_schedule
from orchestration.sensors import WATCHING, new_videos_sensor
from svdpipe.config import active_sources


def default_resources() -> dict:
    """Resources filled with the resolved profile, data root and params file: what the launchpad shows."""
    src = active_sources()
    svdpipe = SvdpipeResource(profile=src.profile, data_root=src.data_root, params_file=src.params_file)
    return {"svdpipe": svdpipe, "mlflow": MlflowResource(svdpipe=svdpipe),
            "ray_cluster": RayClusterResource(svdpipe=svdpipe), "pipes_subprocess_client": dg.PipesSubprocessClient()}


def build_definitions(resources: dict | None = None) -> dg.Definitions:
    resources = resources or default_resources()
    svdpipe: SvdpipeResource = resources["svdpipe"]
    root, profile = svdpipe.data_root or active_sources().data_root, svdpipe.profile or active_sources().profile

    def with_data_root(spec: dg.AssetSpec) -> dg.AssetSpec:
        return spec.replace_attributes(description=f"{spec.description}\n\nData root: `{root}` (profile {profile})"
                                       ).merge_attributes(metadata={"data_root": root, "profile": profile})

    assets = dg.map_asset_specs(with_data_root, dg.load_assets_from_modules([ingestion, curation, training,
                                                                             evaluation]))
    # Declarative automation (eager conditions: new batches flow through curation) is evaluated by this sensor;
    # on by default where new videos are watched for, as the new-videos sensor is.
    automation = dg.AutomationConditionSensorDefinition(
        "default_automation_condition_sensor",
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING if WATCHING else dg.DefaultSensorStatus.STOPPED,
        description="Evaluates the assets' automation conditions: ingested batches -> videos -> clip scores -> clips "
        "-> curated datasets. Training and evaluation have none: they are started explicitly or by the schedule.",
    )
    return dg.Definitions(
        assets=assets,
        jobs=JOBS,
        schedules=[retrain_schedule],
        asset_checks=asset_checks,
        sensors=[new_videos_sensor, automation],
        resources=resources,
    )


defs = build_definitions()
