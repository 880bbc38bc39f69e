#!/usr/bin/env bash
# Run the ablation sets of ablations.yaml one configuration at a time (what made docs/ablation.md).
#   bash scripts/ablation.sh PROJECT_DIR [set/config ...]
# PROJECT_DIR is a folder prepared with `mtbert import-data --source DATA && mtbert prepare`
# (outside the repository: it fills with models and an MLflow store). Each configuration runs as
# its own `mtbert ablate --only` call under a lock file, so other heavy jobs can take turns;
# finished configurations are skipped, so the script can simply be run again after a stop.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PROJECT=${1:?usage: scripts/ablation.sh PROJECT_DIR [set/config ...]}
shift
export PATH="$REPO/.venv/bin:$PATH"
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TRANSFORMERS_OFFLINE=${TRANSFORMERS_OFFLINE:-1}
export MLFLOW_DISABLE_TELEMETRY=true TOKENIZERS_PARALLELISM=false
LOCK=${MTBERT_LOCK:-/tmp/mtbert-heavy.lock}
FILE=$REPO/ablations.yaml
todo=("$@")
if [ ${#todo[@]} -eq 0 ]; then
  mapfile -t todo < <(python -c "
from mtbert.ablation import load_sets
for name in ('main', 'samplers'):
    for v in load_sets('$FILE')[name].variants:
        print(f'{name}/{v.name}')")
fi
cd "$PROJECT"
for item in "${todo[@]}"; do
  echo "$(date +%T) $item"
  flock "$LOCK" mtbert -q --params "$REPO/params.yaml" ablate --set "${item%%/*}" --only "${item#*/}" \
      --file "$FILE" --out "$REPO/docs/ablation" profile=ablation > /dev/null || echo "FAILED: $item"
done
echo "$(date +%T) done"
