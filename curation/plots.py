"""Pictures that say more than numbers: score histograms with a variant's thresholds drawn on them.

Sized for where people look at them: the Dagster asset-metadata dialog (at most 80 % of the window wide, an
image shown at its own size when it fits) and MLflow's artifact view. A 2 x 2 grid of 880 x 620 pixels fits a
laptop's dialog unscaled, so its 9-10 pt text stays legible; one row of four panels would be shrunk to half.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from curation.variants import Selection  # noqa: E402

SCORES = ("motion_score", "text_area_ratio", "aesthetic_score", "clip_text_similarity")
AXIS_LABELS = {  # what a score measures, on its x axis
    "motion_score": "mean optical-flow magnitude (px/frame)",
    "text_area_ratio": "largest text area / frame area",
    "aesthetic_score": "aesthetic score (LAION-style predictor)",
    "clip_text_similarity": "CLIP image-caption cosine similarity",
}
FIGSIZE, DPI = (8.8, 6.2), 100  # 880 x 620 pixels
THRESHOLD_COLOR, ALL_COLOR, KEPT_COLOR = "#d62728", "#9aa5b1", "#2f7ed8"


def score_figure(clips: pd.DataFrame, selection: Selection, title: str = "") -> plt.Figure:
    """One histogram per score over all scored clips, kept clips overlaid, each threshold a dashed red line
    labelled with its side and value (``min 0.31``) above the bars; one legend for the figure. The caller closes
    the figure."""
    fig, axes = plt.subplots(2, 2, figsize=FIGSIZE, dpi=DPI, constrained_layout=True)
    kept = set(selection.kept["clip_id"])
    for ax, score in zip(axes.flat, SCORES):
        values = clips[score].dropna()
        ax.set_xlabel(AXIS_LABELS[score], fontsize=9)
        ax.tick_params(labelsize=8)
        if values.empty:
            ax.set_title(f"{score}: no values", fontsize=10)
            continue
        bins = 30 if values.nunique() > 1 else 1
        kept_values = clips.loc[clips["clip_id"].isin(kept), score].dropna()
        ax.hist(values, bins=bins, color=ALL_COLOR)
        ax.hist(kept_values, bins=bins, range=(values.min(), values.max()), color=KEPT_COLOR, alpha=0.8)
        ax.set_ylim(top=ax.get_ylim()[1] * 1.25)  # headroom: threshold labels sit above the bars
        for label, bounds in selection.thresholds.items():
            if label.split("#")[0] != score:
                continue
            for side, value in bounds.items():
                ax.axvline(value, color=THRESHOLD_COLOR, linestyle="--", linewidth=1.5)
                ax.annotate(f"{side} {value:.3g}", xy=(value, 1), xycoords=("data", "axes fraction"), xytext=(0, -4),
                            textcoords="offset points", ha="center", va="top", color=THRESHOLD_COLOR, fontsize=9,
                            bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": THRESHOLD_COLOR, "lw": 0.8})
        passing = selection.kept_by_filter.get(score)
        ax.set_title(score if passing is None else f"{score}: {passing} of {selection.pool} pass", fontsize=10)
        ax.set_ylabel("clips", fontsize=9)
    handles = [Patch(color=ALL_COLOR, label="all scored clips"), Patch(color=KEPT_COLOR, label="kept by the variant"),
               Line2D([], [], color=THRESHOLD_COLOR, linestyle="--", label="threshold (side and value)")]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=9, frameon=False)
    fig.suptitle(title or f"variant '{selection.variant}': {len(selection.kept)} of {selection.pool} usable clips "
                 "kept", fontsize=11)
    return fig


def score_histograms(clips: pd.DataFrame, selection: Selection, title: str = "") -> bytes:
    """``score_figure`` as PNG bytes (``FIGSIZE`` at ``DPI``)."""
    fig = score_figure(clips, selection, title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return buf.getvalue()
