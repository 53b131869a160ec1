# One device call for issue 36's evaluation-peak question and the 16-bit PEFT prefix baseline of ChatGLM2/3.
# Usage (repository root on the GPU machine): bash tools/perf/eval_peak_call.sh OLD_CHECKOUT [eval-only]
#   OLD_CHECKOUT holds glmcore/ of the commit behind the earlier evaluation figure (d1c6723).
# Each bench runs in a fresh process so that nothing one leaves allocated counts in another's peak.
set -u
old=$1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
bench() { python3 -m glmcore.bench --workdir /tmp/bench "$@" 2>>"$OUT/bench.err" | grep -v '"environment"' ; }
echo "== main, decode16+evaluate";            PYTHONPATH=$PWD:/tmp/site bench --only decode16,evaluate
echo "== d1c6723, decode16+evaluate";         (cd "$old" && PYTHONPATH=$PWD:/tmp/site bench --only decode16,evaluate)
echo "== main, ptuning16 then decode16+evaluate (one process)"; PYTHONPATH=$PWD:/tmp/site bench --only ptuning16,decode16,evaluate
rm -rf /tmp/bench
[ "${2:-}" = eval-only ] && exit 0
echo "== main, ChatGLM3-6B ptuning16";        PYTHONPATH=$PWD:/tmp/site bench --family chatglm3-6b --only ptuning16
echo "== transformers GLM + PEFT prefix, 16-bit"; python3 tools/perf/peft_prefix_baseline16.py 2>>"$OUT/bench.err"
