"""Curation on a real two-node Ray cluster: the local engine's clips table, through node and actor deaths.

The cluster (tests/conftest.py ``ray_cluster``) is started once for the module; the runs score one small ingested
batch, each in its own copy of the data root.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from curation import batch_scoring, ingest
from curation.ray_engine import SCORER_NAME
from curation.sample_corpus import make_sample_corpus
from svdpipe.config import load_config
from svdpipe.storage import open_storage

# Small and quick, and the same for every engine: only where the work runs differs between the runs.
SETTINGS = ["curation.text.long_side=128", "curation.caption.max_tokens=6", "curation.workers=1",
            "ingest.workers=1", "curation.ray_batch_clips=2"]
pytestmark = pytest.mark.slow  # a Ray cluster and three scoring runs: minutes on a 2-core machine
NETWORK = ["text_area_ratio", "aesthetic_score", "clip_text_similarity"]


@pytest.fixture(scope="module")
def ingested(tmp_path_factory) -> tuple[Path, str]:
    """(data root, batch): four short videos ingested, nothing scored."""
    base = tmp_path_factory.mktemp("ray-curation")
    make_sample_corpus(base / "src", seed=3131, videos=4, seconds=3.0, fps=24, width=192, height=108, broken=False)
    root = open_storage(str(base / "data"))
    uris = sorted(str(p) for p in (base / "src").iterdir() if p.name.startswith("video_"))
    batch = ingest.plan_batches(root, uris)[0][0]
    ingest.ingest_batch(root, batch, load_config("tiny", str(base / "data"), SETTINGS, environ={}).ingest,
                        progress=False)
    return base / "data", batch


def _config(data_root: Path, *extra: str):
    return load_config("tiny", str(data_root), [*SETTINGS, *extra], environ={})


def _copy(ingested, tmp_path) -> Path:
    shutil.copytree(ingested[0], tmp_path / "data")
    return tmp_path / "data"


@pytest.fixture(scope="module")
def local_clips(ingested, tmp_path_factory) -> pd.DataFrame:
    """The clips table the local engine (a process pool) writes."""
    data = _copy(ingested, tmp_path_factory.mktemp("local"))
    scored = batch_scoring.score_batch(open_storage(str(data)), ingested[1], _config(data), progress=False)
    assert (scored.engine, scored.nodes, scored.scored_now) == ("local", 1, 4)
    return scored.clips


def assert_same_clips(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Same rows, ids, frames, motion, captions, model names and errors; network scores within 1e-5.

    The networks see each clip in a different batch on each engine (a video's clips, or clips of several videos),
    and a float32 matrix product may round differently with another batch; nothing else may differ.
    """
    assert got["clip_id"].is_unique, "duplicate rows"
    got, want = (f.sort_values("clip_id").reset_index(drop=True) for f in (got, want))
    assert got["clip_id"].tolist() == want["clip_id"].tolist()
    vectors = ["text_area_per_frame", "image_embedding"]  # per-frame scores and CLIP embeddings: network outputs
    exact = [c for c in want.columns if c not in NETWORK + vectors]
    as_tuples = lambda f: f.map(lambda v: tuple(v) if isinstance(v, (list, np.ndarray)) else v)  # noqa: E731
    pd.testing.assert_frame_equal(as_tuples(got[exact]), as_tuples(want[exact]))
    np.testing.assert_allclose(got[NETWORK].to_numpy(float), want[NETWORK].to_numpy(float), atol=1e-5)
    for column in vectors:
        for g, w in zip(got[column], want[column], strict=True):
            assert (g is None) == (w is None), column
            if w is not None:
                np.testing.assert_allclose(np.asarray(g, float), np.asarray(w, float), atol=1e-5, err_msg=column)
    assert (want["error"] == "").sum() >= 4  # most clips really scored: the comparison is not of empty rows


def _scorers() -> list[dict]:
    import ray._private.state

    return [a for a in ray._private.state.actors().values() if a["Name"].startswith(SCORER_NAME)]


class Held:
    """Holds the scoring run in its first ``on_done`` (one video stored) until ``release()``: a fault the test
    injects meanwhile always finds the other videos in flight, however fast the run is or slow the test."""

    def __init__(self):
        self.first_stored, self._go_on = threading.Event(), threading.Event()

    def __call__(self, video_id: str) -> None:
        self.first_stored.set()
        self._go_on.wait(600)

    def release(self) -> None:
        self._go_on.set()


