# Second device run: where the quick profile's GPU training time goes, and MFU at batch 128.
set -o pipefail
export PYTHONUNBUFFERED=1
REPO=$PWD
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$REPO MLFLOW_ALLOW_FILE_STORE=true MLFLOW_TRACKING_URI=file:./mlruns HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 .gpu/unpack.py /tmp/data /tmp/minilm || exit 4
timeout 150 python3 -c "
import sys, json; sys.path.insert(0, 'benchmarks'); import gpu, torch
torch.backends.cuda.matmul.allow_tf32 = False
r = gpu.throughput('/tmp/minilm', 'cuda', False, batch=128)
json.dump(r, open('$OUT/throughput_b128.json', 'w'), indent=1)" 2>&1 | grep -v Loading | tee $OUT/throughput_b128.log
mkdir -p /tmp/p && cd /tmp/p && cp $REPO/params.yaml . || exit 5
python3 -m mtbert.cli -q import-data --source /tmp/data && python3 -m mtbert.cli -q prepare || exit 6
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -lms 500 > $OUT/smi.csv &
SMI=$!
timeout 220 python3 -m cProfile -o $OUT/train.prof -m mtbert.cli train profile=quick model.checkpoint=/tmp/minilm train.device=cuda train.precision=bf16 train.threads=8 > $OUT/train.log 2>&1
echo "train rc $?"
kill $SMI
tail -30 $OUT/train.log
