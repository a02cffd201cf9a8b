"""The MLflow Model Registry step: log the stage-3 pipeline as a pyfunc model, register it if not worse.

Rule (``register_if_not_worse``): a candidate becomes a new version of the registered model ``name`` only if
- it was evaluated on clips it never trained on (``held_out``; an evaluation on training clips never registers),
- its ``metric`` (``evaluation.register_metric``, default ``val_loss``) can rank at all: a direction in
  ``training.metrics.directions`` (the same table the comparison reads), not NaN, and for a metric a frozen video
  maximizes (temporal consistency) samples that move,
- and the metric is not worse than the champion's (the version with alias ``champion``, else the newest one):
  ``candidate <= champion`` when lower is better, ``>=`` otherwise (a tie registers).
The first version always registers; so does a candidate when the champion was measured on another evaluation set
(``eval_set``; its figure says nothing about this test) or records no figure (registered by hand). A registered
candidate becomes the ``champion``. The figures travel with every version as tags (``metric.<name>``,
``register_metric``, ``register_value``, ``eval_set``, ``rule``) and in its description; the registered model
describes the rule. The decision is also written to the candidate's run as tags (``registry.*``) when the model
URI names a run or a logged model of one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import mlflow
from mlflow.pyfunc import PythonModel

from svdpipe.config_schema import SvdpipeConfig

__all__ = ["Decision", "SvdPipelineModel", "log_pipeline_model", "register_if_not_worse"]


@dataclass
class Decision:
    registered: bool
    version: str | None  # the new version if registered, else None
    rule: str
    metric: str
    candidate_value: float
    current_value: float | None
    current_version: str | None


class SvdPipelineModel(PythonModel):
    """pyfunc wrapper of a diffusers ``StableVideoDiffusionPipeline`` folder (artifact ``pipeline``).

    ``predict`` takes a DataFrame with an ``image`` column (a file path, or base64 of an encoded image) and
    optional per-row columns ``num_frames``, ``fps``, ``motion_bucket_id``, ``noise_aug_strength``,
    ``num_inference_steps``, ``min_guidance_scale``, ``max_guidance_scale``, ``seed``, ``height``, ``width``;
    it returns one uint8 array (frames, H, W, 3) per row.
    """

    KNOBS: ClassVar[dict] = {"num_frames": int, "fps": int, "motion_bucket_id": int, "noise_aug_strength": float,
             "num_inference_steps": int, "min_guidance_scale": float, "max_guidance_scale": float,
             "height": int, "width": int}

    def load_context(self, context):
        import torch
        from diffusers import StableVideoDiffusionPipeline

        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.float16 if device == "cuda" else torch.float32
        self.pipe = StableVideoDiffusionPipeline.from_pretrained(context.artifacts["pipeline"], dtype=dtype).to(device)
        self.pipe.set_progress_bar_config(disable=True)

    @staticmethod
    def _image(value):
        import base64
        import io

        from PIL import Image

        if isinstance(value, str) and Path(value).is_file():
            return Image.open(value).convert("RGB")
        raw = value if isinstance(value, bytes) else base64.b64decode(value)
        return Image.open(io.BytesIO(raw)).convert("RGB")

    def predict(self, context, model_input, params=None):
        import numpy as np
        import pandas as pd
        import torch

        rows = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        out = []
        for _, row in rows.iterrows():
            kw = {k: cast(row[k]) for k, cast in self.KNOBS.items() if k in row and pd.notna(row[k])}
            seed = int(row["seed"]) if "seed" in row and pd.notna(row["seed"]) else 0
            frames = self.pipe(self._image(row["image"]), generator=torch.Generator().manual_seed(seed),
                               output_type="np", **kw).frames[0]
            out.append(np.clip(np.rint(np.asarray(frames) * 255), 0, 255).astype(np.uint8))
        return out


def _requirements() -> list[str]:
    import importlib.metadata as md

    pins = []
    for dist in ("mlflow", "diffusers", "torch", "transformers", "accelerate", "safetensors", "pillow", "pandas"):
        try:
            pins.append(f"{dist}=={md.version(dist)}")
        except md.PackageNotFoundError:
            continue
    return pins


def log_pipeline_model(pipeline_dir: str | Path, name: str = "svd_pipeline") -> str:
    """Log a stage-3 pipeline folder as a pyfunc model in the active run (one is started if none); its URI."""
    info = mlflow.pyfunc.log_model(
        name=name, python_model=SvdPipelineModel(), artifacts={"pipeline": str(pipeline_dir)},
        pip_requirements=_requirements(),
    )
    return info.model_uri


def _source_run(client: mlflow.MlflowClient, model_uri: str) -> str | None:
    if m := re.match(r"runs:/([^/]+)/", model_uri):
        return m.group(1)
    if m := re.match(r"models:/(m-[0-9a-f]+)$", model_uri):
        from mlflow.exceptions import MlflowException

        try:
            return client.get_logged_model(m.group(1)).source_run_id
        except MlflowException:  # not a logged model (a registered one, or an older store)
            return None
    return None


def _number(text: str | None) -> float | None:
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


CHAMPION = "champion"


def _model_description(name: str, metric: str) -> str:
    from training.metrics.directions import better

    return (f"{name}: Stage III image-to-video model (StableVideoDiffusionPipeline as pyfunc) of one curation "
            f"variant, trained by svdpipe. A version is registered only when its evaluation on held-out clips is "
            f"not worse than the champion's on {metric} ({better(metric)} is better) on the same evaluation set; "
            f"alias '{CHAMPION}' names the best version so far.")


def _version_description(metrics: dict[str, float], eval_set: str, rule: str) -> str:
    from training.metrics.directions import COUNT, SE, better

    shown = []
    for k, v in metrics.items():
        if better(k) is None or "/" in k:
            continue
        se, n = metrics.get(f"{SE}{k}"), metrics.get(f"{COUNT}{k}")
        pm = f" ± {se:.3g}" if se is not None and math.isfinite(se) else ""
        shown.append(f"{k} {v:.4g}{pm}" + (f" (n={int(n)})" if n is not None and math.isfinite(n) else ""))
    return f"evaluation set {eval_set or '?'}: " + ", ".join(shown) + f". {rule}"


def register_if_not_worse(
    cfg: SvdpipeConfig,
    model_uri_or_run: str,
    name: str,
    candidate_metrics: dict[str, float],
    metric: str | None = None,
    *,
    held_out: bool = True,
    eval_set: str = "",
    artifact_path: str = "svd_pipeline",
) -> Decision:
    """Register ``model_uri_or_run`` as a new version of ``name`` unless it is worse (module docstring).

    ``model_uri_or_run``: a model URI (``models:/m-...``, ``runs:/<id>/<path>``) or a bare run id, read as
    ``runs:/<id>/<artifact_path>``. ``held_out``: the evaluation's clips were not trained on; ``eval_set``: the
    evaluation's fingerprint (figures compare only within one).
    """
    from svdpipe.tracking import ensure_experiment, tracking_uri
    from training.metrics.directions import better, not_worse, rank_blocker

    metric = metric or cfg.evaluation.register_metric
    if metric not in candidate_metrics:
        raise KeyError(f"candidate metrics lack the registration metric {metric!r}: {sorted(candidate_metrics)}")
    direction = better(metric)
    if direction is None:
        raise ValueError(f"evaluation.register_metric={metric!r} has no better direction (a count or context "
                         "figure): use val_loss, fvd/fd_*, motion_fidelity or temporal_consistency")
    uri = model_uri_or_run if ":" in model_uri_or_run else f"runs:/{model_uri_or_run}/{artifact_path}"
    ensure_experiment(cfg)
    mlflow.set_registry_uri(tracking_uri(cfg))
    client = mlflow.MlflowClient(tracking_uri(cfg), registry_uri=tracking_uri(cfg))
    value = float(candidate_metrics[metric])
    exists = _exists(client, name)
    champion = _champion(client, name) if exists else None
    current = _number(champion.tags.get(f"metric.{metric}")) if champion else None
    same_set = champion is not None and champion.tags.get("eval_set", "") == eval_set
    op = "<=" if direction == "lower" else ">="
    if champion is not None and champion.tags.get("candidate_uri") == uri and current == value and same_set:
        # The same model with the same evaluation (a rerun): it already is the champion.
        rule = f"{uri} already is version {champion.version} ({CHAMPION}) of {name}: not registered again"
        return Decision(False, None, rule, metric, value, current, str(champion.version))
    blocker = rank_blocker(metric, candidate_metrics, cfg.evaluation.static_motion_ratio)
    if not held_out:
        ok, why = False, "the evaluation ran on clips the model was trained on"
    elif blocker:
        ok, why = False, f"candidate cannot rank: {blocker}"
    elif champion is None:
        ok, why = True, "first version of the model"
    elif not same_set:
        ok, why = True, f"version {champion.version} was evaluated on another evaluation set: no comparable figure"
    elif current is None or math.isnan(current):
        ok, why = True, f"version {champion.version} records no {metric}: nothing to compare against"
    else:
        ok = not_worse(metric, value, current)
        why = f"candidate {metric} {value:.6g} {op if ok else ('>' if direction == 'lower' else '<')} " \
              f"{current:.6g} of version {champion.version}"
    rule = f"register if {metric} {op} the {CHAMPION}'s ({direction} is better) on the same evaluation set, " \
           f"evaluated on held-out clips: {'registered' if ok else 'refused'}, {why}"
    version = None
    if ok:
        if not exists:
            client.create_registered_model(name, description=_model_description(name, metric))
        else:
            client.update_registered_model(name, description=_model_description(name, metric))
        tags = {f"metric.{k}": str(float(v)) for k, v in candidate_metrics.items()}
        tags.update(register_metric=metric, register_value=str(value), rule=rule[:5000], candidate_uri=uri,
                    lower_is_better=str(direction == "lower").lower(), eval_set=eval_set,
                    previous_version=str(champion.version) if champion else "", previous_value=str(current))
        version = str(mlflow.register_model(uri, name, tags=tags).version)
        client.update_model_version(name, version, _version_description(candidate_metrics, eval_set, rule)[:5000])
        client.set_registered_model_alias(name, CHAMPION, version)
    run_id = _source_run(client, uri)
    if run_id:
        client.set_tag(run_id, "registry.decision", f"registered {name} v{version}" if ok else "refused")
        client.set_tag(run_id, "registry.rule", rule[:5000])
    return Decision(ok, version, rule, metric, value, current, str(champion.version) if champion else None)


def _champion(client: mlflow.MlflowClient, name: str):
    """The version with alias ``champion``, else the newest version (registered before aliases), else None."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        versions = client.search_model_versions(f"name = '{name}'")
        return max(versions, key=lambda v: int(v.version), default=None)


def _exists(client: mlflow.MlflowClient, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
        return True
    except MlflowException:
        return False
