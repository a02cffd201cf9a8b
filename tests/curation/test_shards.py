import io
import json
import tarfile

import av
import numpy as np
import pytest

from curation import ingest
from curation.clips_table import clip_id, to_frame
from curation.shards import cut_clips, encode_clips, prune_encoded, write_shards
from svdpipe.config_schema import IngestConfig, ShardsConfig
from svdpipe.sources import list_inputs
from svdpipe.storage import open_storage


def _frames(data_or_path):
    src = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else str(data_or_path)
    with av.open(src) as c:
        return [f.to_ndarray(format="rgb24").astype(np.float32) for f in c.decode(video=0)]


@pytest.fixture(params=["local", "s3"])
def ingested(request, corpus, tmp_path):
    folder, truth = corpus
    root = open_storage(tmp_path / "root") if request.param == "local" else open_storage(
        f"s3://{request.getfixturevalue('bucket')}/root")
    todo, _ = ingest.plan_batches(root, list_inputs(str(folder), (".*", "*.json")))
    ingest.ingest_batch(root, todo[0], IngestConfig(workers=1), progress=False)
    return root, ingest.consolidate(root), truth


def _clips_from_truth(videos, truth):
    rows = []
    for vid, uri in zip(videos["video_id"], videos["source_uri"]):
        t = truth["videos"].get(uri.rsplit("/", 1)[-1])
        if not t:
            continue
        for s in t["shots"]:
            rows.append({"clip_id": clip_id(vid, s["start_frame"], s["end_frame"]), "video_id": vid,
                         "start_frame": s["start_frame"], "end_frame": s["end_frame"], "caption": f"shot {s['motion']}",
                         "width": t["width"], "height": t["height"], "fps": t["fps"],
                         "num_frames": s["end_frame"] - s["start_frame"], "start_s": 0.0, "end_s": 1.0,
                         "duration_s": 1.0, "motion_series": [0.5, 1.0], "error": ""})
    return to_frame(rows)


def test_clips_are_cut_frame_accurately(corpus):
    folder, truth = corpus
    name, t = next(iter(truth["videos"].items()))
    source = _frames(folder / name)
    shots = t["shots"]
    clips = to_frame([{"clip_id": f"c{i}", "video_id": "v", "start_frame": s["start_frame"],
                       "end_frame": s["end_frame"], "width": 1, "height": 1, "num_frames": 1}
                      for i, s in enumerate(shots)])
    encoded = cut_clips(folder / name, clips, ShardsConfig(crf=10))
    for i, s in enumerate(shots):
        got = _frames(encoded[f"c{i}"])
        assert len(got) == s["end_frame"] - s["start_frame"]
        # the first and last frames are the shot's own, not a neighbour's (re-encoding adds small noise only)
        assert np.abs(got[0] - source[s["start_frame"]]).mean() < 4
        assert np.abs(got[-1] - source[s["end_frame"] - 1]).mean() < 4


def test_shards_hold_every_kept_clip(ingested):
    root, videos, truth = ingested
    clips = _clips_from_truth(videos, truth)
    keys = write_shards(root, "curated/x/shards", clips, videos, ShardsConfig(max_clips_per_shard=4, short_side=72),
                        progress=False)
    assert keys == [f"curated/x/shards/shard-{i:06d}.tar" for i in range(len(keys))]
    assert len(keys) == -(-len(clips) // 4)
    seen = {}
    for key in keys:
        with tarfile.open(fileobj=io.BytesIO(root.read_bytes(key))) as tar:
            for member in tar.getmembers():
                stem, ext = member.name.split(".", 1)
                seen.setdefault(stem, {})[ext] = tar.extractfile(member).read()
    assert sorted(seen) == sorted(clips["clip_id"])
    for cid, parts in seen.items():
        assert set(parts) == {"mp4", "json", "txt"}
        meta = json.loads(parts["json"])
        assert meta["clip_id"] == cid and parts["txt"].decode() == meta["caption"]
        frames = _frames(parts["mp4"])
        assert len(frames) == meta["num_frames"] and frames[0].shape[0] == 72

    # Another variant's shards reuse the encoded clips: nothing is encoded twice.
    assert encode_clips(root, clips.head(3), videos, ShardsConfig(max_clips_per_shard=2, short_side=72),
                        progress=False)["clips_encoded"] == 0
    assert prune_encoded(root, set(clips["clip_id"].head(3)), ShardsConfig(short_side=72)) == len(clips) - 3

    # A smaller selection replaces the shards; none of the old ones is left behind.
    keys2 = write_shards(root, "curated/x/shards", clips.head(2), videos, ShardsConfig(max_clips_per_shard=4),
                         progress=False)
    assert len(keys2) == 1 and root.list("curated/x/shards") == keys2
