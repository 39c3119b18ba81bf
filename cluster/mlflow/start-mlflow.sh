#!/usr/bin/env bash
# Start (or restart) the MLflow tracking server on a Ray head VM, bound to the node's
# private address so that Ray workers in the same VPC reach it and nothing else does.
#
# Environment (all optional except the artifact destination):
#   MLFLOW_ARTIFACTS_DESTINATION  s3://bucket/prefix or gs://bucket/prefix (required). The
#                                 server proxies artifact uploads there, so workers need no
#                                 bucket credentials; the head's own role/service account does.
#   MLFLOW_BACKEND_STORE_URI      default sqlite:///$MLFLOW_STATE_DIR/mlflow.db; for a durable
#                                 store use postgresql://USER:PASSWORD@HOST:5432/mlflow
#   MLFLOW_HOST                   default: the node's first private address (hostname -I)
#   MLFLOW_PORT                   default 5000
#   MLFLOW_STATE_DIR              default ~/mlflow (mounted from the host by the launcher)
#   MLFLOW_TRACKING_PASSWORD      required: the password of the server's admin user (MLflow's
#   MLFLOW_TRACKING_USERNAME      basic-auth app; user default admin), which every client sends.
#                                 Nothing is shipped: generate it (cluster/README.md).
set -euo pipefail

HOST="${MLFLOW_HOST:-$(hostname -I | awk '{print $1}')}"
PORT="${MLFLOW_PORT:-5000}"
STATE="${MLFLOW_STATE_DIR:-$HOME/mlflow}"
BACKEND="${MLFLOW_BACKEND_STORE_URI:-sqlite:///$STATE/mlflow.db}"
ARTIFACTS="${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION, e.g. s3://my-bucket/mlflow-artifacts}"

case "$HOST" in
  "" | 0.0.0.0 | "::" | "[::]")
    echo "start-mlflow: refusing to bind MLflow to all interfaces ('$HOST'); set MLFLOW_HOST to a private address" >&2
    exit 2 ;;
esac
case "$ARTIFACTS" in
  *CHANGE-ME*)
    echo "start-mlflow: MLFLOW_ARTIFACTS_DESTINATION is still the placeholder '$ARTIFACTS'; edit the cluster YAML" >&2
    exit 2 ;;
esac

if [ -z "${MLFLOW_TRACKING_PASSWORD:-}" ]; then
  echo "start-mlflow: set MLFLOW_TRACKING_PASSWORD (the admin password; see cluster/README.md); MLflow never runs without authentication here" >&2
  exit 2
fi

mkdir -p "$STATE"
# MLflow's basic-auth app: users in their own store; the admin is created on first start
# from MLFLOW_AUTH_ADMIN_* (never written to a file). Anyone else gets nothing.
umask 077
cat >"$STATE/basic_auth.ini" <<INI
[mlflow]
default_permission = NO_PERMISSIONS
database_uri = sqlite:///$STATE/basic_auth.db
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
export MLFLOW_AUTH_CONFIG_PATH="$STATE/basic_auth.ini"
export MLFLOW_AUTH_ADMIN_USERNAME="${MLFLOW_TRACKING_USERNAME:-admin}"
export MLFLOW_AUTH_ADMIN_PASSWORD="$MLFLOW_TRACKING_PASSWORD"
if [ -f "$STATE/server.pid" ] && kill -0 "$(cat "$STATE/server.pid")" 2>/dev/null; then
  kill "$(cat "$STATE/server.pid")" || true
  sleep 3
fi

# --serve-artifacts (the default) proxies artifacts; the default --allowed-hosts admits
# localhost and private addresses, which covers workers (head's private IP) and the tunnel.
nohup mlflow server \
  --app-name basic-auth \
  --host "$HOST" --port "$PORT" \
  --backend-store-uri "$BACKEND" \
  --artifacts-destination "$ARTIFACTS" \
  --serve-artifacts \
  --workers 4 \
  >"$STATE/server.log" 2>&1 &
echo $! >"$STATE/server.pid"

for _ in $(seq 1 90); do
  if python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" "http://$HOST:$PORT/health" 2>/dev/null; then
    echo "start-mlflow: MLflow tracking server at http://$HOST:$PORT (backend ${BACKEND%%:*}, artifacts $ARTIFACTS)"
    exit 0
  fi
  sleep 1
done
echo "start-mlflow: the server did not become healthy; see $STATE/server.log" >&2
tail -n 30 "$STATE/server.log" >&2 || true
exit 1
