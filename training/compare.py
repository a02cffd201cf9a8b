"""Comparison of curation variants: evaluations on the same evaluation set, side by side, per evaluated stage.

Reads the MLflow tracking store (runs tagged ``stage=eval`` by ``training.evaluate.log_evaluation``), keeps the
runs of one evaluated stage (tag ``evaluated_stage``: the Stage III models, or the Stage II base models the paper
compares curation variants on; ``compare_stages`` gives one comparison per stage), of those only runs of one
``eval_set`` (the newest run's unless asked for another: figures measured on other clips, seeds or
sigmas do not compare), the newest of those per ``curation_variant`` (by start time, then end time), and renders
a table (pandas, markdown: value ± standard error, the best per metric starred) and a bar chart (one panel per
metric, one bar per variant with its standard error and sample count; an axis that starts near the figures when
they are close, so that a difference is visible). Directions come from ``training.metrics.directions``, the table
the registration rule reads too; a figure that cannot rank (static samples for temporal consistency) never wins.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from svdpipe.config_schema import SvdpipeConfig
from svdpipe.tracking import HEADLINE_METRICS, headline_rank
from training.metrics.directions import COUNT, SE, better, is_uncertainty, rank_blocker

__all__ = ["EVALUATED_STAGES", "Comparison", "axis_range", "best_variants", "better_direction", "compare_stages",
           "compare_variants", "log_comparison", "stage_prefix"]

ID_COLUMNS = ["variant", "dataset_version", "run_id", "evaluated_stage", "model_run_id", "eval_set", "held_out",
              "start_time"]
CLOSE = 0.5  # figures whose spread is under this share of their size get an axis that does not start at zero
# The stages compared, in the order shown: the finetuned (released) models, then the base models.
EVALUATED_STAGES = (3, 2)
STAGE_TITLES = {3: "Stage III models (image-to-video finetune)",
                2: "Stage II base models (text-to-video, sampled from the evaluation clips' captions)"}


def better_direction(metric: str) -> str | None:
    """"lower", "higher", or None for counts and context figures (``training.metrics.directions``)."""
    return better(metric)


def _order(metric: str) -> tuple:
    head = headline_rank(metric)
    return (better(metric) is None and head == len(HEADLINE_METRICS), head, metric)


@dataclass
class Comparison:
    table: pd.DataFrame  # one row per variant: ID_COLUMNS, the metrics, then se/<m> and n/<m>
    metrics: list[str]
    markdown: str
    png: Path | None
    notes: list[str] = field(default_factory=list)
    eval_set: str = ""
    best: dict[str, str] = field(default_factory=dict)  # metric -> variant
    stage: int = 3  # the evaluated stage (tag evaluated_stage) every row is of


def axis_range(values: list[float], errors: list[float]) -> tuple[float, float, bool]:
    """(low, high, from_zero) of a panel: from zero unless the figures (± errors) are close and of one sign."""
    pairs = [(v, 0.0 if e is None or math.isnan(e) else abs(e)) for v, e in zip(values, errors) if math.isfinite(v)]
    if not pairs:
        return 0.0, 1.0, True
    lo, hi = min(v - e for v, e in pairs), max(v + e for v, e in pairs)
    size = max(abs(lo), abs(hi))
    span = (hi - lo) or size * 0.1 or 1.0
    if (lo > 0 or hi < 0) and hi - lo < CLOSE * size:
        return lo - 0.2 * span, hi + 0.3 * span, False
    return min(0.0, lo - 0.05 * span), max(0.0, hi + 0.2 * span), True


def best_variants(table: pd.DataFrame, metrics: list[str], static_ratio: float) -> dict[str, str]:
    """The variant with the better figure per ranked metric; figures that cannot rank are left out."""
    out = {}
    for m in metrics:
        d = better(m)
        if d is None:
            continue
        rows = [(float(r[m]), r["variant"]) for _, r in table.iterrows()
                if rank_blocker(m, {k: float(r[k]) for k in table.columns if _is_number(r[k])}, static_ratio) is None]
        if rows:
            out[m] = (min if d == "lower" else max)(rows)[1]
    return out


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _cell(row: pd.Series, m: str, best: dict[str, str], static_ratio: float) -> str:
    v = row.get(m)
    if v is None or not _is_number(v) or math.isnan(v):
        return "NaN"
    se = row.get(f"{SE}{m}")
    text = f"{v:.4g}" + (f" ± {se:.2g}" if _is_number(se) and math.isfinite(se) else "")
    if best.get(m) == row["variant"]:
        text += " *"
    figures = {k: float(row[k]) for k in row.index if _is_number(row[k])}
    blocker = rank_blocker(m, figures, static_ratio) if better(m) else None
    return text + (" (static)" if blocker and blocker.startswith("static") else "")


def _title(stage: int) -> str:
    return STAGE_TITLES.get(stage, f"Stage {stage} models")


def _markdown(table: pd.DataFrame, metrics: list[str], best: dict[str, str], static_ratio: float,
              eval_set: str, stage: int) -> str:
    arrows = {"lower": "↓", "higher": "↑", None: "#"}
    rows = []
    for _, r in table.iterrows():
        rows.append([r["variant"], r["eval_set"], r["dataset_version"], str(r["run_id"])[:8],
                     *[_cell(r, m, best, static_ratio) for m in metrics]])
    shown = pd.DataFrame(rows, columns=["variant", "eval_set", "dataset_version", "run",
                                        *[f"{m} ({arrows[better(m)]})" for m in metrics]])
    head = f"### {_title(stage)}\n\nEvery variant on evaluation set {eval_set} (the same clips, seeds and sigmas).\n\n"
    legend = ("↓ lower is better, ↑ higher is better, # count or context; ± standard error; * best; (static): the "
              "samples barely move, so their temporal consistency cannot win. Newest evaluation run per curation "
              "variant on one evaluation set.")
    return head + shown.to_markdown(index=False) + "\n\n" + legend + "\n"


def _plot(table: pd.DataFrame, metrics: list[str], path: Path, eval_set: str, stage: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Three panels a row, 300 px each: the picture fits the Dagster metadata dialog unscaled (it grows downwards).
    cols = min(3, max(1, len(metrics)))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.9 * rows), squeeze=False, constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    variants = table["variant"].tolist()
    for ax, metric in zip(axes.flat, metrics):
        values = [float(v) for v in pd.to_numeric(table[metric], errors="coerce")]
        errors = [float(v) for v in pd.to_numeric(table.get(f"{SE}{metric}", pd.Series([float("nan")] * len(table))),
                                                  errors="coerce")]
        counts = pd.to_numeric(table.get(f"{COUNT}{metric}", pd.Series([None] * len(table))), errors="coerce")
        lo, hi, from_zero = axis_range(values, errors)
        base = 0.0 if from_zero else lo  # bars start at the axis' bottom when it is not zero
        ax.bar(range(len(variants)), [0 if math.isnan(v) else v - base for v in values], bottom=base,
               yerr=[0 if math.isnan(e) else e for e in errors], capsize=4,
               color=[colors[i % len(colors)] for i in range(len(variants))])
        for i, v in enumerate(values):
            n = counts.iloc[i]
            label = "NaN" if math.isnan(v) else f"{v:.3g}" + (f"\nn={int(n)}" if not math.isnan(n) else "")
            # Beside the error bar, not across it.
            ax.annotate(label, (i, base if math.isnan(v) else v), ha="left", va="bottom", fontsize=7,
                        xytext=(5, 2), textcoords="offset points")
        ax.set_ylim(lo, hi)
        ax.ticklabel_format(axis="y", useOffset=False)  # tick labels read as the figures, not as offsets
        ax.set_xticks(range(len(variants)), variants, rotation=20, fontsize=8)
        d = better(metric)
        axis = "" if from_zero else f", axis from {lo:.3g}"
        ax.set_title(f"{metric}\n({d} is better{axis})" if d else f"{metric}\n(count or context{axis})", fontsize=8)
    for ax in axes.flat[len(metrics):]:
        ax.axis("off")
    fig.suptitle(f"Stage {'I' * stage}: curation variants on evaluation set {eval_set} (error bars: ± standard error)",
                 fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def compare_variants(
    cfg: SvdpipeConfig, experiment: str | None = None, out_dir: str | Path | None = None, eval_set: str | None = None,
    stage: int = 3,
) -> Comparison:
    """Newest ``stage=eval`` run of ``stage``'s models per ``curation_variant`` on one evaluation set (module
    docstring).

    ``eval_set``: which one (default: the newest evaluation run's). The PNG goes to ``out_dir`` (a new temporary
    folder if None; ``comparison.png`` for Stage III, ``comparison_stage<N>.png`` for another); with no evaluation
    runs the table is empty and there is no PNG.
    """
    import mlflow

    from svdpipe.tracking import ensure_experiment, tracking_uri

    ensure_experiment(cfg)  # sets the tracking URI
    client = mlflow.MlflowClient(tracking_uri(cfg))
    name = experiment or cfg.mlflow.experiment
    exp = client.get_experiment_by_name(name)
    runs = pd.DataFrame() if exp is None else mlflow.search_runs(
        experiment_ids=[exp.experiment_id], max_results=50_000,
        filter_string=f"tags.stage = 'eval' and tags.evaluated_stage = '{stage}'",
    )
    empty = Comparison(pd.DataFrame(columns=ID_COLUMNS), [], f"_no evaluation runs of Stage {stage} models_\n", None,
                       stage=stage)
    none = f"no stage=eval runs of Stage {stage} models (tag evaluated_stage={stage}) in experiment {name!r}"
    if runs.empty:
        empty.notes.append(none)
        return empty
    for t in ("curation_variant", "eval_set"):
        if f"tags.{t}" not in runs:
            runs[f"tags.{t}"] = None
    runs = runs[runs["tags.curation_variant"].fillna("") != ""]
    runs = runs.sort_values(["start_time", "end_time"], ascending=False, na_position="last")
    notes = []
    untagged = runs["tags.eval_set"].fillna("") == ""
    if untagged.any():
        notes.append(f"{int(untagged.sum())} evaluation run(s) without an eval_set tag left out (evaluate again)")
    runs = runs[~untagged]
    if runs.empty:
        empty.notes.extend(notes or [none])
        return empty
    chosen = eval_set or runs["tags.eval_set"].iloc[0]
    same = runs[runs["tags.eval_set"] == chosen]
    if same.empty:
        empty.notes.append(f"no evaluation run on eval_set {chosen!r}")
        return empty
    newest = same.drop_duplicates("tags.curation_variant", keep="first").sort_values("tags.curation_variant")
    others = sorted(set(runs["tags.curation_variant"]) - set(newest["tags.curation_variant"]))
    notes.insert(0, f"compared on eval_set {chosen}: {len(same)} evaluation run(s), newest of {len(newest)} "
                    f"variant(s)")
    if others:
        notes.append(f"left out, evaluated only on other evaluation sets: {', '.join(others)} (evaluate them again)")
    metric_cols = [c for c in newest.columns if c.startswith("metrics.") and newest[c].notna().any()]
    all_keys = [c[len("metrics."):] for c in metric_cols]
    metrics = sorted((k for k in all_keys if not is_uncertainty(k)), key=_order)
    spreads = sorted(k for k in all_keys if is_uncertainty(k))

    def tag(t: str) -> pd.Series:
        return newest.get(f"tags.{t}", pd.Series([None] * len(newest), index=newest.index))

    table = pd.DataFrame({
        "variant": newest["tags.curation_variant"], "dataset_version": tag("dataset_version"),
        "run_id": newest["run_id"], "evaluated_stage": tag("evaluated_stage"), "model_run_id": tag("model_run_id"),
        "eval_set": tag("eval_set"), "held_out": tag("held_out"), "start_time": newest["start_time"],
        **{m: newest[f"metrics.{m}"] for m in metrics + spreads},
    }).reset_index(drop=True)
    trained_on = table.loc[table["held_out"].fillna("true") != "true", "variant"].tolist()
    if trained_on:
        notes.append(f"evaluated on clips the model trained on (not a fair figure): {', '.join(trained_on)}")
    ratio = cfg.evaluation.static_motion_ratio
    best = best_variants(table, metrics, ratio)
    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="svdpipe-compare-"))
    png_name = "comparison.png" if stage == EVALUATED_STAGES[0] else f"comparison_stage{stage}.png"
    png = _plot(table, metrics, out / png_name, chosen, stage) if metrics else None
    return Comparison(table, metrics, _markdown(table, metrics, best, ratio, chosen, stage), png, notes, chosen, best,
                      stage)


def compare_stages(cfg: SvdpipeConfig, experiment: str | None = None,
                   out_dir: str | Path | None = None) -> list[Comparison]:
    """``compare_variants`` of each of ``EVALUATED_STAGES`` that has evaluation runs, in that order (Stage III,
    then the Stage II base models); each stage on its own newest evaluation set."""
    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="svdpipe-compare-"))
    found = [compare_variants(cfg, experiment, out, stage=s) for s in EVALUATED_STAGES]
    return [c for c in found if not c.table.empty]


def stage_prefix(stage: int) -> str:
    """How a stage's figures are named beside the headline stage's: "" for Stage III, ``stage<N>.`` else."""
    return "" if stage == EVALUATED_STAGES[0] else f"stage{stage}."


def log_comparison(comparisons: Comparison | list[Comparison], cfg: SvdpipeConfig) -> str:
    """One MLflow run (tag stage=compare) of one or more stages' comparisons: comparison.csv (every row, with its
    ``evaluated_stage``), comparison.md (a section per stage) and each stage's PNG as artifacts; tags
    ``eval_set`` and ``best.<metric>`` of Stage III, ``stage<N>.eval_set`` and ``stage<N>.best.<metric>`` of
    another stage. Returns the run id."""
    import mlflow

    from svdpipe.tracking import start_run

    parts = [comparisons] if isinstance(comparisons, Comparison) else list(comparisons)
    table = pd.concat([c.table for c in parts], ignore_index=True)
    variants = ",".join(dict.fromkeys(table["variant"].astype(str)))
    tags = {"stage": "compare", "variants": variants[:4000],
            "compared_runs": ",".join(table["run_id"].astype(str))[:4000]}
    for c in parts:
        pre = stage_prefix(c.stage)
        tags.update({f"{pre}eval_set": c.eval_set, **{f"{pre}best.{m}": v for m, v in c.best.items()}})
    with start_run(cfg, "compare-variants", tags) as run:
        mlflow.log_text(table.to_csv(index=False), "comparison.csv")
        mlflow.log_text("\n".join(c.markdown + "\n" + "".join(f"- {n}\n" for n in c.notes) for c in parts),
                        "comparison.md")
        for c in parts:
            if c.png is not None:
                mlflow.log_artifact(str(c.png))
        return run.info.run_id
