"""Pictures that say more than numbers: score histograms with a variant's thresholds drawn on them."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from curation.variants import Selection  # noqa: E402

SCORES = ("motion_score", "text_area_ratio", "aesthetic_score", "clip_text_similarity")


def score_histograms(clips: pd.DataFrame, selection: Selection, title: str = "") -> bytes:
    """PNG: one histogram per score over all scored clips, kept clips overlaid, thresholds as red lines."""
    fig, axes = plt.subplots(1, len(SCORES), figsize=(4 * len(SCORES), 3.2), constrained_layout=True)
    kept = set(selection.kept["clip_id"])
    for ax, score in zip(axes, SCORES):
        values = clips[score].dropna()
        if values.empty:
            ax.set_title(f"{score}\n(no values)")
            continue
        bins = 30 if values.nunique() > 1 else 1
        ax.hist(values, bins=bins, color="#9aa5b1", label="all scored")
        ax.hist(clips.loc[clips["clip_id"].isin(kept), score].dropna(), bins=bins, range=(values.min(), values.max()),
                color="#2f7ed8", alpha=0.8, label="kept")
        for label, bounds in selection.thresholds.items():
            if label.split("#")[0] != score:
                continue
            for side, value in bounds.items():
                ax.axvline(value, color="#d62728", linestyle="--", linewidth=1.5)
                ax.annotate(f"{side} {value:.3g}", (value, ax.get_ylim()[1] * 0.9), color="#d62728", fontsize=8,
                            rotation=90, ha="right", va="top")
        ax.set_title(score, fontsize=10)
        ax.set_xlabel("score")
    axes[0].set_ylabel("clips")
    axes[0].legend(fontsize=8)
    fig.suptitle(title or f"variant '{selection.variant}': {len(selection.kept)} of {selection.pool} usable clips kept")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()
