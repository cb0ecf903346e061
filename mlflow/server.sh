#!/usr/bin/env bash
# The MLflow tracking server and model registry hsnet records to.
#
#   bash mlflow/server.sh                      # sqlite + local artifacts, on 127.0.0.1:5000
#   export MLFLOW_TRACKING_URI=http://127.0.0.1:5000
#
# Settings (environment; credentials only ever from the environment, never in this file):
#   MLFLOW_BACKEND_STORE_URI      database: sqlite:///path.db (default: mlflow/mlflow.db, the store hsnet
#                                 uses without a server) or postgresql://USER@HOST:5432/DB
#                                 (password in PGPASSWORD or ~/.pgpass; needs psycopg2)
#   MLFLOW_ARTIFACTS_DESTINATION  where the server stores artifacts: s3://BUCKET/PREFIX, or a folder
#                                 (default: mlflow/artifacts). Clients upload through the server.
#   MLFLOW_S3_ENDPOINT_URL        an S3-compatible store (MinIO, Ceph): http://minio.minio:9000
#   AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION   the S3 credentials
#   MLFLOW_HOST (127.0.0.1; 0.0.0.0 in a container), MLFLOW_PORT (5000), MLFLOW_WORKERS (2)
#   MLFLOW_ALLOWED_HOSTS          Host headers to accept besides localhost, comma-separated, e.g.
#                                 mlflow.kubeflow.svc.cluster.local,mlflow.kubeflow,mlflow.example.com
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
backend="${MLFLOW_BACKEND_STORE_URI:-sqlite:///${here}/mlflow.db}"
artifacts="${MLFLOW_ARTIFACTS_DESTINATION:-${here}/artifacts}"
host="${MLFLOW_HOST:-127.0.0.1}"
port="${MLFLOW_PORT:-5000}"
args=(server --backend-store-uri "$backend" --serve-artifacts --artifacts-destination "$artifacts"
      --host "$host" --port "$port" --workers "${MLFLOW_WORKERS:-2}")
if [[ -n "${MLFLOW_ALLOWED_HOSTS:-}" ]]; then
  args+=(--allowed-hosts "localhost,localhost:${port},127.0.0.1,127.0.0.1:${port},${MLFLOW_ALLOWED_HOSTS}")
fi
case "$artifacts" in
  s3://*|gs://*|wasbs://*|hdfs://*) ;;
  *) mkdir -p "$artifacts" ;;
esac
shown="$(printf '%s' "${backend%%\?*}" | sed -E 's#(://[^:/@]+):[^@]*@#\1:***@#')"  # never print a password
echo "mlflow server: store ${shown}, artifacts ${artifacts}, http://${host}:${port}" >&2
exec mlflow "${args[@]}"
