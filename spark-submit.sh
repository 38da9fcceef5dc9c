#!/usr/bin/env bash
# Run a cxrspark job under spark-submit with the project's environment.
#
#   ./spark-submit.sh [SPARK-SUBMIT OPTIONS] JOB.py [JOB ARGS]
#   ./spark-submit.sh jobs/ingest.py --set ingest.image_size=256           # local[*] (default)
#   ./spark-submit.sh --master spark://host:7077 jobs/ingest.py            # standalone cluster
#   ./spark-submit.sh --master yarn --deploy-mode cluster jobs/ingest.py   # YARN
#   ./spark-submit.sh --master k8s://https://host:6443 --conf spark.kubernetes.container.image=... jobs/ingest.py
#
# Local mode uses .venv directly. Any other master gets the environment shipped the way Spark
# documents it for Python packages: .venv packed with venv-pack into dist/cxrspark-env.tar.gz, sent with
# --archives ...#environment, executors run ./environment/bin/python; the cxrspark package itself goes
# as dist/cxrspark.zip via --py-files. The pack leaves out pyspark's jars (executors run on their own
# Spark installation; the Python workers need only pyspark's Python modules) and is rebuilt only when
# pyproject.toml or this script changed.
# (On Kubernetes with the images in docker/, the environment is already in the image: set
# CXRSPARK_SHIP_ENV=0 to skip the archive.)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
[ -x "$venv/bin/spark-submit" ] || { echo "spark-submit.sh: $venv not set up; run ./setup.sh first" >&2; exit 2; }

master="local[*]"
opts=()
while [ $# -gt 0 ] && [[ "$1" != *.py ]]; do
  case "$1" in
    --master) master="$2"; shift 2 ;;
    --master=*) master="${1#--master=}"; shift ;;
    *) opts+=("$1"); shift ;;
  esac
done
[ $# -gt 0 ] || { echo "usage: $0 [spark-submit options] JOB.py [ARGS]" >&2; exit 2; }
job="$1"; shift

export CXRSPARK_SUBMIT_MASTER="$master"
opts=(--driver-java-options "-Dlog4j2.configurationFile=file:$here/conf/log4j2.properties" "${opts[@]}")
export SPARK_HOME="${SPARK_HOME:-$("$venv/bin/python" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')}"
export PATH="$venv/bin:$PATH"

if [[ "$master" == local* ]]; then
  export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}"
  export PYSPARK_PYTHON="$venv/bin/python" PYSPARK_DRIVER_PYTHON="$venv/bin/python"
  exec "$venv/bin/spark-submit" --master "$master" "${opts[@]}" "$job" "$@"
fi

mkdir -p "$here/dist"
( cd "$here" && rm -f dist/cxrspark.zip && "$venv/bin/python" -c '
import zipfile, pathlib
with zipfile.ZipFile("dist/cxrspark.zip", "w", zipfile.ZIP_DEFLATED) as z:
    for p in sorted(pathlib.Path("cxrspark").rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            z.write(p)' )
ship=()
if [ "${CXRSPARK_SHIP_ENV:-1}" = "1" ]; then
  pack="$here/dist/cxrspark-env.tar.gz"
  stamp="$here/dist/.cxrspark-env.sha"
  want=$(cat "$here/pyproject.toml" "$here/spark-submit.sh" | sha256sum | cut -c1-16)
  if [ ! -f "$pack" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "spark-submit.sh: packing $venv -> $pack (venv-pack; cxrspark itself ships as dist/cxrspark.zip)" >&2
    "$venv/bin/venv-pack" -p "$venv" -o "$pack" --force --exclude 'lib/python3.11/site-packages/__editable__*' \
        --exclude 'lib/python3.11/site-packages/cxrspark*' --exclude 'lib/python3.11/site-packages/pyspark/jars/*' -q
    echo "$want" > "$stamp"
  fi
  ship=(--archives "$pack#environment" --conf spark.pyspark.python=./environment/bin/python
        --conf spark.executorEnv.PYSPARK_PYTHON=./environment/bin/python)
  export PYSPARK_PYTHON=./environment/bin/python
fi
export PYSPARK_DRIVER_PYTHON="$venv/bin/python"
# client mode: the driver runs here, with .venv (spark.pyspark.python alone would apply to it too)
ship+=(--conf "spark.pyspark.driver.python=$venv/bin/python")
exec "$venv/bin/spark-submit" --master "$master" "${ship[@]}" --py-files "$here/dist/cxrspark.zip" \
     "${opts[@]}" "$job" "$@"
