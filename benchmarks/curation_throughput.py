"""Curation throughput against its physical floor and against the naive way, in one run on one machine.

    .venv/bin/python benchmarks/curation_throughput.py [--minutes 2] [--engine local --engine ray] [--repeats 2]
    .venv/bin/python benchmarks/curation_throughput.py --stages --minutes 3   # the per-stage table as well
    .venv/bin/python benchmarks/curation_throughput.py --minutes 2 --minutes 6  # fixed cost and marginal ratio
    .venv/bin/python benchmarks/curation_throughput.py --minutes 30 --dtype float32 --dtype bfloat16

The whole command: ``svdpipe curate`` (start-up, scoring, the clips-table checks, selection and shards of every
variant, MLflow logging) in a fresh process on a freshly ingested copy of the corpus, once per engine and repeat,
each time between two ffmpeg floor measurements of the same files (their mean is that run's floor); with
``--dtype``, once per engine and network precision (``compute.dtype``). Wall and CPU
seconds (the command and all its child processes) are both reported: on a shared machine the CPU ratio moves less.
The ``ray`` engine's CPU seconds count only the driver (the command): Ray's worker processes are not its children.

With two or more ``--minutes``, a line through each engine's mean (floor, command) seconds per length splits the
command into a fixed cost (start-up, model loading, MLflow and Dagster bookkeeping: the intercept) and a marginal
cost per second of floor (the slope): the ratio the command tends to on a corpus many times larger.

With ``--stages``, per stage over the same files, one process, all cores available to it:

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
import os
import resource
import shutil
import subprocess
import sys
import tempfile
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

    from svdpipe.config_schema import SvdpipeConfig

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


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _run(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """(wall, CPU) seconds of a command and its child processes."""
    c0, t0 = _children_cpu(), time.perf_counter()
    done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall, cpu = time.perf_counter() - t0, _children_cpu() - c0
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}")
    return wall, cpu


def floor(files: list[Path]) -> tuple[float, float]:
    """ffmpeg decoding every frame of every file, one after the other."""
    walls, cpus = zip(*(_run(["ffmpeg", "-v", "error", "-i", str(f), "-f", "null", "-"]) for f in files))
    return sum(walls), sum(cpus)


def _env(home: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "DAGSTER_HOME": str(home / "dagster"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}", "SVDPIPE_PROFILE": "tiny"}


def whole_command(files: list[Path], engines: list[str], dtypes: list[str], repeats: int, work: Path) -> list[dict]:
    """``svdpipe curate`` end to end on a fresh copy of an ingested corpus, beside the ffmpeg floor."""
    cli = [sys.executable, "-m", "orchestration.cli"]
    template = work / "ingested"
    if not (template / "root" / "metadata" / "videos.parquet").exists():
        shutil.rmtree(template, ignore_errors=True)
        _run(cli + ["ingest", str(files[0].parent), "--data-root", str(template / "root")], _env(template))
    runs = []
    for repeat in range(repeats):
        for engine, dtype in ((e, d) for e in engines for d in dtypes):
            with tempfile.TemporaryDirectory(dir=work) as tmp:
                home = Path(tmp) / "home"
                shutil.copytree(template, home)
                before = floor(files)
                wall, cpu = _run(cli + ["curate", "--data-root", str(home / "root"), "--set",
                                        f"compute.engine={engine}", "--set", f"compute.dtype={dtype}"], _env(home))
                after = floor(files)
            f_wall, f_cpu = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
            runs.append({"engine": engine, "dtype": dtype, "repeat": repeat + 1, "seconds": round(wall, 2),
                         "cpu_s": round(cpu, 2), "floor_s": round(f_wall, 2), "floor_cpu_s": round(f_cpu, 2),
                         "ratio_to_floor": round(wall / f_wall, 2), "cpu_ratio_to_floor": round(cpu / f_cpu, 2),
                         "load_1min": round(os.getloadavg()[0], 1)})
            print("whole command:", json.dumps(runs[-1]), flush=True)
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, action="append",
                    help="minutes of video in the corpus (repeatable: a fixed and a marginal cost; default 2)")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--engine", action="append", choices=["local", "ray"],
                    help="engine(s) of the whole-command run (repeatable; default local)")
    ap.add_argument("--dtype", action="append", choices=["float32", "bfloat16", "float16"],
                    help="compute.dtype of the networks in the whole-command run (repeatable; default float32)")
    ap.add_argument("--repeats", type=int, default=1, help="whole-command runs per engine and dtype")
    ap.add_argument("--stages", action="store_true", help="also time each curation stage in this process")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    engines = args.engine or ["local"]
    report: dict = {"size": f"{args.width}x{args.height}", "cpus": os.cpu_count(), "whole_command": []}
    for minutes in args.minutes or [2.0]:
        files = corpus(args.out, minutes, args.width, args.height)
        video_s = sum(probe_video(f).duration_s for f in files)
        runs = whole_command(files, engines, args.dtype or ["float32"], args.repeats,
                             args.out / f"whole-{files[0].parent.name}")
        for r in runs:
            r.update(video_seconds=round(video_s, 1), files=len(files))
        report["whole_command"] += runs
    print(f"\n`svdpipe curate`, {args.width}x{args.height} video")
    print("| engine | dtype | video s | files | run | seconds | floor s | / floor | CPU s | floor CPU s "
          "| CPU / floor CPU | load |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in report["whole_command"]:
        print(f"| {r['engine']} | {r['dtype']} | {r['video_seconds']} | {r['files']} | {r['repeat']} | "
              f"{r['seconds']} | {r['floor_s']} | **{r['ratio_to_floor']}** | {r['cpu_s']} | {r['floor_cpu_s']} | "
              f"{r['cpu_ratio_to_floor']} | {r['load_1min']} |")
    report["marginal"] = marginal(report["whole_command"])
    for engine, m in report["marginal"].items():
        print(f"{engine}: fixed {m['fixed_s']} s, then {m['marginal_ratio']}x the floor per added second of video "
              f"(CPU: fixed {m['fixed_cpu_s']} s, {m['marginal_cpu_ratio']}x)")
    if args.stages:  # on the last corpus length
        report.update(stages(files, video_s, args))
    (args.out / "curation_throughput.json").write_text(json.dumps(report, indent=1))


def marginal(runs: list[dict]) -> dict:
    """Per engine and dtype with runs at two or more lengths: least-squares lines command = fixed + ratio x floor,
    over the mean of each length's repeats, in wall and in CPU seconds."""
    groups: dict[str, dict[float, list[dict]]] = {}
    for r in runs:
        groups.setdefault(f"{r['engine']} {r['dtype']}", {}).setdefault(r["video_seconds"], []).append(r)
    out = {}
    for engine, by_len in sorted(groups.items()):
        if len(by_len) < 2:
            continue
        fit = {}
        for key, x_key, y_key in (("", "floor_s", "seconds"), ("_cpu", "floor_cpu_s", "cpu_s")):
            xs = np.array([np.mean([r[x_key] for r in rs]) for rs in by_len.values()])
            ys = np.array([np.mean([r[y_key] for r in rs]) for rs in by_len.values()])
            slope, intercept = np.polyfit(xs, ys, 1)
            fit[f"fixed{key}_s"], fit[f"marginal{key}_ratio"] = round(float(intercept), 1), round(float(slope), 2)
        out[engine] = fit
    return out


