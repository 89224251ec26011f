#!/usr/bin/env python3
"""The per-token cost of constrained decoding, ours (llguidance) against llama.cpp's own
(`llama-server`: the JSON schema converted to a GBNF grammar), same model, threads and schema.

For each round and each server in turn, sends the same greedy request twice, with and without
a JSON schema in `response_format`, and reads each server's own decode rate (ours:
`edgecascade.timings.decode_tok_s`; llama-server: `timings.predicted_per_second`). Reports the
median rates and, per server, the median of the per-round ratios constrained / free.

    scripts/bench-grammar.py [--model PATH] [--rounds 5] [--max-tokens 80]
"""
import argparse, http.client, json, os, statistics, subprocess, sys, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from benchlib import serve_address, start  # noqa: E402
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "colour": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 3},
        "height_m": {"type": "number"},
        "alive": {"type": "boolean"},
        "address": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}},
                    "required": ["city"], "additionalProperties": False},
    },
    "required": ["name", "age", "colour", "alive", "address"],
    "additionalProperties": False,
}
PROMPT = "Describe a fictional person: name, age, favourite colour, tags, height, alive, city."


def ask(addr, schema, max_tokens):
    host, port = addr.split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=300)
    body = {"model": "m", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": max_tokens,
            "temperature": 0}
    if schema:
        body["response_format"] = {"type": "json_schema",
                                   "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}
    c.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    d = json.loads(c.getresponse().read())
    c.close()
    if "edgecascade" in d:
        rate = d["edgecascade"]["timings"]["decode_tok_s"]
    else:
        rate = d["timings"]["predicted_per_second"]
    text = d["choices"][0]["message"]["content"]
    if schema:
        json.loads(text)  # constrained output must parse
    return rate, d["usage"]["completion_tokens"]


def main():
    ap = argparse.ArgumentParser()
    models = os.environ.get("EDGECASCADE_MODELS", os.path.join(ROOT, "models"))
    ap.add_argument("--model", default=os.path.join(models, "smollm2-135m-instruct-q4_1.gguf"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=80)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--llama-bin", default=None)
    a = ap.parse_args()
    bindir = a.llama_bin or subprocess.run([os.path.join(ROOT, "scripts/build-llama-tools.sh")], check=True,
                                           capture_output=True, text=True).stdout.strip().splitlines()[-1]
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    subprocess.run(["cargo", "build", "--release", "-q", "--bin", "edgecascade"], check=True, cwd=ROOT)
    servers = {
        "edgecascade": ([os.path.join(target, "release", "edgecascade"), "serve", "--model", a.model, "--port", "0",
                         "--threads", str(a.threads), "--n-ctx", "1024"],
                        serve_address),
        "llama-server": ([os.path.join(bindir, "llama-server"), "-m", a.model, "--port", "18098", "-t", str(a.threads),
                          "-np", "1", "-c", "1024", "--no-webui"],
                         lambda l: "127.0.0.1:18098" if "listening on http" in l else None),
    }
    rates = {n: {"free": [], "schema": [], "tokens": []} for n in servers}
    for r in range(a.rounds):
        for name, (cmd, ready) in servers.items():
            p, addr = start(cmd, ready)
            try:
                ask(addr, False, 8)  # warm-up
                free, _ = ask(addr, False, a.max_tokens)
                constrained, n = ask(addr, True, a.max_tokens)
            finally:
                p.terminate()
                p.wait()
            rates[name]["free"].append(free)
            rates[name]["schema"].append(constrained)
            rates[name]["tokens"].append(n)
            print(f"round {r + 1} {name:13}: free {free:6.1f} tok/s, schema {constrained:6.1f} tok/s ({n} tokens)",
                  file=sys.stderr, flush=True)
    out = {}
    for name, v in rates.items():
        ratio = statistics.median(s / f for s, f in zip(v["schema"], v["free"]))
        out[name] = {"free_tok_s": statistics.median(v["free"]), "schema_tok_s": statistics.median(v["schema"]),
                     "paired_ratio": ratio}
        print(f"{name:13}: free {out[name]['free_tok_s']:.1f} tok/s, schema {out[name]['schema_tok_s']:.1f} tok/s, "
              f"constrained/free {ratio:.3f} (median of per-round ratios)")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
