#!/usr/bin/env bash
# Create or refresh .venv with the pinned stack, in the order that works:
#   pip tooling -> TensorFlow (cpu or gpu) -> Horovod built against it -> cxrspark and the rest.
# Idempotent: when pyproject.toml, this script and the variant are unchanged since the last
# successful run, it only re-checks the build and returns in seconds.
#
#   ./setup.sh                       # CPU, Gloo (the default)
#   CXRSPARK_VARIANT=gpu ./setup.sh  # tensorflow[and-cuda] + Horovod with NCCL (needs CUDA on the node)
#   PYTHON=python3.11 ./setup.sh     # pick the interpreter used to create .venv
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

VARIANT="${CXRSPARK_VARIANT:-cpu}"
PYTHON="${PYTHON:-python3}"
VENV=.venv
STAMP="$VENV/.cxrspark-setup"

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

# --- Java 17+ (Spark 4) ---------------------------------------------------------------------------
if ! command -v java >/dev/null 2>&1; then
  die "Java not found. Spark 4 needs Java 17 or 21. Install it, e.g. 'sudo apt-get install -y openjdk-17-jre-headless' (Debian/Ubuntu) or 'brew install openjdk@17' (macOS), then re-run."
fi
java_major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1)
if [ -z "$java_major" ] || [ "$java_major" -lt 17 ]; then
  die "Java ${java_major:-?} found; Spark 4 needs 17 or 21. Install e.g. 'sudo apt-get install -y openjdk-17-jre-headless' and put it first on PATH (or set JAVA_HOME)."
fi

# --- Python 3.11 ----------------------------------------------------------------------------------
pyver=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || die "'$PYTHON' not found"
[ "$pyver" = "3.11" ] || die "Python 3.11 is required (TensorFlow 2.15 supports up to 3.11); '$PYTHON' is $pyver. Set PYTHON=python3.11."

case "$VARIANT" in
  cpu) TF_EXTRA=cpu; HVD_OPS=(HOROVOD_CPU_OPERATIONS=gloo) ;;
  gpu) TF_EXTRA=gpu; HVD_OPS=(HOROVOD_GPU_OPERATIONS=NCCL) ;;
  *) die "CXRSPARK_VARIANT must be cpu or gpu, not '$VARIANT'" ;;
esac

want=$(cat pyproject.toml setup.sh | sha256sum | cut -c1-16)-$VARIANT
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$VENV/bin/python" -c 'import cxrspark' 2>/dev/null; then
  say "environment up to date ($VENV, $VARIANT); checking Horovod build"
else
  [ -x "$VENV/bin/python" ] || { say "creating $VENV"; "$PYTHON" -m venv "$VENV"; }
  PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
  say "pip tooling"
  "${PIP[@]}" --upgrade "pip>=24" "setuptools<70" wheel
  # pin file generated from pyproject so TensorFlow and Horovod see the same numpy etc.
  tf_req=$("$VENV/bin/python" - "$TF_EXTRA" <<'PY'
import sys, tomllib
p = tomllib.load(open("pyproject.toml", "rb"))["project"]
print(p["optional-dependencies"][sys.argv[1]][0])
PY
)
  say "TensorFlow: $tf_req"
  "${PIP[@]}" "$tf_req" "numpy==1.26.4"
  if "$VENV/bin/python" -c 'import horovod, sys; sys.exit(horovod.__version__ != "0.28.1")' 2>/dev/null; then
    say "Horovod 0.28.1 already built"
  else
    say "building Horovod 0.28.1 against TensorFlow (a few minutes the first time; pip caches the wheel)"
    env HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
        HOROVOD_WITHOUT_MPI=1 HOROVOD_WITH_GLOO=1 "${HVD_OPS[@]}" MAKEFLAGS=-j"$(nproc)" \
        "$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-build-isolation horovod==0.28.1
  fi
  say "cxrspark and the rest of the pinned stack"
  "${PIP[@]}" -e ".[$TF_EXTRA,cluster,dev]"
  echo "$want" > "$STAMP"
fi

check=$("$VENV/bin/horovodrun" --check-build 2>&1) || die "horovodrun --check-build failed:
$check"
echo "$check" | grep -q '\[X\] TensorFlow' || die "Horovod was built without TensorFlow:
$check"
echo "$check" | grep -q '\[X\] Gloo' || die "Horovod was built without Gloo:
$check"
say "horovodrun --check-build: TensorFlow and Gloo present"
say "ready: $VENV ($VARIANT)"
