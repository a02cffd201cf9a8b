"""Clips per second of the network scorers, batched on a device, against the same scorers one clip at a time.

    .venv/bin/python benchmarks/scorer_throughput.py [--profile tiny|svd] [--device cpu|cuda] [--dtype bfloat16]
                                                     [--clips 64] [--width 455 --height 256]

One process, one device. Both runs score the same clips (first, middle and last frame each, at the scoring size
the decode pass hands over) with CRAFT, CLIP and its aesthetic head, and CoCa:

* peer: one clip per call, float32 (the per-clip loop scoring used to be);
* batched: ``scoring.score_clips`` over all clips, with the profile's batch sizes, in ``--dtype`` on ``--device``
  (what a scorer actor of the Ray engine runs per call).

Prints clips/s of both and their ratio; writes benchmarks/out/scorer_throughput.json. The ``svd`` profile needs
its pretrained weights present (open_clip cache, LAION head file).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from curation.sample_corpus import Shot, _ShotRenderer  # noqa: E402
from curation.scoring import Scorers, score_clips  # noqa: E402
from svdpipe.config import load_config  # noqa: E402


def clips_of(n: int, width: int, height: int) -> list[list[np.ndarray]]:
    """Rendered shots of the sample corpus (textured scenes, half with a text overlay), three frames each."""
    out = []
    for i in range(n):
        renderer = _ShotRenderer(Shot(length=48, moving=i % 2 == 0, text=i % 2 == 1, seed=500 + i, speed=3.0),
                                 height, width)
        out.append([renderer.frame(t).astype(np.uint8) for t in (0, 24, 47)])
    return out


def clips_per_s(fn, clips) -> float:
    fn(clips[:2])  # warm-up: kernels chosen, caches filled
    t0 = time.perf_counter()
    fn(clips)
    _sync()
    return len(clips) / (time.perf_counter() - t0)


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--width", type=int, default=455)
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out")
    args = ap.parse_args()
    cfg = load_config(args.profile, environ={})
    clips = clips_of(args.clips, args.width, args.height)

    peer = Scorers.load(cfg.curation, cfg.seed, args.device, "float32")
    batched = Scorers.load(cfg.curation, cfg.seed, args.device, args.dtype)
    device = batched.text.device
    one_by_one = clips_per_s(lambda cs: [score_clips([c], peer) for c in cs], clips)
    together = clips_per_s(lambda cs: score_clips(cs, batched), clips)
    report = {
        "profile": args.profile, "device": device, "dtype": args.dtype, "clips": len(clips),
        "frame": f"{args.width}x{args.height}", "text_long_side": cfg.curation.text.long_side,
        "batch_sizes": {k: getattr(cfg.curation, k).batch_size for k in ("text", "clip", "caption")},
        "peer_float32_one_clip_per_call_clips_per_s": round(one_by_one, 2),
        "batched_clips_per_s": round(together, 2),
        "batched_over_peer": round(together / one_by_one, 2),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scorer_throughput.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
