#!/usr/bin/env bash
# Open the Ray dashboard and the MLflow UI of a launcher cluster on this machine, through
# Ray's own SSH connection to the head (nothing on the cluster listens publicly):
#
#   cluster/tunnel.sh cluster/aws.yaml      # or cluster/gcp.yaml
#   -> Ray dashboard  http://127.0.0.1:8265   (also the address for `ray job submit`)
#   -> MLflow UI      http://127.0.0.1:5000
#
# The dashboard listens on 127.0.0.1 on the head, so the forward reaches it directly;
# MLflow listens on the head's private address, so a loopback relay runs on the head for
# as long as this tunnel is open. Ctrl-C closes both.
set -euo pipefail
CONFIG="${1:?usage: cluster/tunnel.sh CLUSTER_YAML}"
exec ray exec "$CONFIG" \
  --port-forward 8265 \
  --port-forward 5000 \
  "python ~/circuitlib/cluster/mlflow/loopback_relay.py --listen-port 5000"
