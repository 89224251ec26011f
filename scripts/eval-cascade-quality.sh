#!/usr/bin/env bash
# Reproduces the README's "Cascade quality" figures. Remote = Qwen2.5-Coder-1.5B behind
# `edgecascade serve` on loopback; 300 items per task; greedy decoding.
# - The seven-task mix (choice, yes/no, number, exact): local = SmolLM2-135M and
#   Qwen2.5-Coder-0.5B -> docs/eval/{smollm2,qwen05}-vs-qwen15.{json,svg}, the HTML report
#   docs/eval/smollm2-vs-qwen15.html, and SmolLM2 answering choice/yes-no items by likelihood
#   (cloze) -> docs/eval/smollm2-cloze-vs-qwen15.{json,svg}.
# - The short-answer mix (answers written, never picked from a list: SQuAD, NaturalQuestions,
#   TriviaQA, common knowledge, arithmetic): local = SmolLM2-135M ->
#   docs/eval/smollm2-short-vs-qwen15.{json,svg,html}, and Qwen2.5-Coder-0.5B ->
#   docs/eval/qwen05-short-vs-qwen15.{json,svg}.
# `--probe` adds the hidden-state probe's held-out figures (issue 11) to the JSON reports.
# About 2 hours on 2 cores the first time (mostly the 1.5B remote answering); reruns come from
# the eval cache (~/.cache/edgecascade/eval) in seconds.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
. scripts/native-env.sh
python3 scripts/fetch_models.py smollm2 qwen05 qwen15
scripts/fetch_eval_data.py
cargo build --release -p edgecascade-cli
bin=${CARGO_TARGET_DIR:-target}/release/edgecascade
models=${EDGECASCADE_MODELS:-models}
smollm2=$models/smollm2-135m-instruct-q4_1.gguf
log=$(mktemp)
"$bin" serve --model "$models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf" --port 0 >"$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 300); do grep -q '^listening on' "$log" && break; sleep 0.2; done
url=$(sed -n 's/^listening on //p' "$log")
remote=(--remote-url "$url" --remote-model qwen15 --limit 300)
mkdir -p docs/eval

mixed=()
for d in arc_easy sciq mmlu boolq sst2 arithmetic triviaqa; do mixed+=(--dataset "data/eval/$d.jsonl"); done
for pair in "smollm2:smollm2-135m-instruct-q4_1.gguf" "qwen05:qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"; do
  name=${pair%%:*}
  "$bin" eval --model "$models/${pair#*:}" "${mixed[@]}" "${remote[@]}" --probe \
    --plot "docs/eval/$name-vs-qwen15.svg" --json >"docs/eval/$name-vs-qwen15.json"
  # The human-readable report (from the cache).
  "$bin" eval --model "$models/${pair#*:}" "${mixed[@]}" "${remote[@]}"
done
"$bin" eval --model "$smollm2" "${mixed[@]}" "${remote[@]}" --html docs/eval/smollm2-vs-qwen15.html >/dev/null
"$bin" eval --model "$smollm2" "${mixed[@]}" "${remote[@]}" --local-answers cloze \
  --plot docs/eval/smollm2-cloze-vs-qwen15.svg --json >docs/eval/smollm2-cloze-vs-qwen15.json

short=()
for d in squad nq_open triviaqa common_knowledge arithmetic; do short+=(--dataset "data/eval/$d.jsonl"); done
"$bin" eval --model "$smollm2" "${short[@]}" "${remote[@]}" --probe \
  --plot docs/eval/smollm2-short-vs-qwen15.svg --json >docs/eval/smollm2-short-vs-qwen15.json
"$bin" eval --model "$smollm2" "${short[@]}" "${remote[@]}" --html docs/eval/smollm2-short-vs-qwen15.html
"$bin" eval --model "$models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf" "${short[@]}" "${remote[@]}" --probe \
  --plot docs/eval/qwen05-short-vs-qwen15.svg --json >docs/eval/qwen05-short-vs-qwen15.json
