"""Curation on videos no other test uses: the acceptance floors of the curation issue."""

import pytest

from curation.accuracy import auc, evaluate
from curation.clips_table import to_frame
from curation.probe import probe_video
from curation.sample_corpus import make_sample_corpus
from curation.scoring import Scorers, score_video
from svdpipe.config import load_config


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("unseen-accuracy")
    truth = make_sample_corpus(folder, seed=777, videos=4, seconds=10.0, fps=30, width=352, height=198,
                               broken=False)
    cfg = load_config("tiny", environ={})
    scorers = Scorers.load(cfg.curation, cfg.seed)
    results = {}
    for name in truth["videos"]:
        row = {"video_id": name, **probe_video(folder / name).as_row()}
        results[name] = to_frame(score_video(folder / name, row, cfg.curation, scorers))
    return evaluate(results, truth), results


def test_cut_f1_floor(report):
    metrics, _ = report
    assert metrics["cuts"]["hard"]["f1"] >= 0.95, metrics["cuts"]
    if metrics["cuts"]["fade"]["tp"] + metrics["cuts"]["fade"]["fn"]:
        assert metrics["cuts"]["fade"]["f1"] >= 0.95, metrics["cuts"]


def test_static_below_moving_and_text_above_clean(report):
    metrics, _ = report
    assert metrics["motion"]["margin"] > 0, metrics["motion"]
    assert metrics["text"]["margin"] > 0, metrics["text"]


def test_every_clip_row_is_complete(report):
    _, results = report
    for clips in results.values():
        scored = clips[clips["error"] == ""]
        assert len(scored) >= 1
        assert scored["caption"].str.len().min() > 0
        assert scored["text_area_ratio"].between(0, 1).all()
        assert scored["clip_text_similarity"].between(-1, 1).all()
        assert (clips["start_frame"].iloc[1:].to_numpy() == clips["end_frame"].iloc[:-1].to_numpy()).all()


def test_auc():
    assert auc([2, 3], [0, 1]) == 1.0 and auc([0], [1]) == 0.0 and auc([1], [1]) == 0.5
