#!/bin/bash
# Issue 8 on nvidia-h100-x2: install the carried wheels, then tools/multigpu/bench.py (JSON lines on stdout
# and in $OUT/results.jsonl). Run from the repository root with `timeout -k 10 540 bash tools/multigpu/run.sh [ARGS]`;
# on four GPUs (issue 9): `... run.sh --only full --full 4:2,2:2,4:3` (ARGS go to bench.py).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl-mgpu/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
{ nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader; command -v nvcc ninja; nvcc --version | tail -1
  python3 -c 'import deepspeed, torch, transformers, datasets, pyarrow; print("deepspeed", deepspeed.__version__, "torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__, "datasets", datasets.__version__, "pyarrow", pyarrow.__version__, "gpus", torch.cuda.device_count())'
} 2>&1 | tee "$OUT/environment.txt"
python3 tools/multigpu/bench.py --out "$OUT" --budget-s 470 "$@" 2>&1 | grep --line-buffered -v "^Loading\|it/s\]" | tee "$OUT/bench.log"
echo "{\"figure\": \"exit\", \"bench_rc\": ${PIPESTATUS[0]}, \"compute_apps\": \"$(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader | tr '\n' ';')\"}" | tee -a "$OUT/results.jsonl"
