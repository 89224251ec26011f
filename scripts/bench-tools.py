#!/usr/bin/env python3
"""Tool-call benchmark on a public set: the Berkeley Function Calling Leaderboard's `simple`
(Python) items, from the `bfcl-eval` wheel on PyPI (question, one function with a JSON schema,
and the accepted values of each argument). Each model answers through `edgecascade serve`
(loaded once) with the item's function as `tools`, under `tool_choice` "required" (decoding
constrained to a valid call) and "auto" (free decoding, calls read back), greedy.

    scripts/bench-tools.py --model models/smollm2-135m-instruct-q4_1.gguf [--model ...] --items 100
        [--remote models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf] [--choices required,auto]

Reports per model and choice: the share of answers that are a valid call (parses, names the
tool, required arguments present: what `format_error` checks), the share whose name and every
argument match the accepted values (BFCL's AST check, simplified: numbers compared as numbers,
strings case-insensitively after trimming, an argument may be left out where "" is accepted),
the mean completion tokens and decode rate.

With --remote, the remote model answers the same items the same way, and for each local model
the cascade's curve is computed from the per-item results, as `eval` does for text: items are
escalated least confident first (an invalid local call always first), by the local answer's
mean log-probability or its lowest token probability. These are read from the logits before
the grammar's mask, so under `required` they also measure how hard the grammar had to force
the call. Reported per signal: APGR (the area under the normalised gain curve, 0.5 for random
escalation), the escalation share that reaches 95% of the remote tier's accuracy (CPT(95%)),
and the oracle's share (items the local model got wrong and the remote one right).
"""
import argparse
import json
import os
import subprocess
import sys
import urllib.request

from fetch_structured_data import bfcl_items, bfcl_schema as schema

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_items(n):
    return bfcl_items(n)


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


def run(model, items, binary, choices):
    server = subprocess.Popen([binary, "serve", "--model", model, "--port", "0", "--n-ctx", "2048"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = int(server.stdout.readline().strip().rsplit(":", 1)[1])
        results = {}
        for choice in choices:
            valid = right = tokens = errors = 0
            rates, why, per_item = [], {}, []
            for q, truth in items:
                tools = [{"type": "function", "function": {
                    "name": f["name"], "description": f.get("description", ""),
                    "parameters": schema(f["parameters"])}} for f in q["function"]]
                r = post(port, {"messages": q["question"][0], "tools": tools, "tool_choice": choice,
                                "max_tokens": 160, "temperature": 0})
                if "error" in r:
                    errors += 1
                    per_item.append({"valid": False, "correct": False, "mean_logprob": None, "min_prob": None})
                    continue
                msg = r["choices"][0]["message"]
                ext = r["edgecascade"]
                calls = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
                         for c in (msg.get("tool_calls") or [])]
                ok = bool(calls) and ext["format_error"] is None
                if not ok:
                    reason = (ext["format_error"] or "no call")[:60]
                    why[reason] = why.get(reason, 0) + 1
                good = ok and len(calls) == 1 and correct(calls[0], truth)
                valid += ok
                right += good
                conf = ext.get("confidence") or {}
                per_item.append({"valid": ok, "correct": bool(good), "mean_logprob": conf.get("mean_logprob"),
                                 "min_prob": conf.get("min_prob")})
                tokens += r["usage"]["completion_tokens"]
                rates.append(ext["timings"]["decode_tok_s"])
            n = len(items)
            rates.sort()
            results[choice] = {"items": n, "valid_call": round(valid / n, 3), "correct_call": round(right / n, 3),
                               "refused_400": errors, "mean_completion_tokens": round(tokens / max(1, n - errors), 1),
                               "median_decode_tok_s": rates[len(rates) // 2] if rates else None,
                               "invalid_because": dict(sorted(why.items(), key=lambda kv: -kv[1])[:5])}
            print(os.path.basename(model), choice, json.dumps(results[choice]), flush=True)
            results[choice]["per_item"] = per_item
        return results
    finally:
        server.terminate()
        server.wait(timeout=30)


def curve(local, remote, signal):
    """The cascade's curve: escalate the k least confident local answers (invalid ones first)."""
    n = len(local)
    key = lambda i: (local[i]["valid"], local[i][signal] if local[i][signal] is not None else float("-inf"))
    order = sorted(range(n), key=key)
    small = sum(x["correct"] for x in local) / n
    large = sum(x["correct"] for x in remote) / n
    escalated, accs = set(), []
    for k in range(n + 1):
        if k:
            escalated.add(order[k - 1])
        accs.append(sum((remote if i in escalated else local)[i]["correct"] for i in range(n)) / n)
    gain = large - small
    apgr = (sum((a - small) / gain for a in accs) / len(accs)) if gain > 0 else None
    target = small + 0.95 * gain if gain > 0 else None
    cpt95 = next((k / n for k, a in enumerate(accs) if a >= target), None) if target is not None else None
    oracle = sum(1 for l, r in zip(local, remote) if not l["correct"] and r["correct"]) / n
    return {"signal": signal, "small": round(small, 3), "large": round(large, 3), "best": round(max(accs), 3),
            "apgr": None if apgr is None else round(apgr, 3), "cpt95": None if cpt95 is None else round(cpt95, 3),
            "oracle_escalation": round(oracle, 3),
            "invalid_share": round(sum(1 for x in local if not x["valid"]) / n, 3)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--remote", default=None, help="the remote tier's model, for the cascade's curve")
    ap.add_argument("--choices", default="required,auto")
    ap.add_argument("--items", type=int, default=100)
    ap.add_argument("--binary", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "edgecascade"))
    args = ap.parse_args()
    items = load_items(args.items)
    choices = args.choices.split(",")
    out = {os.path.basename(m): run(m, items, args.binary, choices) for m in args.model}
    if args.remote:
        remote = run(args.remote, items, args.binary, choices)
        out["remote " + os.path.basename(args.remote)] = remote
        for m in args.model:
            for choice in choices:
                for signal in ("mean_logprob", "min_prob"):
                    c = curve(out[os.path.basename(m)][choice]["per_item"], remote[choice]["per_item"], signal)
                    out[os.path.basename(m)][choice].setdefault("cascade", []).append(c)
                    print("cascade", os.path.basename(m), "->", os.path.basename(args.remote), choice,
                          json.dumps(c), flush=True)
    for per_model in out.values():
        for r in per_model.values():
            r.pop("per_item", None)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
