"""Evaluation per variant (metrics on the shared evaluation set, sample videos, the registration rule) and the
comparison of variants on one evaluation set.

Stage III's model is registered in the MLflow model registry as ``svdpipe-<variant>`` only when its evaluation
on held-out clips is not worse than the champion's (``evaluation.register_metric``; the rule and figures are in
the materialization metadata and on the model version). An unchanged model is not evaluated again.
"""

import math

import dagster as dg

from assets import guards
from assets.training import finetuned_model
from assets.partitions import variants
from assets.resources import SvdpipeResource, mlflow_run
from svdpipe.markdown import inline_image


MAX_INLINE_GIF = 2 * 2**20  # larger samples stay in MLflow only; Dagster's event log is not a video store


def _finite(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


@dg.asset(
    partitions_def=variants,
    deps=[finetuned_model],
    group_name="evaluation",
    description="Validation loss, Frechet distance, motion fidelity, temporal consistency and motion magnitude "
    "of the Stage III model on the evaluation set shared by every variant, sample videos, and the registration "
    "decision; one MLflow run (stage=eval, tag eval_set), reused while the model is unchanged.",
)
def evaluation(context: dg.AssetExecutionContext, svdpipe: SvdpipeResource) -> dg.MaterializeResult:
    from training.evaluation_run import evaluate_variant

    guards.model(svdpipe.storage, context.partition_key, 3)
    guards.latents(svdpipe.storage, context.partition_key)
    out = evaluate_variant(svdpipe.storage, context.partition_key, svdpipe.config, log=context.log.info)
    return dg.MaterializeResult(metadata=_metadata(out, svdpipe.config))


def _metadata(out, cfg) -> dict:
    r, decision = out.result, out.decision
    model_run = out.model_info.get("run_id")
    metadata = {
        "mlflow_run": mlflow_run(cfg, out.run_id),
        "model_run": mlflow_run(cfg, model_run) if model_run else "",
        "dataset_version": out.model_info.get("dataset_version"),
        "eval_set": r.eval_set,
        "evaluated_again": not out.reused,
        "dvc_hashes": dg.MetadataValue.json(out.dvc),
        "held_out": r.held_out,
        "videos": r.n_videos,
        "notes": dg.MetadataValue.json(r.notes),
        "metrics": dg.MetadataValue.json({k: _finite(v) for k, v in r.metrics.items()}),
    }
    for key in ("val_loss", "motion_fidelity", "temporal_consistency", "motion_magnitude"):
        if _finite(r.metrics.get(key)) is not None:
            metadata[key] = float(r.metrics[key])
    gifs = [p for p in r.video_paths if p.suffix == ".gif" and p.name.startswith("gen_")]
    if gifs and gifs[0].stat().st_size <= MAX_INLINE_GIF:
        metadata["sample_video"] = dg.MetadataValue.md(inline_image(gifs[0].read_bytes(), gifs[0].stem, "image/gif"))
    if decision is not None:
        metadata.update({
            "registered": decision.registered,
            "registered_version": decision.version or "",
            "registration_rule": decision.rule,
            "candidate_value": _finite(decision.candidate_value),
            "current_value": _finite(decision.current_value),
        })
    return metadata


@dg.asset(
    deps=[evaluation],
    group_name="evaluation",
    automation_condition=dg.AutomationCondition.eager(),
    description="The newest evaluation of every curation variant on one evaluation set side by side: a table "
    "and a plot with standard errors, in this asset's metadata and as an MLflow run (stage=compare). Does "
    "curation make better models?",
)
def variant_comparison(svdpipe: SvdpipeResource) -> dg.MaterializeResult:
    from training.compare import compare_variants, log_comparison

    cfg = svdpipe.config
    comparison = compare_variants(cfg)
    if comparison.table.empty:
        raise dg.Failure("no evaluation runs in MLflow yet: materialize evaluation for the variants first")
    run_id = log_comparison(comparison, cfg)
    metadata = {
        "table": dg.MetadataValue.md(comparison.markdown),
        "variants": dg.MetadataValue.json(comparison.table["variant"].tolist()),
        "eval_set": comparison.eval_set,
        "notes": dg.MetadataValue.json(comparison.notes),
        "mlflow_run": mlflow_run(cfg, run_id),
    }
    if comparison.png is not None:
        metadata["plot"] = dg.MetadataValue.md(inline_image(comparison.png.read_bytes(), "variant comparison"))
    return dg.MaterializeResult(metadata=metadata)
