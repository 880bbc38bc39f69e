set -o pipefail
export PYTHONUNBUFFERED=1
REPO=$PWD
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl 2>/dev/null || exit 3
export PYTHONPATH=/tmp/site:$REPO MLFLOW_ALLOW_FILE_STORE=true MLFLOW_TRACKING_URI=file:./mlruns HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 .gpu/unpack.py /tmp/data /tmp/minilm >/dev/null || exit 4
python3 -c "import torch; print(torch.__version__, 'cudnn', torch.backends.cudnn.version())"
for s in no_cudnn default cudnn_only efficient_only; do timeout 60 python3 .gpu/sdpa.py $s; done 2>&1 | grep -v Warning | tee $OUT/sdpa.jsonl
mkdir -p /tmp/p && cd /tmp/p && cp $REPO/params.yaml . || exit 5
python3 -m mtbert.cli -q import-data --source /tmp/data && python3 -m mtbert.cli -q prepare 2>/dev/null || exit 6
OPTS="profile=quick model.checkpoint=/tmp/minilm train.device=cuda train.precision=bf16 train.threads=8"
for cudnn in 0 1; do
  rm -rf artifacts/model artifacts/checkpoints mlruns
  t=$(date +%s.%N)
  MTBERT_SDPA_CUDNN=$cudnn timeout 100 python3 -m mtbert.cli train $OPTS > $OUT/train_cudnn$cudnn.log 2>&1
  echo "train MTBERT_SDPA_CUDNN=$cudnn rc $? wall $(python3 -c "import time; print(round(time.time() - $t, 1))") s"
  grep -o "trained .*" $OUT/train_cudnn$cudnn.log
  python3 -c "import json; print(json.dumps(json.load(open('artifacts/model/mtbert.json'))['train_state'])[:600])"
done
