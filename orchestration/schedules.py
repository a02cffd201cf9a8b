"""Jobs and the retraining schedule.

``train_variant`` materializes latents and the three stages for one variant (run-tagged so that the run queue
of infra/dagster.postgres.yaml runs one training at a time). ``retrain_finetune`` is what the schedule starts:
rebuild the variant's curated dataset from the newest scored clips, its latents, Stage III on top of the
existing Stage II model, and the evaluation that decides whether the new model is registered.
"""

import dagster as dg

from assets.training import TRAIN_TAGS
from assets.partitions import variants
from svdpipe.config import load_config

train_variant = dg.define_asset_job(
    "train_variant",
    selection=dg.AssetSelection.assets("clip_latents", "image_model", "video_model", "finetuned_model"),
    partitions_def=variants,
    tags=TRAIN_TAGS,
    description="Latents and Stages I-III of one curation variant.",
)

retrain_finetune = dg.define_asset_job(
    "retrain_finetune",
    selection=dg.AssetSelection.assets("curated_dataset", "clip_latents", "finetuned_model", "evaluation"),
    partitions_def=variants,
    tags=TRAIN_TAGS,
    description="Stage III on the newest curated data, then evaluation and the registration rule.",
)


def _retrain_schedule() -> dg.ScheduleDefinition:
    cfg = load_config().schedule

    @dg.schedule(
        name="retrain_finetune_schedule",
        cron_schedule=cfg.retrain_cron,
        job=retrain_finetune,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description=f"Retrain Stage III of {cfg.retrain_variant!r} on cron {cfg.retrain_cron!r} (schedule.* config).",
    )
    def retrain_schedule(context: dg.ScheduleEvaluationContext):
        # One run per tick: the run key makes a re-evaluated tick idempotent.
        tick = context.scheduled_execution_time.strftime("%Y%m%dT%H%M")
        return dg.RunRequest(run_key=f"retrain-{cfg.retrain_variant}-{tick}", partition_key=cfg.retrain_variant)

    return retrain_schedule


retrain_schedule = _retrain_schedule()
