# Issue 33's GPU run: a real P-tuning v2 run of GLM-4-9B's shape (random weights) through the product's own
# commands: `glmtui train` (NF4, 200 steps at batch 16, 64+64 tokens, pre_seq_len 128), `glmtui eval` on its
# checkpoint, and `glmtui serve` answering a request with it; then the run's figures and its estimate.
# Usage: bash tools/perf/glm4_product_run.sh MODEL_DIR WORK_DIR [BITS] [STEPS]
set -eu
model=$1 work=$2 bits=${3:-4} steps=${4:-200}
export GLMTUI_HOME=$work/home
mkdir -p "$work"
python3 -c "from glmcore.sample_data import write_sample_dataset; write_sample_dataset('$work/data', train_count=4000, dev_count=64)"
cat > "$work/run.toml" <<TOML
name = "glm4-nf4-ptuning"
model_path = "$model"
train_file = "$work/data/train.json"
validation_file = "$work/data/dev.json"
method = "ptuning-v2"
quantization_bit = $bits
pre_seq_len = 128
learning_rate = 0.02
per_device_train_batch_size = 16
gradient_accumulation_steps = 1
max_steps = $steps
save_steps = $steps
logging_steps = 10
max_source_length = 64
max_target_length = 64
TOML
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$work/smi.txt" & smi=$!
fi
started=$(date +%s.%N)
glmtui train "$work/run.toml" > "$work/train.log" 2>&1 || { tail -30 "$work/train.log"; exit 1; }
[ -n "${smi:-}" ] && kill "$smi"
echo "{\"figure\": \"glmtui_train_wall_s\", \"seconds\": $(python3 -c "print(round($(date +%s.%N) - $started, 1))")}"
run=$(ls -d "$GLMTUI_HOME"/runs/*/ | head -1)
python3 - "$run" "$work/run.toml" <<'PY'
import json, sys
from pathlib import Path
from glmcore.config import RunConfig
from glmcore.estimate import published_estimate
from glmcore.units import GIB
run, toml = Path(sys.argv[1]), sys.argv[2]
title, estimate = published_estimate(RunConfig.load(run / "config.toml"))
print(json.dumps({"figure": "estimate", "family": title, "GiB": round(estimate.total / GIB, 2),
                  "gradient_checkpointing": estimate.gradient_checkpointing,
                  "parts_GiB": {k: round(v / GIB, 2) for k, v in estimate.parts.items()}}))
for name in sorted(p.name for p in run.iterdir()):
    print("run file:", name)
events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines() if line.strip()]
logs = [event for event in events if event["kind"] == "log"]
print(json.dumps({"figure": "train_log_first", **logs[0]}))
print(json.dumps({"figure": "train_log_last", **logs[-1]}))
print(json.dumps({"figure": "train_end", **[e for e in events if e["kind"] == "end"][-1]}))
smi = Path(toml).parent / "smi.txt"
if smi.is_file():
    used = [int(line) for line in smi.read_text().split() if line.strip().isdigit()]
    print(json.dumps({"figure": "nvidia_smi_peak_used_GiB", "GiB": round(max(used) / 1024, 2) if used else None}))
PY
started=$(date +%s.%N)
glmtui eval --run glm4-nf4-ptuning --limit 64 --out "$work/eval.json" > "$work/eval.log" 2>&1 || { tail -30 "$work/eval.log"; exit 1; }
echo "{\"figure\": \"glmtui_eval_wall_s\", \"examples\": 64, \"seconds\": $(python3 -c "print(round($(date +%s.%N) - $started, 1))")}"
tail -12 "$work/eval.log"
glmtui serve --run glm4-nf4-ptuning --port 0 --detach > "$work/serve.log" 2>&1 || { tail -30 "$work/serve.log"; exit 1; }
cat "$work/serve.log"
port=$(glmtui serve --list | grep -o '127.0.0.1:[0-9]*' | head -1 | cut -d: -f2)
python3 - "$port" <<'PY'
import json, sys, time, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}/v1"
models = json.load(urllib.request.urlopen(f"{base}/models"))["data"]
print(json.dumps({"figure": "served_models", "models": [(m["id"], m["kind"]) for m in models]}))
prefix = next(m["id"] for m in models if m["kind"] == "prefix")
body = {"model": prefix, "messages": [{"role": "user", "content": "类型#上衣*颜色#白色"}], "max_tokens": 64, "temperature": 0}
request = urllib.request.Request(f"{base}/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
started = time.perf_counter()
answer = json.load(urllib.request.urlopen(request))
seconds = time.perf_counter() - started
print(json.dumps({"figure": "serve_one_request", "model": prefix, "seconds": round(seconds, 2), "usage": answer["usage"],
                  "answer_chars": len(answer["choices"][0]["message"]["content"] or "")}, ensure_ascii=False))
PY
glmtui serve --stop "$port" || true
