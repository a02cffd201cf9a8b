"""Curation on a Ray cluster: CPU tasks decode and cut, long-lived actors run the networks on batches of clips.

The layout of NeMo Curator and cosmos-curate: per video, a Ray task (one CPU, anywhere in the cluster) decodes the
file once and finds cuts, motion and the frames to score (``scoring.prepare_video``); the frames stay in Ray's
object store. Scorer actors (one per GPU when the cluster has GPUs) load CRAFT, CLIP with its aesthetic head and
CoCa once, and take the frames of many videos per call (``curation.ray_batch_clips`` clips; ``scoring.score_clips``).
The driver only sees clip rows and scores, and writes each video's rows when its clips are done, with the same
storage code and resume rules as the local engine (``batch_scoring.store_rows``).

Faults: a task whose worker or node dies is run again (``max_retries``); frames lost with a node are rebuilt from
their task (Ray lineage); a scorer actor that dies is restarted, on another node if its node is gone
(``max_restarts``), and the calls it held are sent again (``max_task_retries``). Rows are keyed by video, so a
retried video overwrites its own file and never adds rows.

``map_with_actors`` is the generic part: any "load a model once, map it over batches" job (latent encoding of a
dataset) runs on it.
"""

from __future__ import annotations

import functools
import itertools
import uuid
from collections import deque
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

from svdpipe.config_schema import ComputeConfig, SvdpipeConfig
from svdpipe.storage import Storage

SCORER_NAME = "svdpipe-scorer"
TASK_RETRIES = 3  # per prepare task, on worker or node death
CALL_RETRIES = 3  # per actor call, by Ray, on actor death (the actor itself is always restarted)
# Per batch, by the pool, once Ray's retries are spent: they come fast, while the cluster has not yet noticed that
# a node is gone (the actor is "unavailable", not dead, and cannot be restarted). Waits double from 1 s.
POOL_RETRIES = 6


@contextmanager
def connected(compute: ComputeConfig) -> Iterator[None]:
    """Ray connected for the block: the caller's connection when there is one (a Dagster ``RayResource``), else
    ``compute.ray_address``, else a new local cluster, shut down after the block."""
    import ray

    if ray.is_initialized():
        yield
        return
    if compute.ray_address:
        ray.init(address=compute.ray_address)
    else:
        # "local", never None: None would join whatever cluster this machine last started (RAY_ADDRESS, /tmp/ray).
        ray.init(address="local", include_dashboard=False, logging_level="WARNING")
    try:
        yield
    finally:
        ray.shutdown()


def alive_nodes() -> int:
    import ray

    return sum(1 for n in ray.nodes() if n["Alive"])


class _Actor:
    """One pool member: builds its callable once (a model load), then applies it to batches."""

    def __init__(self, factory: Callable[[], Callable[[list], Any]], threads: int):
        import torch

        torch.set_num_threads(threads)
        self._fn = factory()

    def run(self, batch: list) -> Any:
        import ray

        # Refs inside a list are not resolved by Ray; fetched here, from whichever node holds (or rebuilds) them.
        return self._fn([ray.get(x) if isinstance(x, ray.ObjectRef) else x for x in batch])


def map_with_actors(factory: Callable[[], Callable[[list], Any]], work: Iterable[tuple[Any, list]], *, actors: int,
                    num_gpus: float = 0.0, num_cpus: float = 1.0, name: str = "svdpipe-actor",
                    calls_per_actor: int = 2) -> Iterator[tuple[Any, Any]]:
    """Yield ``(key, factory()(batch))`` for each ``(key, batch)`` of ``work``, computed by a pool of actors.

    Each of ``actors`` actors calls ``factory`` once (it loads the model) and then takes batches, at most
    ``calls_per_actor`` queued at a time so a GPU never waits for the next one. Results come as they finish, not
    in order. ``batch`` items may be Ray object refs (resolved in the actor, where the data goes without passing
    through the driver). ``work`` is read lazily, as actors have room. Actors are spread over the nodes, restarted
    when they or their node die, and killed when the generator ends. For latents, say:
    ``map_with_actors(functools.partial(Encoder, cfg), ((i, clips) for i, clips in enumerate(chunks)), actors=8,
    num_gpus=1)``.
    """
    import time

    import ray
    from ray.exceptions import ActorUnavailableError, RayActorError

    cls = ray.remote(_Actor)
    run_id = uuid.uuid4().hex[:8]
    pool = [cls.options(name=f"{name}-{run_id}-{i}", num_gpus=num_gpus, num_cpus=num_cpus, max_restarts=-1,
                        max_task_retries=CALL_RETRIES, scheduling_strategy="SPREAD")
            .remote(factory, max(1, int(num_cpus))) for i in range(actors)]
    try:
        in_flight: dict = {}  # result ref -> (key, batch, attempt, actor index)
        load = [0] * actors

        def submit(key: Any, batch: list, attempt: int) -> None:
            i = load.index(min(load))
            in_flight[pool[i].run.remote(batch)] = (key, batch, attempt, i)
            load[i] += 1

        work = iter(work)
        exhausted = False
        while True:
            while not exhausted and min(load) < calls_per_actor:
                item = next(work, None)
                if item is None:
                    exhausted = True
                    break
                submit(item[0], item[1], 0)
            if not in_flight:
                return
            done, _ = ray.wait(list(in_flight), num_returns=1)
            key, batch, attempt, i = in_flight.pop(done[0])
            load[i] -= 1
            try:
                result = ray.get(done[0])
            except (ActorUnavailableError, RayActorError):
                if attempt >= POOL_RETRIES:
                    raise
                time.sleep(2**attempt)
                submit(key, batch, attempt + 1)
                continue
            yield key, result
    finally:
        for actor in pool:
            ray.kill(actor)


