#!/usr/bin/env bash
# Install everything mtbert needs into ./.venv (idempotent): system packages, pinned torch, the project.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages, each skipped where it is already there: WordNet for synonym augmentation
# (wordnet-base); Chromium and its driver for the browser test of the MLflow UI; PostgreSQL 15
# for the shared MLflow/Optuna stores and their integration tests (docs/scaling.md).
APT_PKGS=()
[[ -d /usr/share/wordnet ]] || APT_PKGS+=(wordnet-base)
[[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]] || APT_PKGS+=(chromium chromium-driver)
[[ -x /usr/lib/postgresql/15/bin/initdb ]] || APT_PKGS+=(postgresql)
if (( ${#APT_PKGS[@]} )) && command -v apt-get >/dev/null; then
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${APT_PKGS[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: 2.13.0 is the CPU build the project is tested with; anything looser pulls CUDA.
.venv/bin/python -m pip install -q 'torch==2.13.0'
.venv/bin/python -m pip install -q -e '.[dev]' 'torch==2.13.0'
# boto3 (MLflow's S3 artifact store) in its own call, pinned to the botocore that dvc-s3 brought:
# resolving `dvc-s3 boto3` together backtracked for about 8 minutes here.
BOTOCORE=$(.venv/bin/python -c 'import botocore; print(botocore.__version__)')
.venv/bin/python -m pip install -q "boto3==$BOTOCORE" 'torch==2.13.0'
echo "mtbert installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
