#!/usr/bin/env bash
# README command 1: set up, then run the main job end to end on an embedded default:
# a generated sample of every supported source layout -> ingest with local Spark -> train seed_cnn with
# two Horovod ranks -> evaluate on the test split -> batch prediction over the raw files, everything
# tracked in a local MLflow store.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
./setup.sh
export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}" TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"

echo "== 1/5 generate a sample of every source layout (out/demo/raw)"
.venv/bin/python jobs/make_sample.py out/demo/raw > /dev/null

echo "== 2/5 ingest with Spark (out/demo/dataset)"
./spark-submit.sh jobs/ingest.py --config conf/ingest.yaml --config conf/demo-sources.yaml \
    --set ingest.output=out/demo/dataset

echo "== 3/5 train with horovodrun -np 2 (MLflow: out/demo/mlflow)"
.venv/bin/horovodrun --gloo -np 2 -H localhost:2 .venv/bin/python jobs/train.py \
    --config conf/train.yaml --config conf/demo-train.yaml "$@" 2>&1 \
    | grep -v -e "^\[1\]<std" -e "<stderr>:.*\(WARNING\|INFO\)" | sed -u 's/^\[0\]<stdout>://'

echo "== 4/5 evaluate on the test split: patient-bootstrap CIs, calibration, Grad-CAM, source probe, model card"
.venv/bin/python jobs/evaluate.py --config conf/train.yaml --config conf/demo-train.yaml --set evaluate.bootstrap=200

echo "== 5/5 batch prediction with Spark over every raw sample file, bad ones included (out/demo/predictions)"
./spark-submit.sh jobs/predict.py --config conf/ingest.yaml --config conf/train.yaml --config conf/demo-train.yaml \
    --set predict.input=out/demo/raw --set predict.output=out/demo/predictions

store="$(pwd)/out/demo/mlflow/mlflow.db"
echo
echo "Look at the runs (training: parameters, curves, per-class tables, the model; evaluation: CIs, pictures, MODEL_CARD.md):"
echo "  .venv/bin/mlflow ui --backend-store-uri sqlite:///$store"
echo "  then open http://127.0.0.1:5000/#/experiments?workflowType=machine_learning (the UI's \"Model training\" view)"
