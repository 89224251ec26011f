#!/usr/bin/env bash
# Reproduces the README's "Cascade quality" figures: 300 items from each of seven tasks, local =
# SmolLM2-135M and Qwen2.5-Coder-0.5B, remote = Qwen2.5-Coder-1.5B behind `edgecascade serve` on
# loopback. Writes docs/eval/{smollm2,qwen05}-vs-qwen15.{json,svg}. About 1.5 hours on 2 cores the
# first time (mostly the 1.5B remote answering 2,100 items); reruns come from the eval cache.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
. scripts/native-env.sh
python3 scripts/fetch_models.py smollm2 qwen05 qwen15
scripts/fetch_eval_data.py
cargo build --release -p edgecascade-cli
bin=${CARGO_TARGET_DIR:-target}/release/edgecascade
models=${EDGECASCADE_MODELS:-models}
log=$(mktemp)
"$bin" serve --model "$models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf" --port 0 >"$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 300); do grep -q '^listening on' "$log" && break; sleep 0.2; done
# SmolLM2 answering choice and yes/no items by likelihood (cloze) instead of generating.
"$bin" eval --model "$models/smollm2-135m-instruct-q4_1.gguf" "${sets[@]}" --limit 300 --remote-url "$url" \
  --remote-model qwen15 --local-answers cloze --plot docs/eval/smollm2-cloze-vs-qwen15.svg --json \
  >docs/eval/smollm2-cloze-vs-qwen15.json
url=$(sed -n 's/^listening on //p' "$log")
sets=()
for d in arc_easy sciq mmlu boolq sst2 arithmetic triviaqa; do sets+=(--dataset "data/eval/$d.jsonl"); done
# SmolLM2 answering choice and yes/no items by likelihood (cloze) instead of generating.
"$bin" eval --model "$models/smollm2-135m-instruct-q4_1.gguf" "${sets[@]}" --limit 300 --remote-url "$url" \
  --remote-model qwen15 --local-answers cloze --plot docs/eval/smollm2-cloze-vs-qwen15.svg --json \
  >docs/eval/smollm2-cloze-vs-qwen15.json
mkdir -p docs/eval
for pair in "smollm2:smollm2-135m-instruct-q4_1.gguf" "qwen05:qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"; do
  name=${pair%%:*}
  "$bin" eval --model "$models/${pair#*:}" "${sets[@]}" --limit 300 --remote-url "$url" --remote-model qwen15 \
    --plot "docs/eval/$name-vs-qwen15.svg" --json >"docs/eval/$name-vs-qwen15.json"
  "$bin" eval --model "$models/${pair#*:}" "${sets[@]}" --limit 300 --remote-url "$url" --remote-model qwen15
done
# SmolLM2 answering choice and yes/no items by likelihood (cloze) instead of generating.
"$bin" eval --model "$models/smollm2-135m-instruct-q4_1.gguf" "${sets[@]}" --limit 300 --remote-url "$url" \
  --remote-model qwen15 --local-answers cloze --plot docs/eval/smollm2-cloze-vs-qwen15.svg --json \
  >docs/eval/smollm2-cloze-vs-qwen15.json
