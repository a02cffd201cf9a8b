import json
import shutil

import pytest

from curation import ingest
from svdpipe.config_schema import IngestConfig
from svdpipe.sources import list_inputs
from svdpipe.storage import open_storage

CFG = IngestConfig(workers=2)


def _run(root, uris, cfg=CFG):
    todo, new = ingest.plan_batches(root, uris, getattr(uris, "refused", None))
    for batch in todo:
        ingest.ingest_batch(root, batch, cfg, progress=False)
    return ingest.consolidate(root), todo, new


def test_every_input_is_accounted_for(corpus, tmp_path):
    folder, truth = corpus
    root = open_storage(tmp_path / "root")
    uris = list_inputs(str(folder), CFG.ignore)
    frame, todo, _ = _run(root, uris)
    assert len(todo) == 1
    assert len(frame) == len(uris) == len(truth["videos"]) + len(truth["broken"])
    by_name = {u.rsplit("/", 1)[-1]: row for u, row in zip(frame["source_uri"], frame.to_dict("records"))}
    for name in truth["videos"]:
        assert by_name[name]["status"] == "accepted" and by_name[name]["reason"] == ""
        assert root.exists(by_name[name]["stored_key"]) and by_name[name]["stored_key"].startswith("raw/")
    for name in truth["broken"]:
        assert by_name[name]["status"] == "rejected" and by_name[name]["reason"]
        assert by_name[name]["stored_key"].startswith("quarantine/")
    assert list(frame.columns[:10]) == ["video_id", "source_uri", "status", "reason", "duration_s", "fps",
                                        "width", "height", "codec", "num_frames"]


def test_second_ingestion_adds_nothing(corpus, tmp_path):
    folder, _ = corpus
    root = open_storage(tmp_path / "root")
    uris = list_inputs(str(folder), CFG.ignore)
    first, _, _ = _run(root, uris)
    keys = root.list()
    again, todo, new = _run(root, uris)
    assert todo == [] and new == []
    assert again.equals(first)
    assert root.list() == keys  # no new copies, no new batch


def test_new_files_form_a_new_batch_and_duplicates_are_rejected(corpus, tmp_path):
    folder, truth = corpus
    src = tmp_path / "src"
    shutil.copytree(folder, src)
    root = open_storage(tmp_path / "root")
    _run(root, list_inputs(str(src), CFG.ignore))
    name = next(iter(truth["videos"]))
    shutil.copy(src / name, src / f"copy_of_{name}")
    frame, todo, new = _run(root, list_inputs(str(src), CFG.ignore))
    assert len(todo) == 1 and new == [str(src / f"copy_of_{name}")]
    row = frame[frame["source_uri"] == str(src / f"copy_of_{name}")].iloc[0]
    assert row["status"] == "rejected" and row["reason"].startswith("duplicate content")
    assert (frame["status"] == "accepted").sum() == len(truth["videos"])
    accepted = frame[frame["status"] == "accepted"]
    assert accepted["video_id"].is_unique
    assert len(root.list("raw")) == len(truth["videos"])


def test_killed_batch_resumes_without_redoing_finished_inputs(corpus, tmp_path):
    folder, _ = corpus
    root = open_storage(tmp_path / "root")
    uris = list_inputs(str(folder), CFG.ignore)
    todo, _ = ingest.plan_batches(root, uris)
    batch = todo[0]
    # Simulate a run killed after one input: its result exists, the batch table does not.
    done = ingest.ingest_one(uris[0], root.root, CFG, batch)
    done["reason"] = "marker from the first run"
    root.write_text(ingest.batch_key(batch, f"results/{ingest._input_key(uris[0])}.json"), json.dumps(done))
    assert not ingest.is_complete(root, batch)
    todo2, new2 = ingest.plan_batches(root, uris)
    assert todo2 == [batch] and new2 == []  # the unfinished batch is resumed, nothing replanned
    frame = ingest.ingest_batch(root, batch, CFG, progress=False)
    assert len(frame) == len(uris)
    assert frame.loc[frame["source_uri"] == uris[0], "reason"].item() == "marker from the first run"


def test_s3_source_into_s3_root(corpus, bucket):
    folder, truth = corpus
    src = open_storage(f"s3://{bucket}/incoming")
    for path in folder.iterdir():
        src.upload(path, path.name)
    root = open_storage(f"s3://{bucket}/data")
    uris = list_inputs(f"s3://{bucket}/incoming", CFG.ignore)
    frame, _, _ = _run(root, uris)
    assert (frame["status"] == "accepted").sum() == len(truth["videos"])
    assert (frame["status"] == "rejected").sum() == len(truth["broken"])
    assert root.exists("metadata/videos.parquet")
    again, todo, _ = _run(root, uris)
    assert todo == [] and len(again) == len(frame)


def test_url_manifest_with_failures(corpus, http_root, tmp_path):
    folder, truth = corpus
    www, base = http_root
    name = next(iter(truth["videos"]))
    shutil.copy(folder / name, www / name)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"url\n{base}/flaky/1/{name}\n{base}/missing.mp4\n")
    root = open_storage(tmp_path / "root")
    frame, _, _ = _run(root, list_inputs(str(manifest)),
                       IngestConfig(workers=1, download_retries=2, allow_private_hosts=True))
    status = dict(zip(frame["source_uri"], frame["status"]))
    assert status[f"{base}/flaky/1/{name}"] == "accepted"
    assert status[f"{base}/missing.mp4"] == "rejected"
    reason = frame.loc[frame["source_uri"] == f"{base}/missing.mp4", "reason"].item()
    assert "HTTP 404" in reason


@pytest.mark.parametrize("workers", [1, 2])
def test_worker_count_does_not_change_results(corpus, tmp_path, workers):
    folder, _ = corpus
    root = open_storage(tmp_path / f"root{workers}")
    frame, _, _ = _run(root, list_inputs(str(folder), CFG.ignore), IngestConfig(workers=workers))
    assert sorted(frame["video_id"]) == sorted(
        ingest.read_table(root)["video_id"]
    ) and frame["status"].value_counts().to_dict() == {"rejected": 6, "accepted": 3}
