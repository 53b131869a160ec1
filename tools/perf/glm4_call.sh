# GLM-4's GPU figures (issues 32 and 33), each beside the GLM-4 baseline script in the same device call.
# Run from the repository root on the GPU machine with the cp312 wheels in .whl2/ and the anchors in .anchors/.
# Usage: bash tools/perf/glm4_call.sh MODE
#   layout1     glm-4-9b-chat: NF4 P-tuning, decoding 16-bit and NF4, batched evaluation, load; baseline (glm class)
#   layout1-16  glm-4-9b-chat: the product run (NF4, glmtui train / eval / serve: tools/perf/glm4_product_run.sh),
#               then 16-bit P-tuning beside PEFT's 16-bit prefix tuning, on the same random checkpoint
#   hf | 0414   glm-4-9b-chat-hf / glm-4-0414: NF4 P-tuning and decoding; baseline (glm / glm4 class)
set -u -o pipefail
# TINY=--tiny rehearses the call on the CPU at toy sizes, with this machine's packages.
if [ -z "${TINY:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl2/*.whl || exit 1
fi
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1
mkdir -p /tmp/bin && printf '#!/bin/sh\nexec python3 -c "import sys; from glmtui.cli import main; sys.exit(main())" "$@"\n' > /tmp/bin/glmtui
chmod +x /tmp/bin/glmtui && export PATH=/tmp/bin:$PATH
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
bench() { python3 -m glmcore.bench --workdir /tmp/g4 ${TINY:-} "$@" 2>>"$OUT/bench.err" | grep -v '"environment"' | tee -a "$OUT/bench.jsonl"; }
baseline() { GLM4_CLASSES=$1 python3 .anchors/glm4_baseline.py ${TINY:-} 2>>"$OUT/baseline.err" | tee -a "$OUT/baseline.jsonl"; }
case $1 in layout1*) family=glm-4-9b-chat ;; hf) family=glm-4-9b-chat-hf ;; *) family=glm-4-0414 ;; esac
for other in /tmp/g4/*-random; do  # one random 9B checkpoint (19 GB) on the disk at a time
  [ "$other" = "/tmp/g4/$family-random" ] || rm -rf "$other"
done
case $1 in
  layout1)
    python3 -m pytest tests/gpu -q -p no:cacheprovider 2>&1 | tail -4 | tee "$OUT/gpu_tests.txt"
    bench --family glm-4-9b-chat --only bandwidth,ptuning4,decode16,decode4,evaluate,load
    baseline glm ;;
  layout1-16)
    [ -d /tmp/g4/glm-4-9b-chat-random ] || bench --family glm-4-9b-chat --only bandwidth
    bash tools/perf/glm4_product_run.sh /tmp/g4/glm-4-9b-chat-random /tmp/g4product ${PRODUCT_BITS:-4} ${PRODUCT_STEPS:-200} 2>&1 | tee "$OUT/product.txt"
    bench --family glm-4-9b-chat --only bandwidth,ptuning16
    python3 tools/perf/peft_prefix_baseline16.py --glm4 ${TINY:-} 2>>"$OUT/baseline.err" | tee -a "$OUT/baseline.jsonl" ;;
  hf)
    bench --family glm-4-9b-chat-hf --only bandwidth,ptuning4,decode16,decode4
    baseline glm ;;
  0414)
    bench --family glm-4-0414 --only bandwidth,ptuning4,decode16,decode4
    baseline glm4 ;;
  *) echo "unknown mode $1"; exit 2 ;;
esac
tail -5 "$OUT/bench.err" "$OUT/baseline.err" 2>/dev/null
