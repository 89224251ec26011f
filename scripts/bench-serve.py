#!/usr/bin/env python3
"""`edgecascade serve` against llama.cpp's `llama-server`: same model, threads, prompts.

For each concurrency (1, 2, 4 and 8 clients by default) and each server in turn (alternated, so
both see the same machine), streams greedy completions and measures
client-side TTFT (request sent to first content chunk) and requests/s. For our server it also
takes the engine's own TTFT from the `edgecascade` extension of the same response, so the
difference is exactly what the HTTP layer adds.

    scripts/bench-serve.py [--model PATH] [--clients 1,2,4,8] [--per-client 3] [--max-tokens 64]
                           [--rounds 2]

Each server gets `-np`/`--parallel` equal to the clients, 2 threads, 1024 tokens of context per
sequence. Figures are the mean over rounds; TTFT is the median over a round's requests.
"""
import argparse, http.client, json, os, statistics, subprocess, sys, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from benchlib import serve_address, start  # noqa: E402
PROMPTS = [f"In two sentences, tell me something interesting about the number {i}." for i in range(64)]


def one(addr, prompt, max_tokens):
    host, port = addr.split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=300)
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                       "temperature": 0, "stream": True, "stream_options": {"include_usage": True}})
    t0 = time.perf_counter()
    c.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    ttft, engine_ttft, tokens = None, None, 0
    for raw in r:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        d = json.loads(line[6:])
        ch = d.get("choices") or []
        if ch and ch[0].get("delta", {}).get("content"):
            if ttft is None:
                ttft = time.perf_counter() - t0
        if "edgecascade" in d:
            engine_ttft = d["edgecascade"]["timings"]["ttft_ms"] / 1e3
        if d.get("usage"):
            tokens = d["usage"]["completion_tokens"]
    c.close()
    return ttft, engine_ttft, tokens


def run(addr, clients, n, max_tokens):
    results, lock, idx = [], threading.Lock(), [0]

    def worker():
        while True:
            with lock:
                i = idx[0]
                idx[0] += 1
            if i >= n:
                return
            res = one(addr, PROMPTS[i % len(PROMPTS)], max_tokens)
            with lock:
                results.append(res)

    one(addr, PROMPTS[0], 4)  # warm-up
    t0 = time.perf_counter()
    ts = [threading.Thread(target=worker) for _ in range(clients)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    wall = time.perf_counter() - t0
    ttfts = [r[0] for r in results if r[0] is not None]
    over = [(r[0] - r[1]) * 1e3 for r in results if r[0] is not None and r[1] is not None]
    return {"req_s": n / wall, "ttft_ms": statistics.median(ttfts) * 1e3,
            "tok_s": sum(r[2] for r in results) / wall,
            "http_overhead_ms": statistics.median(over) if over else None}


def main():
    ap = argparse.ArgumentParser()
    models = os.environ.get("EDGECASCADE_MODELS", os.path.join(ROOT, "models"))
    ap.add_argument("--model", default=os.path.join(models, "smollm2-135m-instruct-q4_1.gguf"))
    ap.add_argument("--clients", default="1,2,4,8")
    ap.add_argument("--per-client", type=int, default=3, help="requests per client")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--llama-bin", default=None)
    ap.add_argument("--our-parallel", type=int, default=None, help="contexts for edgecascade (default: = clients)")
    ap.add_argument("--our-threads", type=int, default=None, help="threads per context (default: cores / parallel)")
    ap.add_argument("--only-ours", action="store_true")
    a = ap.parse_args()
    bindir = a.llama_bin or subprocess.run([os.path.join(ROOT, "scripts/build-llama-tools.sh")], check=True,
                                           capture_output=True, text=True).stdout.strip().splitlines()[-1]
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    subprocess.run(["cargo", "build", "--release", "-q", "--bin", "edgecascade"], check=True, cwd=ROOT)
    ours = os.path.join(target, "release", "edgecascade")
    out = {}
    for clients in [int(c) for c in a.clients.split(",")]:
        servers = {
            "edgecascade": ([ours, "serve", "--model", a.model, "--port", "0",
                             "--parallel", str(a.our_parallel or clients), "--queue", "64", "--n-ctx", "1024"]
                            + (["--threads", str(a.our_threads)] if a.our_threads else []),
                            serve_address),
            "llama-server": ([os.path.join(bindir, "llama-server"), "-m", a.model, "--port", "18099", "-t", str(a.threads),
                              "-np", str(clients), "-c", str(1024 * clients), "--no-webui"],
                             lambda l: "127.0.0.1:18099" if "listening on http" in l else None),
        }
        rounds = {}
        for rnd in range(a.rounds):
            for name, (cmd, ready) in servers.items():
                if a.only_ours and name != "edgecascade":
                    continue
                p, addr = start(cmd, ready)
                try:
                    rounds.setdefault(name, []).append(run(addr, clients, clients * a.per_client, a.max_tokens))
                finally:
                    p.terminate()
                    p.wait()
        for name, rs in rounds.items():
            r = {k: (statistics.mean(x[k] for x in rs) if rs[0][k] is not None else None) for k in rs[0]}
            out[f"{name}@{clients}"] = r
            extra = f", HTTP layer adds {r['http_overhead_ms']:.2f} ms to TTFT" if r["http_overhead_ms"] is not None else ""
            print(f"{name:13} {clients} client(s): {r['req_s']:.2f} req/s, {r['tok_s']:.1f} tok/s, "
                  f"TTFT {r['ttft_ms']:.1f} ms{extra}", flush=True)
        if "edgecascade" in rounds and "llama-server" in rounds:
            o, l = out[f"edgecascade@{clients}"], out[f"llama-server@{clients}"]
            print(f"  ratio at {clients}: throughput {o['tok_s'] / l['tok_s']:.2f}x, "
                  f"TTFT {o['ttft_ms'] / l['ttft_ms']:.2f}x", flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
