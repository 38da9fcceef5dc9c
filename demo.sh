#!/usr/bin/env bash
# README command 1: set up, then run the main job end to end on an embedded default:
# a generated sample of every supported source layout -> ingest with local Spark.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
./setup.sh
.venv/bin/python jobs/make_sample.py out/demo/raw
./spark-submit.sh jobs/ingest.py --config conf/ingest.yaml --config conf/demo-sources.yaml \
    --set ingest.output=out/demo/dataset "$@"