class ScoreFrames:
    """The networks of one scorer actor: every clip's frames of a batch of videos -> their scores, per video."""

    def __init__(self, cfg_json: str, identity: dict[str, str]):
        from curation.batch_scoring import load_scorers

        self.scorers = load_scorers(SvdpipeConfig.model_validate_json(cfg_json))
        got = {k: self.scorers.identity()[k] for k in identity}
        if got != identity:
            raise RuntimeError(f"scorer models on this node are {got}, the driver expected {identity}: model files "
                               "must be at the same path on every node of the cluster")

    def __call__(self, videos: list[list[list]]) -> list[list[dict]]:
        from curation.scoring import score_clips

        scores = score_clips([clip for video in videos for clip in video], self.scorers)
        out, start = [], 0
        for video in videos:
            out.append(scores[start : start + len(video)])
            start += len(video)
        return out


def _prepare(video: dict, cfg_json: str, identity: dict[str, str]) -> tuple[dict, list]:
    """The CPU part of one video, on any node: its rows (small, to the driver) and its frames (to a scorer)."""
    from curation.batch_scoring import video_file
    from curation.scoring import prepare_video
    from svdpipe.storage import open_storage

    cfg = SvdpipeConfig.model_validate_json(cfg_json)
    with video_file(open_storage(cfg.data_root), video) as path:
        prepared = prepare_video(path, video, cfg.curation, identity)
    return {"rows": prepared.rows, "scored": prepared.scored}, prepared.frames


def model_identity(cfg: SvdpipeConfig) -> dict[str, str]:
    """The model names the clip rows carry, as the loaded scorers will report them (checked in every actor)."""
    from curation.clip_models import weights_label

    cur = cfg.curation
    return {"clip": weights_label(cur.clip.model, cur.clip.pretrained, cfg.seed),
            "caption": weights_label(cur.caption.model, cur.caption.pretrained, cfg.seed)}


def scorer_pool_size(cfg: SvdpipeConfig) -> tuple[int, float]:
    """(actors, GPUs per actor): one actor per GPU, or per 4 CPUs without GPUs, unless ``ray_scorers`` says.

    Each actor also holds one CPU, and at least one CPU is left for the decode tasks that feed them.
    """
    import ray

    res = ray.cluster_resources()
    gpus, cpus = float(res.get("GPU", 0)), int(res.get("CPU", 0))
    if cpus < 2:
        raise RuntimeError(f"the Ray cluster has {cpus} CPU(s); curation needs at least 2 (decode tasks and a "
                           "scorer actor): start the nodes with more --num-cpus")
    actors = cfg.curation.ray_scorers or (int(gpus) if gpus >= 1 else max(1, cpus // 4))
    actors = min(actors, cpus - 1)
    return actors, (min(1.0, gpus / actors) if gpus else 0.0)


def score_videos(root: Storage, todo: list[dict], version: str, batch: str, cfg: SvdpipeConfig,
                 on_done: Callable[[str], None] = lambda _: None) -> int:
    """Score ``todo`` (videos-table rows) on Ray and store each video's rows; returns the cluster's node count."""
    import ray

    from curation.batch_scoring import store_rows
    from curation.scoring import PreparedVideo, finish_rows

    with connected(cfg.compute):
        nodes = alive_nodes()
        cfg_json, identity = cfg.model_dump_json(), model_identity(cfg)
        prepare = ray.remote(_prepare).options(num_returns=2, num_cpus=1, max_retries=TASK_RETRIES,
                                               scheduling_strategy="SPREAD")
        groups: dict[int, list[tuple[dict, PreparedVideo]]] = {}  # batches in flight, by key
        keys = itertools.count()

        def finish(video: dict, prepared: PreparedVideo, scores: list[dict]) -> None:
            on_done(store_rows(root, video, finish_rows(prepared, scores), version, batch))

        def work() -> Iterator[tuple[int, list]]:
            """Batches of frames of many videos, as their prepare tasks finish; a window of tasks in flight."""
            queue = deque(todo)
            window = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
            running: dict = {}  # rows ref -> (video, frames ref)
            group, refs, clips = [], [], 0
            while queue or running:
                while queue and len(running) < window:
                    video = queue.popleft()
                    rows_ref, frames_ref = prepare.remote(video, cfg_json, identity)
                    running[rows_ref] = (video, frames_ref)
                done, _ = ray.wait(list(running), num_returns=1)
                video, frames_ref = running.pop(done[0])
                meta = ray.get(done[0])
                prepared = PreparedVideo(meta["rows"], meta["scored"])
                if not prepared.scored:  # a broken file, or only clips too short to score
                    finish(video, prepared, [])
                    continue
                group.append((video, prepared))
                refs.append(frames_ref)
                clips += len(prepared.scored)
                if clips >= cfg.curation.ray_batch_clips:
                    key = next(keys)
                    groups[key] = group
                    yield key, refs
                    group, refs, clips = [], [], 0
            if group:
                key = next(keys)
                groups[key] = group
                yield key, refs

        actors, gpus = scorer_pool_size(cfg)
        factory = functools.partial(ScoreFrames, cfg_json, identity)
        for key, per_video in map_with_actors(factory, work(), actors=actors, num_gpus=gpus, name=SCORER_NAME):
            for (video, prepared), scores in zip(groups.pop(key), per_video):
                finish(video, prepared, scores)
    return nodes
