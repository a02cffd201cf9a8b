"""The retraining schedule: ``retrain_finetune`` (orchestration.jobs) of ``schedule.retrain_variant`` on a cron."""

import dagster as dg

from orchestration.jobs import retrain_finetune, train_variant  # noqa: F401 - train_variant: re-exported
from svdpipe.config import active_sources


def _retrain_schedule() -> dg.ScheduleDefinition:
    # Off until switched on: a retraining is hours of GPU time on the svd profile, never a side effect.
    cfg = active_sources().config.schedule

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
