"""The Dagster code location: every asset, check, sensor and resource of svdpipe. Kept thin on purpose."""

import dagster as dg

from assets import curation, evaluation, ingestion, training
from assets.checks import asset_checks
from assets.resources import MlflowResource, RayClusterResource, SvdpipeResource
from orchestration.schedules import retrain_finetune, retrain_schedule, train_variant
from orchestration.sensors import new_videos_sensor

_svdpipe = SvdpipeResource()

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([ingestion, curation, training, evaluation]),
    jobs=[train_variant, retrain_finetune],
    schedules=[retrain_schedule],
    asset_checks=asset_checks,
    sensors=[new_videos_sensor],
    resources={
        "svdpipe": _svdpipe,
        "mlflow": MlflowResource(svdpipe=_svdpipe),
        "ray_cluster": RayClusterResource(svdpipe=_svdpipe),
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
    },
)
