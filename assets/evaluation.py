"""Evaluation per variant (metrics, sample videos, the registration rule) and the comparison of variants.

Stage III's model is registered in the MLflow model registry as ``svdpipe-<variant>`` only when its evaluation
is not worse than the registered version's (``evaluation.register_metric``; the rule and figures are in the
materialization metadata and on the model version).
"""

import math

import dagster as dg

from assets import guards
from assets.training import finetuned_model
from assets.partitions import variants
from assets.resources import SvdpipeResource
from svdpipe.markdown import inline_image


MAX_INLINE_GIF = 2 * 2**20  # larger samples stay in MLflow only; Dagster's event log is not a video store


def _finite(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


@dg.asset(
    partitions_def=variants,
    deps=[finetuned_model],
    group_name="evaluation",
    description="Held-out validation loss, Frechet distance, motion fidelity and temporal consistency of the "
    "Stage III model, sample videos, and the registration decision; one MLflow run (stage=eval).",
)
def evaluation(context: dg.AssetExecutionContext, svdpipe: SvdpipeResource) -> dg.MaterializeResult:
    from training import model_store
    from training.evaluate import evaluate, log_evaluation
    from training.registry import register_if_not_worse

    cfg, root, variant = svdpipe.config, svdpipe.storage, context.partition_key
    info = guards.model(root, variant, 3)
    guards.latents(root, variant)
    result = evaluate(root, variant, cfg, stage=3, progress=True)
    run_id = log_evaluation(result, cfg, variant, info["dataset_version"], info.get("run_id"))
    from svdpipe.dvc_hash import dvc_hashes

    # The DVC hashes of what was evaluated: the model folder and the held-out latents.
    dvc = dvc_hashes(root, {"model": model_store.model_key(variant, 3), "latents": f"latents/{variant}"})
    import mlflow as mlflow_lib

    client = mlflow_lib.MlflowClient()
    for name, value in dvc.items():
        client.set_tag(run_id, f"dvc.{name}", value)
    decision = None
    if info.get("model_uri"):
        decision = register_if_not_worse(cfg, info["model_uri"], f"svdpipe-{variant}", result.metrics)
        context.log.info(f"registry: {decision.rule}; registered={decision.registered}")
    metadata = {
        "mlflow_run_id": run_id,
        "model_run_id": info.get("run_id"),
        "dataset_version": info["dataset_version"],
        "dvc_hashes": dg.MetadataValue.json(dvc),
        "held_out": result.held_out,
        "videos": result.n_videos,
        "notes": dg.MetadataValue.json(result.notes),
        "metrics": dg.MetadataValue.json({k: _finite(v) for k, v in result.metrics.items()}),
    }
    for key in ("val_loss", "motion_fidelity", "temporal_consistency"):
        if _finite(result.metrics.get(key)) is not None:
            metadata[key] = float(result.metrics[key])
    gifs = [p for p in result.video_paths if p.suffix == ".gif" and p.name.startswith("gen_")]
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
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(
    deps=[evaluation],
    group_name="evaluation",
    automation_condition=dg.AutomationCondition.eager(),
    description="The newest evaluation of every curation variant side by side: a table and a plot, in this "
    "asset's metadata and as an MLflow run (stage=compare). Does curation make better models?",
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
        "notes": dg.MetadataValue.json(comparison.notes),
        "mlflow_run_id": run_id,
    }
    if comparison.png is not None:
        metadata["plot"] = dg.MetadataValue.md(inline_image(comparison.png.read_bytes(), "variant comparison"))
    return dg.MaterializeResult(metadata=metadata)
