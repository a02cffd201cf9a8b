"""One variant's evaluation step, end to end: evaluate (unless this model was already evaluated on this test),
log to MLflow, and for Stage III apply the registration rule. The Dagster assets call ``evaluate_variant``
(Stage III, ``evaluation``) and ``evaluate_base`` (the Stage II base model from text prompts, ``base_evaluation``:
the paper compares curation variants on these) and show the outcome.

An evaluation is identified by the model (the DVC hash of its folder) and the test (``eval_set``, see
``training.eval_set.protocol_fingerprint``); a finished MLflow run with both tags is reused, not run again. Both
steps share that and the MLflow run (``training.evaluate.log_evaluation``: tags stage=eval, evaluated_stage,
curation_variant, eval_set, model_hash, dvc.model, dvc.latents); only Stage III's model is registered.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from svdpipe.config_schema import SvdpipeConfig
from svdpipe.storage import Storage
from training.evaluate import EvalResult
from training.registry import Decision

__all__ = ["EvaluationOutcome", "evaluate_base", "evaluate_variant", "find_evaluation", "trained_clips"]


@dataclass
class EvaluationOutcome:
    result: EvalResult
    run_id: str
    reused: bool  # True: an earlier run of this model on this test, not evaluated again
    model_info: dict
    decision: Decision | None = None
    dvc: dict[str, str] = field(default_factory=dict)


def find_evaluation(cfg: SvdpipeConfig, variant: str, stage: int, model_hash: str, eval_set: str) -> str | None:
    """The newest finished evaluation run of this model on this evaluation set, if any."""
    import mlflow

    from svdpipe.tracking import ensure_experiment, tracking_uri

    experiment_id = ensure_experiment(cfg)
    runs = mlflow.MlflowClient(tracking_uri(cfg)).search_runs(
        [experiment_id],
        f"tags.stage = 'eval' and tags.curation_variant = '{variant}' and tags.evaluated_stage = '{stage}' and "
        f"tags.model_hash = '{model_hash}' and tags.eval_set = '{eval_set}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    return runs[0].info.run_id if runs else None


def trained_clips(cfg: SvdpipeConfig, root: Storage, variant: str, stage: int) -> set[str] | None:
    """Clip ids the training runs of stages 1..``stage`` logged (``train_clips.json``); None if none is known."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from svdpipe.tracking import ensure_experiment
    from training import model_store

    ensure_experiment(cfg)
    seen: set[str] | None = None
    for s in range(1, stage + 1):
        run_id = (model_store.read_info(root, model_store.model_key(variant, s)) or {}).get("run_id")
        if not run_id:
            continue
        try:
            ids = json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/train_clips.json"))
        except (MlflowException, OSError, ValueError):
            continue
        seen = (seen or set()) | set(ids)
    return seen


def _evaluate_or_reuse(root: Storage, variant: str, cfg: SvdpipeConfig, stage: int,
                       run: Callable[[Collection[str] | None], EvalResult],
                       log: Callable[[str], None]) -> EvaluationOutcome:
    """The evaluation of ``models/<variant>/stage<stage>``: the finished MLflow run of this model on this test if
    there is one, else ``run(trained_on)``'s result, logged as a new run. Nothing is registered here."""
    import mlflow

    from svdpipe.dvc_hash import dvc_hashes
    from training import model_store
    from training.eval_set import protocol_fingerprint
    from training.evaluate import log_evaluation
    from training.latents import prefix, shape_key

    key = model_store.model_key(variant, stage)
    info = model_store.read_info(root, key)
    if info is None:
        raise FileNotFoundError(f"no Stage {stage} model for {variant!r} at {root.uri(key)}: train it first "
                                f"(svdpipe train --variant {variant})")
    index_key = f"{prefix(variant, shape_key(cfg.training.stages[str(stage)]))}/index.json"
    if not root.exists(index_key):
        raise FileNotFoundError(f"{root.uri(index_key)} is missing: build the latents (svdpipe train --variant "
                                f"{variant})")
    fingerprint = json.loads(root.read_text(index_key)).get("fingerprint", {})
    eval_set = protocol_fingerprint(fingerprint, cfg, stage)
    # The DVC hashes of what is evaluated: the model folder and the latents holding the evaluation clips.
    dvc = dvc_hashes(root, {"model": key, "latents": f"latents/{variant}"})
    run_id = find_evaluation(cfg, variant, stage, dvc["model"], eval_set)
    if run_id is not None:
        result = EvalResult.from_json(mlflow.artifacts.load_text(f"runs:/{run_id}/metrics.json"))
        log(f"{variant}: Stage {stage} model {dvc['model'][:12]} was already evaluated on eval_set {eval_set} "
            f"(MLflow run {run_id}): not evaluated again")
        return EvaluationOutcome(result, run_id, True, info, None, dvc)
    result = run(trained_clips(cfg, root, variant, stage))
    tags = {"model_hash": dvc["model"], **{f"dvc.{k}": v for k, v in dvc.items()}}
    run_id = log_evaluation(result, cfg, variant, info.get("dataset_version"), info.get("run_id"), tags)
    return EvaluationOutcome(result, run_id, False, info, None, dvc)


def evaluate_variant(root: Storage, variant: str, cfg: SvdpipeConfig, *, stage: int = 3, progress: bool = True,
                     log: Callable[[str], None] = print) -> EvaluationOutcome:
    """Evaluate ``models/<variant>/stage<stage>`` (or reuse its evaluation), log it, apply the registration rule."""
    from training.evaluate import evaluate
    from training.registry import register_if_not_worse

    out = _evaluate_or_reuse(root, variant, cfg, stage, lambda seen: evaluate(
        root, variant, cfg, stage=stage, progress=progress, trained_on=seen), log)
    if out.model_info.get("model_uri"):
        r = out.result
        out.decision = register_if_not_worse(cfg, out.model_info["model_uri"], f"svdpipe-{variant}", r.metrics,
                                             held_out=r.held_out, eval_set=r.eval_set)
        log(f"registry: {out.decision.rule}; registered={out.decision.registered}")
    return out


def evaluate_base(root: Storage, variant: str, cfg: SvdpipeConfig, *, stage: int = 2,
                  log: Callable[[str], None] = print) -> EvaluationOutcome:
    """Evaluate the text-to-video base model ``models/<variant>/stage<stage>`` from its evaluation clips' captions
    (``training.evaluate_base``), or reuse its evaluation, and log it (tag evaluated_stage=<stage>). Never
    registered: the registry holds the Stage III models."""
    from training.evaluate_base import evaluate_text_stage

    return _evaluate_or_reuse(root, variant, cfg, stage, lambda seen: evaluate_text_stage(
        root, variant, cfg, stage=stage, trained_on=seen), log)
