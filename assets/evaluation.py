"""Evaluation per variant (metrics on the shared evaluation set, sample videos, the registration rule) and the
comparison of variants on one evaluation set.

``evaluation`` scores the Stage III model; Stage III's model is registered in the MLflow model registry as
``svdpipe-<variant>`` only when its evaluation on held-out clips is not worse than the champion's
(``evaluation.register_metric``; the rule and figures are in the materialization metadata and on the model
version). ``base_evaluation`` scores the Stage II text-to-video base model from the evaluation clips' captions, as
the paper compares curation variants; it is never registered. An unchanged model is not evaluated again.
``variant_comparison`` shows both stages, each on its own evaluation set.
"""

import math

import dagster as dg

from assets import guards
from assets.training import finetuned_model, video_model
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

    return _evaluate(context, svdpipe, 3, evaluate_variant)


@dg.asset(
    partitions_def=variants,
    deps=[video_model],
    group_name="evaluation",
    description="The Stage II text-to-video base model scored from text prompts, as the paper compares curation "
    "variants: validation loss at fixed sigmas and seeds on the evaluation set shared by every variant, and "
    "sample videos from the evaluation clips' captions; one MLflow run (stage=eval, evaluated_stage=2, tag "
    "eval_set), reused while the model is unchanged. Never registered (the registry holds Stage III models).",
)
def base_evaluation(context: dg.AssetExecutionContext, svdpipe: SvdpipeResource) -> dg.MaterializeResult:
    from training.evaluation_run import evaluate_base

    return _evaluate(context, svdpipe, 2, evaluate_base)


def _evaluate(context: dg.AssetExecutionContext, svdpipe: SvdpipeResource, stage: int, run) -> dg.MaterializeResult:
    """The partition's Stage ``stage`` model evaluated by ``run`` (evaluate_variant or evaluate_base), as metadata."""
    guards.model(svdpipe.storage, context.partition_key, stage)
    guards.latents(svdpipe.storage, context.partition_key)
    out = run(svdpipe.storage, context.partition_key, svdpipe.config, log=context.log.info)
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
    # The first generated sample: gen_XX (Stage III, from a frame) or text_XX (a base model, from a caption).
    gifs = [p for p in r.video_paths if p.suffix == ".gif" and p.name.startswith(("gen_", "text_"))]
    if gifs and gifs[0].stat().st_size <= MAX_INLINE_GIF:
        metadata["sample_video"] = dg.MetadataValue.md(inline_image(gifs[0].read_bytes(), gifs[0].stem, "image/gif"))
        if gifs[0].name.startswith("text_") and r.details.get("captions"):
            metadata["sample_prompt"] = str(r.details["captions"][0])  # what text_00 was sampled from
    if decision is not None:
        metadata.update({
            "registered": decision.registered,
            "registered_version": decision.version or "",
            "registration_rule": decision.rule,
            "candidate_value": _finite(decision.candidate_value),
            "current_value": _finite(decision.current_value),
        })
    return metadata


# The comparison is eager on new evaluations of either stage but never waits for Stage II ones (base evaluation
# is optional): only a missing Stage III evaluation holds it back, as before base evaluations existed.
_STAGE_III_MISSING = dg.AutomationCondition.any_deps_missing().ignore(dg.AssetSelection.assets(base_evaluation))


@dg.asset(
    deps=[evaluation, base_evaluation],
    group_name="evaluation",
    automation_condition=dg.AutomationCondition.eager().replace("any_deps_missing", _STAGE_III_MISSING),
    description="The newest evaluation of every curation variant on one evaluation set side by side, per "
    "evaluated stage (the Stage III models, then the Stage II base models where base_evaluation ran): tables and "
    "plots with standard errors, in this asset's metadata and as an MLflow run (stage=compare). Does curation make "
    "better models?",
)
def variant_comparison(svdpipe: SvdpipeResource) -> dg.MaterializeResult:
    from training.compare import compare_stages, log_comparison, stage_prefix

    cfg = svdpipe.config
    comparisons = compare_stages(cfg)
    if not comparisons:
        raise dg.Failure("no evaluation runs in MLflow yet: materialize evaluation (or base_evaluation) for the "
                         "variants first")
    run_id = log_comparison(comparisons, cfg)
    metadata = {"table": dg.MetadataValue.md("\n\n".join(c.markdown for c in comparisons)),
                "mlflow_run": mlflow_run(cfg, run_id)}
    # Stage III's figures under their plain names (as before base evaluations existed), another stage's prefixed.
    for c in comparisons:
        pre = stage_prefix(c.stage)
        metadata.update({f"{pre}variants": dg.MetadataValue.json(c.table["variant"].tolist()),
                         f"{pre}eval_set": c.eval_set, f"{pre}notes": dg.MetadataValue.json(c.notes)})
        if c.png is not None:
            metadata[f"{pre}plot"] = dg.MetadataValue.md(inline_image(c.png.read_bytes(),
                                                                      f"Stage {'I' * c.stage} variant comparison"))
    return dg.MaterializeResult(metadata=metadata)
