#!/bin/bash
# On a GPU host, carrying .devcarry/ (benchmarks/gpu_host_carry.sh): install the wheels, unpack MiniLM, run
# benchmarks/sweep_gpus.py. Its output goes to $OUT (the device tool's folder; set it elsewhere).
# ARGS: sweep_gpus.py's options [default: --trials 8 --per-gpu 1 2 4]
set -uo pipefail
OUT=${OUT:-.}
t0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .devcarry/whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 -c "import lzma,shutil; shutil.copyfileobj(lzma.open('.devcarry/minilm/model.safetensors.xz'), open('.devcarry/minilm/model.safetensors','wb'))" || exit 4
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc;
  python3 -c "import torch, mlflow, optuna, sqlalchemy; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0), mlflow.__version__, optuna.__version__)"; } 2>&1 | tee $OUT/env.txt
echo "setup $(( $(date +%s)-t0 )) s"
timeout ${BUDGET:-450} python3 benchmarks/sweep_gpus.py ${ARGS:---trials 8 --per-gpu 1 2 4} --model hf:$PWD/.devcarry/minilm --data .devcarry/data/snli-resplit 2>&1 | tee $OUT/sweep_gpus.txt
echo "total $(( $(date +%s)-t0 )) s"
