#!/usr/bin/env bash
# Run the ablation sets of ablations.yaml, one `mtbert ablate` call per configuration (what made docs/ablation.md).
#   bash scripts/ablation.sh PROJECT_DIR [set/config ...]
# PROJECT_DIR is a folder prepared with `mtbert import-data --source DATA && mtbert prepare`
# (outside the repository: it fills with models and an MLflow store). Each configuration runs as
# its own `mtbert ablate --only` call on its set's profile with 1 torch thread; finished
# configurations are skipped, so the script can simply be run again after a stop.
#   SETS (default "main samplers") names the sets to run, OUT (default REPO/docs/ablation) the tables.
#   JOBS=2 (default 1) runs that many configurations side by side (one thread each). Point
#   MLFLOW_TRACKING_URI at a tracking server then: concurrent writers lock a SQLite file.
#   With JOBS=1 each configuration waits for the lock file MTBERT_LOCK, so other heavy jobs can
#   take turns. When all have run, the tables are rewritten once from every finished configuration
#   (`--tables-only`: a configuration that FAILED is not retried; run the script again for it).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PROJECT=${1:?usage: scripts/ablation.sh PROJECT_DIR [set/config ...]}
shift
export PATH="$REPO/.venv/bin:$PATH" PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's code
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TRANSFORMERS_OFFLINE=${TRANSFORMERS_OFFLINE:-1}
export MLFLOW_DISABLE_TELEMETRY=true TOKENIZERS_PARALLELISM=false
export REPO FILE=$REPO/ablations.yaml LOCK=${MTBERT_LOCK:-/tmp/mtbert-heavy.lock}
export OUT=${OUT:-$REPO/docs/ablation} JOBS=${JOBS:-1}
read -r -a SETS <<< "${SETS:-main samplers}"

todo=("$@")
if [ ${#todo[@]} -eq 0 ]; then
  mapfile -t todo < <(python -c "
from mtbert.pipeline.ablation import load_sets
sets = load_sets('$FILE')
for name in '${SETS[*]}'.split():
    for v in sets[name].variants:
        print(f'{name}/{v.name}')")
fi
# Each set's profile, read once: PROFILES="main=quick samplers=quick ..."
PROFILES=$(python -c "
from mtbert.pipeline.ablation import load_sets
print(' '.join(f'{name}={s.profile}' for name, s in load_sets('$FILE').items()))")
export PROFILES
profile_of() {  # set name -> its profile
  local pair
  for pair in $PROFILES; do [ "${pair%%=*}" = "$1" ] && echo "${pair#*=}"; done
}
run_one() {  # set/config
  local set=${1%%/*} config=${1#*/} lock=()
  [ "$JOBS" -eq 1 ] && lock=(flock "$LOCK")
  echo "$(date +%T) start $1"
  "${lock[@]}" mtbert -q --params "$REPO/params.yaml" ablate --set "$set" --only "$config" \
      --file "$FILE" --out "$OUT" "profile=$(profile_of "$set")" train.threads=1 \
      > /dev/null || echo "FAILED: $1"
  echo "$(date +%T) end $1"
}
export -f run_one profile_of
cd "$PROJECT"
printf '%s\n' "${todo[@]}" | xargs -P "$JOBS" -I{} bash -c 'run_one "$1"' _ {}
for set in "${SETS[@]}"; do
  mtbert -q --params "$REPO/params.yaml" ablate --set "$set" --tables-only --file "$FILE" --out "$OUT" \
      "profile=$(profile_of "$set")" train.threads=1 > /dev/null || echo "FAILED: tables of $set"
done
echo "$(date +%T) done"
