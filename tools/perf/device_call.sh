# One device call: versions, the product's figures, the published code's baselines (same call), profiles.
# Run from the folder holding perf/ (this checkout), anchors/, ref/thudm_glm1/ and whl/ (bitsandbytes cp312).
# Usage: bash perf/tools/perf/device_call.sh FIGURES   (FIGURES for glmcore.bench --only; "grid" = VRAM grid only)
set -u
root=$PWD
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site whl/*.whl || exit 1
export PYTHONPATH=$root/perf:/tmp/site PYTHONUNBUFFERED=1 CHATGLM_REF=$root/ref
python3 -c "import torch, transformers, bitsandbytes as b; print(torch.__version__, transformers.__version__, b.__version__)"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv
cd perf
if [ "$1" = grid ]; then
  python3 -m glmcore.bench --only vramgrid --workdir /tmp/bench 2>&1 | tee $OUT/grid.jsonl | grep -v Warning
  exit
fi
python3 -m glmcore.bench --only "$1" --workdir /tmp/bench 2>$OUT/bench.err | tee $OUT/bench.jsonl
sed '/^# 3. transformers/,$d' ../anchors/anchor_bench.py > /tmp/anchor16.py
sed '/^# transformers GLM class + PEFT/,$d' ../anchors/anchor_bench_4bit.py > /tmp/anchor4.py
python3 /tmp/anchor16.py 2>$OUT/anchor.err | tee $OUT/anchor16.jsonl
python3 /tmp/anchor4.py 2>>$OUT/anchor.err | tee $OUT/anchor4.jsonl
if [ -n "${PROFILE:-}" ]; then
  python3 tools/perf/profile_steps.py --workdir /tmp/bench $PROFILE > $OUT/profile.txt 2>&1
  grep -E "^===|profiled step|GiB " $OUT/profile.txt
fi
