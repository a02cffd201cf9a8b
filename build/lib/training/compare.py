"""Comparison of curation variants: the newest evaluation run of each variant, side by side.

Reads the MLflow tracking store (runs tagged ``stage=eval`` by ``training.evaluate.log_evaluation``), keeps the
newest run per ``curation_variant`` (by start time, then end time), and renders a table (pandas, markdown) and a
bar chart (one panel per metric, one bar per variant, the better direction in each panel's title).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from svdpipe.config import SvdpipeConfig

__all__ = ["Comparison", "better_direction", "compare_variants", "log_comparison"]

ID_COLUMNS = ["variant", "dataset_version", "run_id", "evaluated_stage", "model_run_id", "start_time"]
_HEADLINE = ("val_loss", "fvd", "fd_", "motion_fidelity", "temporal_consistency")


def better_direction(metric: str) -> str | None:
    """"lower", "higher", or None for counts (n_videos, n_val_clips)."""
    if metric.startswith(("val_loss", "fvd", "fd_")):
        return "lower"
    if metric in ("motion_fidelity", "temporal_consistency"):
        return "higher"
    return None


def _order(metric: str) -> tuple:
    head = next((i for i, p in enumerate(_HEADLINE) if metric == p or (p.endswith("_") and metric.startswith(p))), 9)
    return (better_direction(metric) is None, head, metric)


@dataclass
class Comparison:
    table: pd.DataFrame  # one row per variant: ID_COLUMNS then the metrics
    metrics: list[str]
    markdown: str
    png: Path | None
    notes: list[str] = field(default_factory=list)


def _markdown(table: pd.DataFrame, metrics: list[str]) -> str:
    shown = table[["variant", "dataset_version", "run_id", *metrics]].copy()
    shown["run_id"] = shown["run_id"].str[:8]
    shown.columns = ["variant", "dataset_version", "run", *[
        f"{m} ({'↓' if better_direction(m) == 'lower' else '↑' if better_direction(m) else '#'})" for m in metrics
    ]]
    legend = "↓ lower is better, ↑ higher is better, # count; newest evaluation run per curation variant."
    return shown.to_markdown(index=False, floatfmt=".4g") + "\n\n" + legend + "\n"


def _plot(table: pd.DataFrame, metrics: list[str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, max(1, len(metrics)))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    variants = table["variant"].tolist()
    for ax, metric in zip(axes.flat, metrics):
        values = [float(v) for v in pd.to_numeric(table[metric], errors="coerce")]
        ax.bar(range(len(variants)), [0 if math.isnan(v) else v for v in values],
               color=[colors[i % len(colors)] for i in range(len(variants))])
        for i, v in enumerate(values):
            nan = math.isnan(v)
            ax.annotate("NaN" if nan else f"{v:.3g}", (i, 0 if nan else v), ha="center", va="bottom",
                        fontsize=7)
        ax.set_xticks(range(len(variants)), variants, rotation=20, fontsize=8)
        d = better_direction(metric)
        ax.set_title(f"{metric}\n({d} is better)" if d else f"{metric}\n(count)", fontsize=8)
    for ax in axes.flat[len(metrics):]:
        ax.axis("off")
    fig.suptitle("Curation variants: newest evaluation run each")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def compare_variants(
    cfg: SvdpipeConfig, experiment: str | None = None, out_dir: str | Path | None = None
) -> Comparison:
    """Newest ``stage=eval`` run per ``curation_variant`` in ``experiment`` (default ``cfg.mlflow.experiment``).

    The PNG goes to ``out_dir`` (a new temporary folder if None); with no evaluation runs the table is empty
    and there is no PNG.
    """
    import mlflow

    from svdpipe.tracking import ensure_experiment, tracking_uri

    ensure_experiment(cfg)  # sets the tracking URI
    client = mlflow.MlflowClient(tracking_uri(cfg))
    name = experiment or cfg.mlflow.experiment
    exp = client.get_experiment_by_name(name)
    runs = pd.DataFrame() if exp is None else mlflow.search_runs(
        experiment_ids=[exp.experiment_id], filter_string="tags.stage = 'eval'", max_results=50_000
    )
    if runs.empty:
        empty = pd.DataFrame(columns=ID_COLUMNS)
        return Comparison(empty, [], "_no evaluation runs_\n", None, [f"no stage=eval runs in experiment {name!r}"])
    if "tags.curation_variant" not in runs:
        runs["tags.curation_variant"] = None
    runs = runs[runs["tags.curation_variant"].fillna("") != ""]
    runs = runs.sort_values(["start_time", "end_time"], ascending=False, na_position="last")
    newest = runs.drop_duplicates("tags.curation_variant", keep="first").sort_values("tags.curation_variant")
    metric_cols = [c for c in newest.columns if c.startswith("metrics.") and newest[c].notna().any()]
    metrics = sorted((c[len("metrics."):] for c in metric_cols), key=_order)

    def tag(t: str) -> pd.Series:
        return newest.get(f"tags.{t}", pd.Series([None] * len(newest), index=newest.index))

    table = pd.DataFrame({
        "variant": newest["tags.curation_variant"], "dataset_version": tag("dataset_version"),
        "run_id": newest["run_id"], "evaluated_stage": tag("evaluated_stage"), "model_run_id": tag("model_run_id"),
        "start_time": newest["start_time"],
        **{m: newest[f"metrics.{m}"] for m in metrics},
    }).reset_index(drop=True)
    notes = [f"{len(runs)} evaluation runs, newest of {len(table)} variants"]
    stages = set(table["evaluated_stage"].dropna())
    if len(stages) > 1:
        notes.append(f"variants were evaluated at different stages {sorted(stages)}: not comparable")
    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="svdpipe-compare-"))
    png = _plot(table, metrics, out / "comparison.png") if metrics else None
    return Comparison(table, metrics, _markdown(table, metrics), png, notes)


def log_comparison(comparison: Comparison, cfg: SvdpipeConfig) -> str:
    """An MLflow run (tag stage=compare) with comparison.csv/.md/.png as artifacts; returns its run id."""
    import mlflow

    from svdpipe.tracking import start_run

    variants = ",".join(comparison.table["variant"].astype(str))
    tags = {"stage": "compare", "variants": variants[:4000],
            "compared_runs": ",".join(comparison.table["run_id"].astype(str))[:4000]}
    with start_run(cfg, "compare-variants", tags) as run:
        mlflow.log_text(comparison.table.to_csv(index=False), "comparison.csv")
        mlflow.log_text(comparison.markdown + "\n" + "\n".join(f"- {n}" for n in comparison.notes) + "\n",
                        "comparison.md")
        if comparison.png is not None:
            mlflow.log_artifact(str(comparison.png))
        return run.info.run_id
