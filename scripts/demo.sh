#!/usr/bin/env bash
# The whole chain on the embedded default (local folder, SQLite Dagster and MLflow, tiny profile, CPU).
# Grows as the chain grows: today sample corpus -> ingestion -> curation (scores, GX checks, variants, shards).
set -euo pipefail
BIN=${BIN:-.venv/bin}
OUT=${DEMO_DIR:-demo-data}
ROOT="$OUT/root"

echo "== 1. sample corpus: labelled synthetic videos plus one broken input of each kind"
"$BIN/svdpipe" sample-corpus "$OUT/corpus" --seed 0

echo "== 2. ingestion (Dagster assets ingested_batch[<batch>] -> videos)"
"$BIN/svdpipe" ingest "$OUT/corpus" --data-root "$ROOT"

echo "== 3. the same inputs again: nothing new is added"
"$BIN/svdpipe" ingest "$OUT/corpus" --data-root "$ROOT"

echo "== 4. curation: cuts, motion, CRAFT text, CLIP aesthetics + text match, captions -> GX checks -> variants"
"$BIN/svdpipe" curate --data-root "$ROOT"

cat <<TXT

Done. Data root: $ROOT
  metadata/videos.parquet, metadata/clips.parquet, curated/{uncurated,svd}/ (selection, histograms.png, shards)
  Dagster UI:  make ui            -> http://127.0.0.1:3000  (runs and materializations recorded in ${DAGSTER_HOME:-.dagster})
  MLflow UI:   $BIN/mlflow ui --backend-store-uri sqlite:///$PWD/.mlflow/mlflow.db --host 127.0.0.1 --port 5000
TXT
