#!/usr/bin/env python3
"""Load test: N concurrent keep-alive connections against `edgecascade serve` for a while, from
this (second) process on loopback. Each connection sends chat requests back to back, a mix of
streamed and whole answers, some with bad bodies. Reports every status seen, dropped
connections, and the server's resident memory over time.

    scripts/load-serve.py --model models/smollm2-135m-instruct-q4_1.gguf --connections 32 --seconds 180

Passes (exit 0) when every answer is a 200, an expected 4xx for the bad bodies, or a 503, no
connection is dropped mid-answer, and the server's RSS at the end is within 10% of its RSS after
the first 10 seconds.
"""
import argparse
import http.client
import json
import os
import random
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def client(port, until, stats, lock, seed):
    rng = random.Random(seed)
    conn = None
    while time.time() < until:
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        kind = rng.random()
        stream = kind < 0.5
        if kind > 0.9:
            body, want = b'{"messages": [{"role": "user", "content": 5}]}', 400
        else:
            prompt = rng.choice(["Name a colour.", "What is 2+2?", "Say hi.", "Name a fruit."])
            body = json.dumps({"messages": [{"role": "user", "content": prompt}],
                               "max_tokens": rng.randint(4, 24), "temperature": 0,
                               "stream": stream}).encode()
            want = 200
        try:
            conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            status = resp.status
            if status == 200 and stream and not data.rstrip().endswith(b"data: [DONE]"):
                status = "stream-without-DONE"
            elif status not in (want, 503):
                status = f"unexpected-{status}"
            if resp.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as e:
            status = f"dropped:{type(e).__name__}"
            conn.close()
            conn = None
        with lock:
            stats[status] = stats.get(status, 0) + 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=180)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--queue", type=int, default=8)
    ap.add_argument("--binary", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "edgecascade"))
    args = ap.parse_args()
    server = subprocess.Popen(
        [args.binary, "serve", "--model", args.model, "--port", "0", "--n-ctx", "1024",
         "--parallel", str(args.parallel), "--queue", str(args.queue)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = server.stdout.readline()
        port = int(line.strip().rsplit(":", 1)[1])
        stats, lock = {}, threading.Lock()
        until = time.time() + args.seconds
        threads = [threading.Thread(target=client, args=(port, until, stats, lock, i), daemon=True)
                   for i in range(args.connections)]
        for t in threads:
            t.start()
        samples = []
        t0 = time.time()
        while any(t.is_alive() for t in threads):
            time.sleep(1)
            samples.append((round(time.time() - t0), rss_kb(server.pid)))
        baseline = next((kb for s, kb in samples if s >= 10), samples[0][1])
        end = samples[-1][1]
        peak = max(kb for _, kb in samples)
        bad = {k: v for k, v in stats.items() if k not in (200, 400, 503)}
        print(json.dumps({"connections": args.connections, "seconds": args.seconds,
                          "statuses": {str(k): v for k, v in sorted(stats.items(), key=str)},
                          "rss_kb": {"after_10s": baseline, "peak": peak, "end": end},
                          "rss_end_vs_10s": round(end / baseline, 3)}, indent=1))
        ok = not bad and end <= baseline * 1.10 and stats.get(200, 0) > 0
        print("load test:", "ok" if ok else f"FAILED {bad}")
        return 0 if ok else 1
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
