"""The score histograms as a person reads them in the Dagster asset-metadata dialog: a picture that fits the
dialog unscaled, every threshold of the variant drawn and labelled with its value on its score's panel."""

import io

import matplotlib.pyplot as plt
from PIL import Image

from curation.plots import AXIS_LABELS, score_figure, score_histograms
from curation.variants import select
from svdpipe.config import load_config
from test_variants import _clips


def test_histograms_fit_the_dialog_and_label_every_threshold():
    clips = _clips()
    sel = select(clips, "svd", load_config("tiny", environ={}).variants["svd"])
    assert sel.thresholds, "the svd variant filters on scores"

    width, height = Image.open(io.BytesIO(score_histograms(clips, sel))).size
    # The dialog is at most 80 % of the window wide: 1024 px on a 1280 px laptop screen, less its padding.
    assert 600 <= width <= 960 and 400 <= height <= 720

    fig = score_figure(clips, sel)
    try:
        panels = {ax.get_title().split(':')[0]: ax for ax in fig.axes}
        for label, bounds in sel.thresholds.items():
            ax = panels[label.split("#")[0]]
            assert ax.get_xlabel() == AXIS_LABELS[label.split('#')[0]]
            lines = {round(line.get_xdata()[0], 9) for line in ax.get_lines()}
            texts = [t.get_text() for t in ax.texts]
            for side, value in bounds.items():
                assert round(value, 9) in lines, f"{label} {side} threshold not drawn"
                assert f"{side} {value:.3g}" in texts, f"{label} {side} threshold not labelled: {texts}"
            # Font sizes that stay legible at the picture's own size.
            assert min(t.get_fontsize() for t in [ax.title, ax.xaxis.label, *ax.texts]) >= 8
    finally:
        plt.close(fig)
