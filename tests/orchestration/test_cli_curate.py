"""`svdpipe curate` end to end: score once, validate, select by variant, and stop on a corrupted clips table."""

import io
import json

import pandas as pd
import pytest

from curation.sample_corpus import make_sample_corpus
from svdpipe.storage import open_storage


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("curate-corpus")
    truth = make_sample_corpus(out, seed=9090, videos=2, seconds=6.0, fps=24, width=256, height=144, broken=True)
    return out, truth


def _shard_mp4s(root, keys):
    import tarfile

    out = {}
    for key in keys:
        with tarfile.open(fileobj=io.BytesIO(root.read_bytes(key))) as tar:
            out.update({m.name[:-4]: tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".mp4")})
    return out


def _results(root):
    return {k: root.size(k) for k in root.list("metadata/clips") if k.endswith(".parquet")}


@pytest.mark.parametrize("where", ["local", "s3"])
@pytest.mark.slow
def test_curate_scores_once_and_builds_every_variant(where, small_corpus, cli, tmp_path, request):
    folder, truth = small_corpus
    root_uri = str(tmp_path / "data") if where == "local" else f"s3://{request.getfixturevalue('bucket')}/data"
    if where == "s3":
        cli.env.update(request.getfixturevalue("s3").env)
    cli("ingest", str(folder), "--data-root", root_uri)
    out = cli("curate", "--data-root", root_uri).stdout
    assert f"scored {len(truth['videos'])} video(s) on the local engine, 1 node(s)" in out
    root = open_storage(root_uri)
    clips = pd.read_parquet(io.BytesIO(root.read_bytes("metadata/clips.parquet")))
    assert clips["video_id"].nunique() == len(truth["videos"])
    assert len(clips) >= sum(len(t["shots"]) for t in truth["videos"].values()) - 1
    for variant in ("uncurated", "svd"):
        summary = json.loads(root.read_text(f"curated/{variant}/selection.json"))
        assert f"{variant}: kept {summary['clips_kept']} of {summary['clips_usable']}" in out
        assert summary["shards"] and all(root.exists(k) for k in summary["shards"])
        assert root.exists(f"curated/{variant}/histograms.png")
    svd = json.loads(root.read_text("curated/svd/selection.json"))
    uncurated = json.loads(root.read_text("curated/uncurated/selection.json"))
    assert svd["clips_kept"] < uncurated["clips_kept"] == uncurated["clips_usable"]
    assert set(svd["kept_by_filter"]) == {"not_duplicate", "motion_score", "text_area_ratio", "aesthetic_score",
                                          "clip_text_similarity"}
    assert "duplicate_of" in clips
    # Each clip was encoded once for both variants: the shards of both hold the same bytes of a shared clip.
    encoded = [k for k in root.list("encoded_clips") if k.endswith(".mp4")]
    assert len(encoded) == uncurated["clips_kept"]
    mp4s = {v: _shard_mp4s(root, json.loads(root.read_text(f"curated/{v}/selection.json"))["shards"])
            for v in ("svd", "uncurated")}
    assert mp4s["svd"] and all(mp4s["uncurated"][c] == data for c, data in mp4s["svd"].items())

    # A rerun scores nothing; a changed threshold re-selects without rescoring.
    scored = _results(root)
    cli("curate", "--data-root", root_uri, "--variant", "uncurated")
    longest = float(clips["duration_s"].max())  # keeps the longest clip(s): fewer, never none
    cli("curate", "--data-root", root_uri, "--variant", "uncurated", "--set",
        f"variants.uncurated.min_duration_s={longest}")
    assert _results(root) == scored
    after = json.loads(root.read_text("curated/uncurated/selection.json"))
    assert 0 < after["clips_kept"] == int((clips["duration_s"] >= longest).sum()) < uncurated["clips_kept"]


def test_corrupted_clips_table_stops_curated_datasets(curated_copy, cli):
    root_uri = str(curated_copy)  # the session's corpus, ingested and curated into every variant
    root = open_storage(root_uri)
    before = root.read_text("curated/uncurated/selection.json")
    # Corrupt one video's scored rows: a duplicated clip and an impossible text area.
    key = next(k for k in root.list("metadata/clips") if k.endswith(".parquet") and "/" in k[len("metadata/clips/"):])
    frame = pd.read_parquet(io.BytesIO(root.read_bytes(key)))
    frame.loc[0, "text_area_ratio"] = 1.7
    frame = pd.concat([frame, frame.iloc[[0]]], ignore_index=True)
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    root.write_bytes(key, buf.getvalue())

    proc = cli("curate", "--data-root", root_uri, "--variant", "uncurated", "--set",
               "variants.uncurated.min_duration_s=0.5", check=False)
    assert proc.returncode != 0
    assert "clips_table_check failed" in proc.stderr
    assert root.read_text("curated/uncurated/selection.json") == before  # nothing was built from the bad table