def _run_in_background(data: Path, batch: str, cfg) -> tuple[threading.Thread, dict, Held]:
    out: dict = {}
    held = Held()

    def run():
        try:
            out["scored"] = batch_scoring.score_batch(open_storage(str(data)), batch, cfg, progress=False,
                                                      on_done=held)
        except BaseException as e:  # noqa: BLE001 - re-raised by the test
            out["error"] = e
        finally:
            held.first_stored.set()  # a run that failed early wakes the test too

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out, held


def _written(data: Path, cfg) -> int:
    folder = data / batch_scoring.CLIPS_DIR / batch_scoring.version_of(cfg)
    return len(list(folder.glob("*.parquet"))) if folder.exists() else 0


def _wait(condition, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.2)


def test_dagster_asset_on_ray_writes_the_local_engines_table_and_records_engine_and_nodes(
        ray_cluster, ingested, local_clips, tmp_path):
    import dagster as dg
    import ray

    from assets.curation import clip_scores
    from assets.resources import RayClusterResource, SvdpipeResource

    data = _copy(ingested, tmp_path)
    res = SvdpipeResource(profile="tiny", data_root=str(data),
                          overrides=[*SETTINGS, "compute.engine=ray", f"compute.ray_address={ray_cluster.address}",
                                     "curation.ray_scorers=2"])
    ray.shutdown()  # the step's dagster-ray resource connects (and disconnects) by itself, as in a deployment
    try:
        with dg.instance_for_test() as instance:
            instance.add_dynamic_partitions("ingest_batch", [ingested[1]])
            result = dg.materialize([clip_scores], partition_key=ingested[1], instance=instance,
                                    resources={"svdpipe": res, "ray_cluster": RayClusterResource(svdpipe=res)})
            assert not ray.is_initialized()  # disconnected after the step
    finally:
        ray.init(address=ray_cluster.address, logging_level="WARNING")
    meta = result.asset_materializations_for_node("clip_scores")[0].metadata
    assert (meta["engine"].value, meta["nodes"].value, meta["videos_scored_now"].value) == ("ray", 2, 4)
    root = open_storage(str(data))
    assert_same_clips(batch_scoring.score_batch(root, ingested[1], res.config).clips, local_clips)
    # Same resume rules: results are per video under the same version, so either engine's rerun scores nothing.
    for engine in ("ray", "local"):
        cfg = _config(data, f"compute.engine={engine}")
        assert batch_scoring.score_batch(root, ingested[1], cfg, progress=False).scored_now == 0


def test_a_worker_node_killed_mid_batch_is_retried_and_the_table_is_complete(
        ray_cluster, ingested, local_clips, tmp_path):
    data = _copy(ingested, tmp_path)
    doomed = ray_cluster.add_node(num_cpus=3, object_store_memory=128 << 20)
    cfg = _config(data, "compute.engine=ray", "curation.ray_scorers=3")
    thread, out, held = _run_in_background(data, ingested[1], cfg)
    # Spread over the three nodes, one scorer lives on the doomed one; kill the node once the first video is in.
    on_doomed = lambda: [a for a in _scorers() if a["Address"]["NodeID"] == doomed.node_id  # noqa: E731
                         and a["State"] == "ALIVE"]
    _wait(on_doomed, "a scorer actor on the doomed node")
    _wait(held.first_stored.is_set, "the first scored video")
    done_before = _written(data, cfg)
    ray_cluster.remove_node(doomed, allow_graceful=False)
    held.release()
    thread.join(600)
    if "error" in out:
        raise out["error"]
    assert done_before < 4  # the node died with videos in flight, and its scorer with calls queued
    assert out["scored"].nodes == 3
    assert_same_clips(out["scored"].clips, local_clips)


def test_a_scorer_actor_that_dies_is_replaced(ray_cluster, ingested, local_clips, tmp_path):
    data = _copy(ingested, tmp_path)
    cfg = _config(data, "compute.engine=ray", "curation.ray_scorers=1")
    thread, out, held = _run_in_background(data, ingested[1], cfg)
    _wait(held.first_stored.is_set, "the first scored video")
    if "error" in out:
        raise out["error"]
    (actor,) = [a for a in _scorers() if a["State"] == "ALIVE"]
    done_before = _written(data, cfg)
    os.kill(actor["Pid"], signal.SIGKILL)  # the only scorer: nothing finishes unless it is replaced
    held.release()
    thread.join(600)
    if "error" in out:
        raise out["error"]
    assert done_before < 4
    (after,) = [a for a in _scorers() if a["ActorID"] == actor["ActorID"]]
    assert after["NumRestarts"] >= 1
    assert_same_clips(out["scored"].clips, local_clips)
