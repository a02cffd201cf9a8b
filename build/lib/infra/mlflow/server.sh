#!/usr/bin/env bash
# MLflow tracking server: runs and metrics in PostgreSQL, artifacts proxied by the server to S3.
#   bash infra/mlflow/server.sh            (from the repository root, with the venv's python on PATH or $PYTHON)
# Environment (defaults in brackets):
#   PGHOST [127.0.0.1] PGPORT [5432] PGUSER [postgres] PGPASSWORD []   the PostgreSQL server (libpq variables)
#   MLFLOW_DB [mlflow]                        database, created if missing
#   MLFLOW_ARTIFACTS [s3://svdpipe-mlflow/artifacts]   where artifacts go (the bucket must exist)
#   MLFLOW_HOST [127.0.0.1] MLFLOW_PORT [5000] MLFLOW_WORKERS [1]
#   AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL (or MLFLOW_S3_ENDPOINT_URL) for the S3 server
# Clients then use MLFLOW_TRACKING_URI=http://$MLFLOW_HOST:$MLFLOW_PORT and need no S3 credentials.
# The command is built by infra.deploy.mlflow_server_command, the same one the tests start.
set -euo pipefail
PYTHON=${PYTHON:-python}
db=${MLFLOW_DB:-mlflow}
"$PYTHON" -m infra.deploy createdb "$db" >/dev/null
exec "$PYTHON" -m infra.deploy mlflow-server --db "$db" \
  --artifacts "${MLFLOW_ARTIFACTS:-s3://svdpipe-mlflow/artifacts}" \
  --host "${MLFLOW_HOST:-127.0.0.1}" --port "${MLFLOW_PORT:-5000}" --workers "${MLFLOW_WORKERS:-1}"
