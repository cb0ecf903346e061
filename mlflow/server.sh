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
#   MLFLOW_ALLOWED_HOSTS          Host names to accept besides localhost (each at any port), comma-separated,
#                                 e.g. mlflow.kubeflow.svc.cluster.local,mlflow.kubeflow,mlflow.example.com
#   MLFLOW_SERVER_ENABLE_JOB_EXECUTION  false (MLflow's default is true): MLflow's job runner is for its
#                                 GenAI features (prompt optimisation, scorers, trace roll-ups), which
#                                 hsnet doesn't use; it started 8 more processes (a runner and 7 huey
#                                 consumers, ~20 s of CPU at each start, their memory held while idle)
set -euo pipefail
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
mlflow_bin="$(type -P mlflow || true)"  # a file on PATH only: never the mlflow/ folder beside this script
if [[ -z "$mlflow_bin" || -d "$mlflow_bin" || ! -x "$mlflow_bin" ]]; then
  echo "mlflow/server.sh: the mlflow command is missing: install it (pip install -e '.[track]', or" \
       "'make setup') and put its bin folder on PATH (e.g. source .venv/bin/activate)" >&2
  exit 127
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
backend="${MLFLOW_BACKEND_STORE_URI:-sqlite:///${here}/mlflow.db}"
artifacts="${MLFLOW_ARTIFACTS_DESTINATION:-${here}/artifacts}"
host="${MLFLOW_HOST:-127.0.0.1}"
port="${MLFLOW_PORT:-5000}"
args=(server --backend-store-uri "$backend" --serve-artifacts --artifacts-destination "$artifacts"
      --host "$host" --port "$port" --workers "${MLFLOW_WORKERS:-2}")
if [[ -n "${MLFLOW_ALLOWED_HOSTS:-}" ]]; then
  # MLflow compares the whole Host header (name:port) with each entry: a name is allowed at any port
  # (a client of http://mlflow.kubeflow:5000, a Service on another port, kubectl port-forward)
  allowed="localhost,localhost:*,127.0.0.1,127.0.0.1:*"
  IFS=',' read -ra listed <<< "$MLFLOW_ALLOWED_HOSTS"
  for name in "${listed[@]}"; do
    name="${name//[[:space:]]/}"
    [[ -n "$name" ]] || continue
    allowed+=",${name}"
    if [[ "$name" == "["*"]" ]]; then           # an IPv6 address: fnmatch reads '[' as a set, so it is escaped
      allowed+=",[[]${name#[}:*"
    elif [[ "$name" != "*" && "$name" != *:* && "$name" != "["* ]]; then  # a name or pattern without a port
      allowed+=",${name}:*"
    fi
  done
  args+=(--allowed-hosts "$allowed")
fi
case "$artifacts" in
  s3://*|gs://*|wasbs://*|hdfs://*) ;;
  *) mkdir -p "$artifacts" ;;
esac
# never print a password: URIs are shown through hsnet's one masking rule (hsnet.tracking.mask_uri), run
# by the Python that runs mlflow; where hsnet is not installed beside it (the slim server image), the
# user, password and query are left out altogether
py="$(sed -n '1s/^#![[:space:]]*//p' "$mlflow_bin")"
[[ "$py" == *python* ]] || py=python3
mask() {
  HSNET_URI="$1" $py -c 'import os; from hsnet.tracking import mask_uri; print(mask_uri(os.environ["HSNET_URI"]))' \
    2>/dev/null && return
  local uri="${1%%\?*}"
  [[ "$uri" == *://*@* ]] && uri="${uri%%://*}://${uri#*@}"
  printf '%s\n' "$uri"
}
echo "mlflow server: store $(mask "$backend"), artifacts $(mask "$artifacts"), http://${host}:${port}" >&2
exec "$mlflow_bin" "${args[@]}"
