#!/usr/bin/env bash
# The GPU measurement of docs/training-throughput.md, as run on the device machine (H100/H200, PyTorch preinstalled,
# no network): installs diffusers and DeepSpeed from wheels/sdist carried in .whl/, then measures the svd-size
# training steps. Usage: OUT=dir bash benchmarks/gpu_train_bench.sh   (SIZE=tiny for a CPU dry run of the script)
set -u
SIZE=${SIZE:-svd}
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
if [ -d .whl ] && [ "$SIZE" = svd ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  DS_BUILD_OPS=0 $PY -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target /tmp/site \
    .whl/deepspeed-*.tar.gz || exit 1
  export PYTHONPATH=/tmp/site
fi
$PY -c "import torch, diffusers, deepspeed; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'deepspeed', deepspeed.__version__)" || exit 1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
B="benchmarks/train_throughput.py --size $SIZE --out $OUT/train_throughput.jsonl"
run() { echo "== $*"; timeout 170 $PY $B "$@" 2>&1 | grep -E '^\{|Error|error:' | tail -3; }
if [ "$SIZE" = svd ] && [ "${PHASE:-1}" = 2 ]; then
  # Where the time goes, the largest micro-batch that fits without recomputation, and torch.compile.
  run --stage 2 --micro-batch 2 --steps 3 --warmup 2 --profile "$OUT/profile_stage2_mb2.txt"
  run --stage 2 --micro-batch 4 --steps 5 --warmup 2
  timeout 230 $PY $B --stage 2 --micro-batch 4 --steps 5 --warmup 3 --compile 2>&1 | grep -E '^\{|Error|error:' | tail -3
elif [ "$SIZE" = svd ]; then
  run --stage 2 --micro-batch 1 --steps 8 --warmup 3
  run --stage 2 --micro-batch 2 --steps 8 --warmup 3
  run --stage 2 --micro-batch 4 --steps 6 --warmup 2 --grad-checkpointing
  run --stage 3 --micro-batch 1 --steps 5 --warmup 2 --grad-checkpointing
  run --stage 1 --micro-batch 16 --steps 8 --warmup 3
else
  run --stage 2 --micro-batch 1 --steps 2 --warmup 1
  run --stage 2 --micro-batch 2 --steps 2 --warmup 1 --grad-checkpointing
fi
nvidia-smi --query-gpu=memory.used --format=csv 2>/dev/null
true
