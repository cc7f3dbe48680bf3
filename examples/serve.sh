#!/usr/bin/env bash
# Serve the best model of examples/train_and_evaluate.py and ask it for a price.
#
#   bash examples/serve.sh [MODEL] [PORT]
#
# Run it from the directory where train_and_evaluate.py ran (its sqlite:///mlflow.db),
# or set MLFLOW_TRACKING_URI. The clients send plain JSON rows: the served model turns
# them into the tf.Examples the SavedModel parses.
set -euo pipefail

model=${1:-house-prices}
port=${2:-5001}
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db}

mlflow models serve -m "models:/${model}@best" --env-manager local -h 127.0.0.1 -p "$port" &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT

for _ in $(seq 1 120); do
  if curl -sf "http://127.0.0.1:${port}/ping" >/dev/null; then break; fi
  if ! kill -0 "$server" 2>/dev/null; then echo "mlflow models serve exited" >&2; exit 1; fi
  sleep 1
done

curl -sf "http://127.0.0.1:${port}/invocations" \
  -H 'Content-Type: application/json' \
  -d '{"dataframe_records": [
        {"area": 120, "rooms": 4, "age": 10, "distance": 5},
        {"area": 60, "rooms": 2, "age": 50, "distance": 20}
      ]}'
echo
