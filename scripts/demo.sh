#!/usr/bin/env bash
# The whole chain on the embedded default (local folder, SQLite Dagster and MLflow, tiny profile, CPU).
# sample corpus -> ingestion -> curation (scores, GX checks, variants, shards) -> latents -> Stages I-III per variant
# -> evaluation -> variant comparison. About 5 minutes on 2 CPU cores (after make setup); every step shows its progress.
set -euo pipefail
BIN=${BIN:-.venv/bin}
OUT=${DEMO_DIR:-demo-data}
ROOT="$OUT/root"
# The project home is this folder unless one is set: its svdpipe.yaml records the demo's data root, so that
# `make ui` (and every svdpipe command run here without --data-root) works on the demo's data.
export SVDPIPE_HOME=${SVDPIPE_HOME:-$PWD}

echo "== 0. project settings: the demo's data root becomes the project's"
"$BIN/svdpipe" settings --data-root "$ROOT" --profile tiny

echo "== 1. sample corpus: labelled synthetic videos plus one broken input of each kind"
"$BIN/svdpipe" sample-corpus "$OUT/corpus" --seed 0

echo "== 2. ingestion (Dagster assets ingested_batch[<batch>] -> videos)"
"$BIN/svdpipe" ingest "$OUT/corpus" --data-root "$ROOT"

echo "== 3. the same inputs again: nothing new is added"
"$BIN/svdpipe" ingest "$OUT/corpus" --data-root "$ROOT"

echo "== 4. curation: cuts, motion, CRAFT text, CLIP aesthetics + text match, captions -> GX checks -> variants"
"$BIN/svdpipe" curate --data-root "$ROOT"

echo "== 5. training: clip latents, then Stage I (image) -> II (inflated video) -> III (finetune), per variant"
"$BIN/svdpipe" train --data-root "$ROOT"

echo "== 6. evaluation per variant (held-out loss, Frechet distance, motion fidelity, temporal consistency),"
echo "      the registration rule, and the variant comparison"
"$BIN/svdpipe" evaluate --data-root "$ROOT"

STORE=$("$BIN/python" -c 'from svdpipe.config import load_config; from svdpipe.tracking import tracking_uri
print(tracking_uri(load_config()))')
VIEW=$("$BIN/python" -c 'from svdpipe.config import load_config; from svdpipe.tracking import ensure_experiment, experiment_path
print(experiment_path(ensure_experiment(load_config())))')
cat <<TXT

Done in ${SECONDS}s. Data root: $ROOT (recorded in $SVDPIPE_HOME/svdpipe.yaml)
  metadata/videos.parquet, metadata/clips.parquet, curated/{uncurated,svd}/ (selection, histograms.png, shards)
  latents/<variant>/, models/<variant>/stage{1,2,3} (stage3: a StableVideoDiffusionPipeline folder)
  Dagster UI:  make ui            -> http://127.0.0.1:3000  (runs and materializations recorded in ${DAGSTER_HOME:-$SVDPIPE_HOME/.dagster})
  MLflow UI:   $BIN/mlflow ui --workers 1 --backend-store-uri $STORE --host 127.0.0.1 --port 5000
               -> http://127.0.0.1:5000$VIEW  (runs by variant and stage, with their headline metrics)
TXT
