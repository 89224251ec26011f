#!/usr/bin/env python3
"""`edgecascade serve` from two or more builds, alternated in one run: the same config, model and
client load against each, so a change to the server is measured side by side.

    scripts/bench-serve-builds.py --config sep.toml --rounds 30 --clients 2 --requests 12 \\
        before=/tmp/before/edgecascade after=target/release/edgecascade

Each round starts each build's `serve` in turn (the order alternates), streams `--requests`
greedy completions from `--clients` concurrent clients with `scripts/bench-serve.py`'s client,
and stops it. The report gives each build's medians and, for the first build against each
other, the paired median ratio of throughput and TTFT with a bootstrap 95% interval.
"""
import argparse
import importlib.util
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from benchlib import bootstrap_median, serve_address, start  # noqa: E402


def main():
    spec = importlib.util.spec_from_file_location("bench_serve", os.path.join(ROOT, "scripts", "bench-serve.py"))
    client = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(client)
    models = os.environ.get("EDGECASCADE_MODELS", os.path.expanduser("~/.cache/edgecascade/models"))
    ap = argparse.ArgumentParser()
    ap.add_argument("bins", nargs="+", help="NAME=PATH of an edgecascade binary")
    ap.add_argument("--model", default=os.path.join(models, "smollm2-135m-instruct-q4_1.gguf"))
    ap.add_argument("--config", help="a config file for every build's serve")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--requests", type=int, default=12, help="requests per round, over all clients")
    ap.add_argument("--max-tokens", type=int, default=64)
    a = ap.parse_args()
    bins = dict(b.split("=", 1) for b in a.bins)
    names = list(bins)
    res = {k: [] for k in names}
    for r in range(a.rounds):
        for k in names[r % len(names):] + names[:r % len(names)]:
            cmd = [os.path.expanduser(bins[k]), "serve", "--model", a.model, "--port", "0", "--queue", "64"]
            if a.config:
                cmd += ["--config", a.config]
            p, addr = start(cmd, serve_address)
            try:
                res[k].append(client.run(addr, a.clients, a.requests, a.max_tokens))
            finally:
                p.terminate()
                p.wait()
        print(f"round {r + 1}: " + ", ".join(
            f"{k} {res[k][-1]['tok_s']:.1f} tok/s, TTFT {res[k][-1]['ttft_ms']:.0f} ms" for k in names), flush=True)
    for k in names:
        print(f"{k}: median {statistics.median(x['tok_s'] for x in res[k]):.1f} tok/s, "
              f"TTFT {statistics.median(x['ttft_ms'] for x in res[k]):.1f} ms")
    base = names[0]
    for k in names[1:]:
        for metric in ("tok_s", "ttft_ms"):
            ratios = [x[metric] / y[metric] for x, y in zip(res[k], res[base])]
            lo, hi = bootstrap_median(ratios)
            print(f"{k}/{base} {metric}: paired median {statistics.median(ratios):.3f} "
                  f"[{lo:.3f}, {hi:.3f}] (bootstrap 95%), higher in {sum(x > 1 for x in ratios)} of {len(ratios)}")


if __name__ == "__main__":
    main()
