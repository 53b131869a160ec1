# Serving's GPU figures (issues 34 and 35) and the ChatGLM2/3 decoding step before and after (issue 36), each
# beside its baseline in the same device call.
# Run from the repository root on the GPU machine with the cp312 wheels in .whl2/ and the anchors in .anchors/.
# Usage: bash tools/perf/serve_call.sh MODE
#   chatglm3   ChatGLM3-6B: glmtui's serve (16-bit and NF4: 1, 8, 32, 128 clients; the mixed load of LoRA adapters,
#              prefixes and the base; LoRA numerics), then serve_baseline.py's transformers continuous batching
#              (CB_VARIANTS, default compile1_graphs: torch.compile + CUDA graphs, its best)
#   chatglm    ChatGLM-6B: the same serve figures (the weights-plus-cache bound at 32 clients)
#   decode     tools/perf/before_after.py .old (main before the fused step: mkdir .old && git archive 3a7f86f glmcore |
#              tar -x -C .old; carry it) on decode16, ChatGLM3-6B and ChatGLM-6B, then tests/gpu (the kernels a
#              16-bit step launches, each count printed)
#   prefix     ChatGLM-6B's batched evaluation without and with a 128-token P-tuning prefix (evaluate, evaluate_prefix)
set -u -o pipefail
# TINY=--tiny rehearses the call on the CPU at toy sizes, with this machine's packages.
if [ -z "${TINY:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl2/*.whl || exit 1
fi
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
bench() { python3 -m glmcore.bench --workdir /tmp/serve ${TINY:-} "$@" 2>>"$OUT/bench.err" | grep -v '"environment"' | tee -a "$OUT/bench.jsonl"; }
case $1 in
  chatglm3)
    rm -rf /tmp/serve/chatglm-6b-random
    bench --family chatglm3-6b --only bandwidth,serve
    CB_VARIANTS=${CB_VARIANTS:-compile1_graphs} HF_SKIP_DYNAMIC=1 HF_SKIP_STATIC=1 \
      python3 .anchors/serve_baseline.py ${TINY:-} 2>>"$OUT/baseline.err" | tee -a "$OUT/baseline.jsonl" ;;
  chatglm)
    rm -rf /tmp/serve/chatglm3-6b-random
    bench --family chatglm-6b --only bandwidth,serve ;;
  prefix)
    rm -rf /tmp/serve/chatglm3-6b-random
    bench --family chatglm-6b --only evaluate,evaluate_prefix ;;
  decode)
    rm -rf /tmp/serve
    python3 tools/perf/before_after.py .old --only bandwidth,decode16 --family chatglm3-6b --family chatglm-6b \
      --rounds ${ROUNDS:-2} --workdir /tmp/before-after ${TINY:-} 2>&1 | tee "$OUT/before_after.txt"
    [ -n "${TINY:-}" ] || python3 -m pytest tests/gpu -p no:cacheprovider -k kernels --runxfail -vv -s > "$OUT/gpu_tests.txt" 2>&1
    grep -E "kernels, ChatGLM-6B|passed|failed" "$OUT/gpu_tests.txt" ;;
  *) echo "unknown mode $1"; exit 2 ;;
esac
tail -5 "$OUT/bench.err" "$OUT/baseline.err" 2>/dev/null
