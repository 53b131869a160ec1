# Issue 36's evaluation peak, second call: which figure run before `evaluate` in one bench process leaves memory
# allocated that the evaluation's peak then counts. Each line is one fresh process over the same checkpoint;
# the evaluation row reports `allocated_before_load_GiB`, what the earlier figures still held.
# Usage (repository root on the GPU machine, bitsandbytes' cp312 wheel in .whl/): bash tools/perf/eval_peak_call2.sh
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
bench() { python3 -m glmcore.bench --workdir /tmp/bench "$@" 2>>"$OUT/bench.err" | grep -v '"environment"' ; }
for figures in decode16,evaluate load,decode16,evaluate ptuning4,decode16,evaluate vram,decode16,evaluate; do
  echo "== --only $figures"; bench --only "$figures"
done
