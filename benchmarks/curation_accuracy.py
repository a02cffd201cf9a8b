"""Curation accuracy on a labelled sample corpus the code has never seen (a fresh seed).

    .venv/bin/python benchmarks/curation_accuracy.py [--seed 2024] [--videos 8] [--seconds 20] [--width 480 --height 270]

Reports cut-detection precision / recall / F1 (±2 frames for hard cuts, within the transition ±2 for fades;
hard cuts and fades counted separately), and how well the motion score separates static from moving shots and the
text-area score separates text overlays from clean shots (margin and ROC AUC), with the tiny profile and the real
CRAFT weights. Writes benchmarks/out/curation_accuracy.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from curation.accuracy import evaluate  # noqa: E402
from curation.clips_table import to_frame  # noqa: E402
from curation.probe import probe_video  # noqa: E402
from curation.sample_corpus import make_sample_corpus  # noqa: E402
from curation.scoring import Scorers, score_video  # noqa: E402
from svdpipe.config import load_config  # noqa: E402


def run(folder: Path, truth: dict, profile: str = "tiny") -> dict:
    cfg = load_config(profile, environ={})
    scorers = Scorers.load(cfg.curation, cfg.seed)
    results = {}
    for name in truth["videos"]:
        probe = probe_video(folder / name)
        row = {"video_id": name, **probe.as_row()}
        results[name] = to_frame(score_video(folder / name, row, cfg.curation, scorers))
    return evaluate(results, truth)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--width", type=int, default=480)
    ap.add_argument("--height", type=int, default=270)
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out")
    args = ap.parse_args()
    folder = args.out / f"accuracy-seed{args.seed}-{args.width}x{args.height}"
    truth = make_sample_corpus(folder, seed=args.seed, videos=args.videos, seconds=args.seconds, fps=args.fps,
                               width=args.width, height=args.height, broken=False)
    t0 = time.perf_counter()
    report = run(folder, truth)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    report["corpus"] = {k: getattr(args, k) for k in ("seed", "videos", "seconds", "width", "height", "fps")}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "curation_accuracy.json").write_text(json.dumps(report, indent=1))
    print("| cuts | tp | fp | fn | precision | recall | F1 |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for kind in ("hard", "fade", "overall"):
        m = report["cuts"][kind]
        print(f"| {kind} | {m['tp']} | {m['fp']} | {m['fn']} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} |")
    mo, tx = report["motion"], report["text"]
    print(f"\nmotion: min moving {mo['moving_min']:.3f} vs max static {mo['static_max']:.3f} "
          f"(margin {mo['margin']:.3f}, AUC {mo['auc']:.3f}; {mo['moving_n']} moving, {mo['static_n']} static clips)")
    print(f"text:   min text {tx['text_min']:.3f} vs max clean {tx['clean_max']:.3f} "
          f"(margin {tx['margin']:.3f}, AUC {tx['auc']:.3f}; {tx['text_n']} text, {tx['clean_n']} clean clips)")
    print(f"{report['clips']} clips scored in {report['seconds']} s")


if __name__ == "__main__":
    main()
