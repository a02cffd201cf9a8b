"""Curation throughput against its physical floor and against the naive way, in one run on one machine.

    .venv/bin/python benchmarks/curation_throughput.py [--minutes 3] [--width 640 --height 360]

Measured over the same files, one process, all cores available to it:

* floor: ``ffmpeg -i FILE -f null -`` decoding every frame (what no curation can beat);
* decode: svdpipe's single decode pass alone (every frame to the detection size, 2 fps samples kept);
* cuts + motion: that pass feeding the cut cascade, then Farneback flow on the samples;
* all scorers: the whole per-video scoring (cuts, motion, real CRAFT, tiny CLIP + aesthetic head, tiny CoCa);
* naive: PySceneDetect's own pass over the file plus a separate decode for each scorer (motion, text, CLIP,
  caption), as when each tool reads the video itself.

Ratios are wall time over the floor. Results go to benchmarks/out/curation_throughput.json and stdout.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from curation.cuts import CutCascade, detect_cuts_file, shots_from_cuts  # noqa: E402
from curation.decode import decode_once, scaled_size  # noqa: E402
from curation.motion import flow_magnitudes  # noqa: E402
from curation.probe import probe_video  # noqa: E402
from curation.sample_corpus import make_sample_corpus  # noqa: E402
from curation.scoring import Scorers, first_middle_last, score_video  # noqa: E402
from svdpipe.config import load_config  # noqa: E402


def corpus(out: Path, minutes: float, width: int, height: int) -> list[Path]:
    folder = out / f"corpus-{width}x{height}-{minutes:g}min"
    videos = max(1, int(round(minutes * 60 / 30)))
    if not (folder / "truth.json").exists():
        make_sample_corpus(folder, seed=99, videos=videos, seconds=minutes * 60 / videos, fps=24, width=width,
                           height=height, broken=False)
    return sorted(p for p in folder.iterdir() if p.name.startswith("video_"))


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def frames_at(path: Path, indices: list[int], short_side: int) -> list[np.ndarray]:
    """A scorer reading the video by itself: decode from the start, keep the frames it needs."""
    wanted, out = set(indices), {}
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        w, h = scaled_size(s.codec_context.width, s.codec_context.height, short_side=short_side)
        for i, f in enumerate(c.decode(s)):
            if i in wanted:
                out[i] = f.to_ndarray(width=w, height=h, format="rgb24")
            if i >= max(indices):
                break
    return [out[i] for i in indices]


def naive(path: Path, cfg, scorers: Scorers) -> None:
    cur = cfg.curation
    cuts = detect_cuts_file(str(path), cur.cuts)
    probe = probe_video(path)
    fps, n = probe.fps, probe.num_frames
    shots = shots_from_cuts(cuts, n)
    step = fps / cur.sample_fps
    samples = [int(round(k * step)) for k in range(int(n / step) + 1) if round(k * step) < n]
    grays = [f.mean(axis=2).astype(np.uint8) for f in frames_at(path, samples, cur.motion.flow_short_side)]
    flow_magnitudes(grays)
    picks = []
    for start, end in shots:
        inside = np.array([s for s in samples if start <= s < end])
        if len(inside):
            picks.append([int(inside[i]) for i in first_middle_last(np.arange(len(inside)))])
    flat = sorted({i for p in picks for i in p})
    text_frames = dict(zip(flat, frames_at(path, flat, cur.score_short_side)))
    for p in picks:
        scorers.text.score([text_frames[i] for i in p])
    clip_frames = dict(zip(flat, frames_at(path, flat, cur.score_short_side)))
    embs = [scorers.clip.embed_images([clip_frames[i] for i in p]) for p in picks]
    caption_frames = dict(zip(flat, frames_at(path, flat, cur.score_short_side)))
    for p, emb in zip(picks, embs):
        caption = scorers.captioner.caption([caption_frames[i] for i in p])
        scorers.clip.aesthetic(emb)
        scorers.clip.text_similarity(emb, caption)


_worker: dict = {}


def _init(cfg_json: str) -> None:
    import torch

    from svdpipe.config import SvdpipeConfig

    torch.set_num_threads(1)
    cfg = SvdpipeConfig.model_validate_json(cfg_json)
    _worker.update(cfg=cfg, scorers=Scorers.load(cfg.curation, cfg.seed))


def _score_file(args: tuple[str, dict]) -> int:
    path, row = args
    if path == "":  # warm-up: models are loaded by the initializer
        return 0
    return len(score_video(path, row, _worker["cfg"].curation, _worker["scorers"]))


def production(files: list[Path], probes: dict, cfg, workers: int) -> float:
    """The path `svdpipe curate` takes: a pool of worker processes, one torch thread each, models loaded once."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init, initargs=(cfg.model_dump_json(),)) as pool:
        list(pool.map(_score_file, [("", {})] * workers))  # start every worker before the clock does
        t0 = time.perf_counter()
        # Longest first, so no worker is left alone with a long video at the end.
        order = sorted(files, key=lambda f: -probes[f].num_frames)
        list(pool.map(_score_file, [(str(f), {"video_id": f.stem, **probes[f].as_row()}) for f in order]))
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    files = corpus(args.out, args.minutes, args.width, args.height)
    cfg = load_config("tiny", environ={})
    cur = cfg.curation
    probes = {f: probe_video(f) for f in files}
    video_s = sum(p.duration_s for p in probes.values())

    t_load = time.perf_counter()
    scorers = Scorers.load(cur, cfg.seed)
    load_s = time.perf_counter() - t_load

    def cuts_motion(f):
        cascade = CutCascade(cur.cuts, probes[f].fps)
        d = decode_once(f, cur.sample_fps, cur.score_short_side, cur.motion.flow_short_side, cur.cuts.detect_width,
                        cascade.push)
        cascade.finish(d.num_frames)
        flow_magnitudes([s.gray for s in d.samples])

    def score_all(f):
        score_video(f, {"video_id": f.stem, **probes[f].as_row()}, cur, scorers)

    stages = {
        "floor: ffmpeg decode": lambda f: subprocess.run(["ffmpeg", "-v", "error", "-i", str(f), "-f", "null", "-"],
                                                         check=True),
        "svdpipe decode pass": lambda f: decode_once(f, cur.sample_fps, cur.score_short_side,
                                                     cur.motion.flow_short_side, cur.cuts.detect_width),
        "cuts + motion": cuts_motion,
        "all scorers": score_all,
        "naive (PySceneDetect + a decode per scorer)": lambda f: naive(f, cfg, scorers),
    }
    results = {}
    for name, fn in stages.items():
        results[name] = sum(timed(lambda: fn(f)) for f in files)
        print(f"{name:45s} {results[name]:8.2f} s", flush=True)
    name = f"all scorers, {cur.workers} worker processes (as `svdpipe curate`)"
    results[name] = production(files, probes, cfg, cur.workers)
    print(f"{name:45s} {results[name]:8.2f} s", flush=True)
    floor = results["floor: ffmpeg decode"]
    report = {
        "video_seconds": round(video_s, 1), "files": len(files), "size": f"{args.width}x{args.height}",
        "model_load_s": round(load_s, 2),
        "stages": {k: {"seconds": round(v, 2), "x_realtime": round(video_s / v, 1), "ratio_to_floor": round(v / floor, 2)}
                   for k, v in results.items()},
        "naive_over_svdpipe": round(results["naive (PySceneDetect + a decode per scorer)"] / results["all scorers"], 2),
    }
    (args.out / "curation_throughput.json").write_text(json.dumps(report, indent=1))
    print(f"\n{video_s:.0f} s of {args.width}x{args.height} video in {len(files)} files; model load {load_s:.1f} s")
    print("| stage | seconds | x real time | / floor |\n| --- | ---: | ---: | ---: |")
    for k, v in report["stages"].items():
        print(f"| {k} | {v['seconds']} | {v['x_realtime']} | {v['ratio_to_floor']} |")
    print(f"naive / svdpipe (all scorers): {report['naive_over_svdpipe']}")


if __name__ == "__main__":
    main()