def stages(files: list[Path], video_s: float, args) -> dict:
    cfg = load_config("tiny", environ={})
    cur = cfg.curation
    probes = {f: probe_video(f) for f in files}

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

    steps = {
        "floor: ffmpeg decode": lambda f: subprocess.run(["ffmpeg", "-v", "error", "-i", str(f), "-f", "null", "-"],
                                                         check=True),
        "svdpipe decode pass": lambda f: decode_once(f, cur.sample_fps, cur.score_short_side,
                                                     cur.motion.flow_short_side, cur.cuts.detect_width),
        "cuts + motion": cuts_motion,
        "all scorers": score_all,
        "naive (PySceneDetect + a decode per scorer)": lambda f: naive(f, cfg, scorers),
    }
    results = {}
    for name, fn in steps.items():
        results[name] = sum(timed(lambda: fn(f)) for f in files)
        print(f"{name:45s} {results[name]:8.2f} s", flush=True)
    name = f"all scorers, {cur.workers} worker processes (as `svdpipe curate`)"
    results[name] = production(files, probes, cfg, cur.workers)
    print(f"{name:45s} {results[name]:8.2f} s", flush=True)
    base = results["floor: ffmpeg decode"]
    report = {
        "model_load_s": round(load_s, 2),
        "stages": {k: {"seconds": round(v, 2), "x_realtime": round(video_s / v, 1), "ratio_to_floor": round(v / base, 2)}
                   for k, v in results.items()},
        "naive_over_svdpipe": round(results["naive (PySceneDetect + a decode per scorer)"] / results["all scorers"], 2),
    }
    print(f"\n{video_s:.0f} s of {args.width}x{args.height} video in {len(files)} files; model load {load_s:.1f} s")
    print("| stage | seconds | x real time | / floor |\n| --- | ---: | ---: | ---: |")
    for k, v in report["stages"].items():
        print(f"| {k} | {v['seconds']} | {v['x_realtime']} | {v['ratio_to_floor']} |")
    print(f"naive / svdpipe (all scorers): {report['naive_over_svdpipe']}")
    return report


if __name__ == "__main__":
    main()
