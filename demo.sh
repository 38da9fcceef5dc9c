#!/usr/bin/env bash
# README command 1: set up, then run the main job end to end on an embedded default:
# a generated sample of every supported source layout -> ingest with local Spark -> train seed_cnn with
# two Horovod ranks -> evaluate on the test split, everything tracked in a local MLflow store.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
./setup.sh
export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}" TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"

echo "== 1/3 generate a sample of every source layout (out/demo/raw)"
.venv/bin/python jobs/make_sample.py out/demo/raw > /dev/null

echo "== 2/3 ingest with Spark (out/demo/dataset)"
./spark-submit.sh jobs/ingest.py --config conf/ingest.yaml --config conf/demo-sources.yaml \
    --set ingest.output=out/demo/dataset

echo "== 3/3 train with horovodrun -np 2, then evaluate on validation and test (MLflow: out/demo/mlflow)"
.venv/bin/horovodrun --gloo -np 2 -H localhost:2 .venv/bin/python jobs/train.py \
    --config conf/train.yaml --config conf/demo-train.yaml "$@" 2>&1 \
    | grep -v -e "^\[1\]<std" -e "<stderr>:.*\(WARNING\|INFO\)" | sed -u 's/^\[0\]<stdout>://'

store="$(pwd)/out/demo/mlflow/mlflow.db"
echo
echo "Look at the run (parameters, curves, per-class tables, confusion matrices, the model):"
echo "  .venv/bin/mlflow ui --backend-store-uri sqlite:///$store"
