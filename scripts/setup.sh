#!/usr/bin/env bash
# Creates the virtual environment and installs svdpipe with its test tools. Safe to run again.
set -euo pipefail
PY=${1:-python3.11}
VENV=${2:-.venv}

if ! command -v ffmpeg >/dev/null 2>&1; then
  echo "ffmpeg not found: installing it from Debian's packages" >&2
  if [[ $(id -u) -eq 0 ]]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq ffmpeg >/dev/null
fi

# The browser tests (tests/browser/) drive Debian's Chromium with Playwright's client; no browser download.
if ! command -v chromium >/dev/null 2>&1; then
  echo "chromium not found: installing it from Debian's packages (for tests/browser/)" >&2
  if [[ $(id -u) -eq 0 ]]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

if ! command -v "$PY" >/dev/null 2>&1; then
  echo "error: $PY not found; svdpipe needs Python 3.11 (set PY=/path/to/python3.11)" >&2
  exit 1
fi
[[ -x $VENV/bin/python ]] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# Exact versions with hashes from requirements.lock (refresh: `make lock`), then svdpipe itself without
# resolving again. torch/torchvision are pinned there; pip on Python 3.11 takes them from this machine's disk.
"$VENV/bin/python" -m pip install -q --require-hashes -r requirements.lock
"$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
"$VENV/bin/python" -m pip check >/dev/null || { "$VENV/bin/python" -m pip check; exit 1; }
# DeepSpeed compiles its shared-memory communication op (C++, about a minute on 2 cores) the first time a process
# of this environment starts an engine on the CPU; build it now, not in the first training stage or mid-suite.
"$VENV/bin/python" -c "from training.engine import build_shm_op; build_shm_op()" >/dev/null || {
  echo "error: DeepSpeed could not build its shm op; training on the CPU needs a C++ compiler (apt-get install g++)" >&2
  exit 1
}
"$VENV/bin/python" -c "import torch, torchvision, av, dagster, mlflow; print('svdpipe environment ready: torch', torch.__version__, '| dagster', dagster.__version__, '| mlflow', mlflow.__version__)"
