"""The Dagster code location: every asset, check, sensor and resource of svdpipe. Kept thin on purpose."""

import dagster as dg

from assets import curation, ingestion
from data_checks.checks import asset_checks
from orchestration.resources import MlflowResource, SvdpipeResource
from orchestration.sensors import new_videos_sensor

_svdpipe = SvdpipeResource()

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([ingestion, curation]),
    asset_checks=asset_checks,
    sensors=[new_videos_sensor],
    resources={"svdpipe": _svdpipe, "mlflow": MlflowResource(svdpipe=_svdpipe)},
)
