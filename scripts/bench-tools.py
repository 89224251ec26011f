#!/usr/bin/env python3
"""Tool-call benchmark on a public set: the Berkeley Function Calling Leaderboard's `simple`
(Python) items, from the `bfcl-eval` wheel on PyPI (question, one function with a JSON schema,
and the accepted values of each argument). Each model answers through `edgecascade serve`
(loaded once) with the item's function as `tools`, under `tool_choice` "required" (decoding
constrained to a valid call) and "auto" (free decoding, calls read back), greedy.

    scripts/bench-tools.py --model models/smollm2-135m-instruct-q4_1.gguf [--model ...] --items 100

Reports per model and choice: the share of answers that are a valid call (parses, names the
tool, required arguments present: what `format_error` checks), the share whose name and every
argument match the accepted values (BFCL's AST check, simplified: numbers compared as numbers,
strings case-insensitively after trimming, an argument may be left out where "" is accepted),
the mean completion tokens and decode rate.
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import urllib.request
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WHEEL = "bfcl-eval==2026.3.23"
SET = "BFCL_v4_simple_python.json"


def load_items(n):
    cache = os.path.join(os.environ.get("EDGECASCADE_CACHE", os.path.expanduser("~/.cache/edgecascade")), "bfcl")
    os.makedirs(cache, exist_ok=True)
    if not glob.glob(os.path.join(cache, "*.whl")):
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        "-q", "-d", cache, WHEEL], check=True)
    z = zipfile.ZipFile(glob.glob(os.path.join(cache, "*.whl"))[0])
    questions = [json.loads(l) for l in z.read(f"bfcl_eval/data/{SET}").decode().splitlines()]
    answers = {a["id"]: a for a in
               (json.loads(l) for l in z.read(f"bfcl_eval/data/possible_answer/{SET}").decode().splitlines())}
    return [(q, answers[q["id"]]) for q in questions[:n]]


def schema(p):
    """BFCL's Python-flavoured types to JSON Schema."""
    if isinstance(p, dict):
        out = {}
        for k, v in p.items():
            if k == "type":
                t = {"dict": "object", "float": "number", "tuple": "array", "list": "array",
                     "any": None, "bool": "boolean", "int": "integer", "str": "string"}.get(v, v)
                if t:
                    out["type"] = t
            elif k in ("properties",):
                out[k] = {name: schema(s) for name, s in v.items()}
            elif k in ("items", "additionalProperties"):
                out[k] = schema(v)
            elif k in ("required", "enum", "description", "default", "maximum", "minimum"):
                out[k] = v
        return out
    return p


def same(got, want):
    if isinstance(want, str) and isinstance(got, str):
        return got.strip().lower() == want.strip().lower()
    if isinstance(want, bool) or isinstance(got, bool):
        return got is want
    if isinstance(want, (int, float)) and isinstance(got, (int, float)):
        return abs(float(got) - float(want)) < 1e-6
    if isinstance(want, list) and isinstance(got, list):
        return len(got) == len(want) and all(same(g, w) for g, w in zip(got, want))
    if isinstance(want, dict) and isinstance(got, dict):
        return set(got) <= set(want) and all(any(same(got[k], w) for w in want[k]) for k in got)
    return got == want


def correct(call, truth):
    (expected,) = truth["ground_truth"]
    (name, args), = expected.items()
    if call["name"] != name:
        return False
    try:
        got = json.loads(call["arguments"])
    except ValueError:
        return False
    for k, accepted in args.items():
        if k not in got:
            if "" not in accepted:
                return False
            continue
        if not any(same(got[k], a) for a in accepted if a != ""):
            return False
    return set(got) <= set(args)


def post(port, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions",
                                 data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        return {"error": json.load(e)}


def run(model, items, binary):
    server = subprocess.Popen([binary, "serve", "--model", model, "--port", "0", "--n-ctx", "2048"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = int(server.stdout.readline().strip().rsplit(":", 1)[1])
        results = {}
        for choice in ("required", "auto"):
            valid = right = tokens = errors = 0
            rates, why = [], {}
            for q, truth in items:
                tools = [{"type": "function", "function": {
                    "name": f["name"], "description": f.get("description", ""),
                    "parameters": schema(f["parameters"])}} for f in q["function"]]
                r = post(port, {"messages": q["question"][0], "tools": tools, "tool_choice": choice,
                                "max_tokens": 160, "temperature": 0})
                if "error" in r:
                    errors += 1
                    continue
                msg = r["choices"][0]["message"]
                ext = r["edgecascade"]
                calls = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
                         for c in (msg.get("tool_calls") or [])]
                ok = bool(calls) and ext["format_error"] is None
                if not ok:
                    reason = (ext["format_error"] or "no call")[:60]
                    why[reason] = why.get(reason, 0) + 1
                valid += ok
                right += ok and len(calls) == 1 and correct(calls[0], truth)
                tokens += r["usage"]["completion_tokens"]
                rates.append(ext["timings"]["decode_tok_s"])
            n = len(items)
            rates.sort()
            results[choice] = {"items": n, "valid_call": round(valid / n, 3), "correct_call": round(right / n, 3),
                               "refused_400": errors, "mean_completion_tokens": round(tokens / max(1, n - errors), 1),
                               "median_decode_tok_s": rates[len(rates) // 2] if rates else None,
                               "invalid_because": dict(sorted(why.items(), key=lambda kv: -kv[1])[:5])}
            print(os.path.basename(model), choice, json.dumps(results[choice]), flush=True)
        return results
    finally:
        server.terminate()
        server.wait(timeout=30)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--items", type=int, default=100)
    ap.add_argument("--binary", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "edgecascade"))
    args = ap.parse_args()
    items = load_items(args.items)
    out = {os.path.basename(m): run(m, items, args.binary) for m in args.model}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
