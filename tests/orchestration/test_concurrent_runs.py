"""Two `svdpipe` commands on one data root at the same time: one waits for the other; the tables stay whole."""

import subprocess

import pandas as pd
import pytest

from curation.sample_corpus import make_sample_corpus
from data_checks.suites import validate


def _both(cli, *args: str) -> list[tuple[str, str]]:
    procs = [subprocess.Popen([cli.svdpipe, *args], env=cli.env, cwd=cli.cwd, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, f"svdpipe {' '.join(args)} failed:\n{out}\n{err}"
    return outs


@pytest.mark.slow
def test_two_ingests_then_two_curates_at_once(cli, tmp_path):
    src = tmp_path / "src"
    truth = make_sample_corpus(src, seed=3, videos=2, seconds=3.0, fps=24, width=160, height=96, broken=False)
    root = tmp_path / "data"

    outs = _both(cli, "ingest", str(src), "--data-root", str(root))
    waited = [err for _, err in outs if "waiting for" in err]
    assert len(waited) == 1 and "svdpipe ingest" in waited[0]  # the second was told who held the root
    assert sorted("0 new" in out for out, _ in outs) == [False, True]  # and found the inputs already planned
    assert len(list((root / "metadata/batches").iterdir())) == 1  # one batch, not the same inputs twice
    videos = pd.read_parquet(root / "metadata/videos.parquet")
    assert len(videos) == len(truth["videos"]) and videos["source_uri"].is_unique
    assert (videos["status"] == "accepted").all() and len(list((root / "raw").iterdir())) == len(truth["videos"])

    outs = _both(cli, "curate", "--data-root", str(root), "--variant", "uncurated")
    assert sum("waiting for" in err for _, err in outs) == 1
    clips = pd.read_parquet(root / "metadata/clips.parquet")
    assert validate(clips, "clips").success and clips["clip_id"].is_unique
    assert set(clips["video_id"]) == set(videos["video_id"])
    scored = list((root / "metadata/clips").rglob("*.parquet"))
    assert len(scored) == len(truth["videos"])  # one score file per video: nothing scored twice in parallel
    assert (root / "curated/uncurated/selection.json").exists()
    assert not list(root.rglob("*.part"))
