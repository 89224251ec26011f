#!/usr/bin/env python3
"""Decode (or prefill) speed of `edgecascade bench` against several llama-bench builds, alternated
in one run.

Used to tell our own overhead from the cost of how llama.cpp is built: the same llama.cpp
sources built static (scripts/build-llama-tools.sh) and as shared libraries, as ours is (the
CPU variants are loaded at run time, which needs shared libraries). Each round runs every tool
once, rotating the order; the report gives per-tool medians and the paired ratios.

    scripts/bench-llama-builds.py --rounds 9 static=~/.cache/edgecascade/llama-tools/bin/llama-bench \\
        shared=/tmp/lb-shared/bin/llama-bench
    scripts/bench-llama-builds.py fixed=ours:config=fixed.toml avx2=ours:variant=haswell \\
        static=~/.cache/edgecascade/llama-tools/bin/llama-bench

--background CMD runs a competing load (a shell command, in its own process group) for the whole
run, started before the first round and killed after the last, for example another process's
spinning ggml threadpool:

    scripts/bench-llama-builds.py --rounds 8 fixed=ours:config=fixed.toml \\
        --background "while :; do llama-bench -m M -t 2 -p 0 -n 512 -r 1 >/dev/null; done"

--metric prefill compares prompt evaluation instead (llama-bench -p N -n 0 against our bench's
prefill_tok_s), for example our prefill under a busy core before and after a change:

    scripts/bench-llama-builds.py --metric prefill before=ours:bin=/tmp/before/edgecascade \\
        --background "while :; do :; done"

Build a shared llama-bench from the cached sources with the flags of build-llama-tools.sh plus
-DBUILD_SHARED_LIBS=ON (see README, "CPU builds").
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import time

from benchlib import bootstrap_median


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("builds", nargs="+",
                    help="NAME=PATH of a llama-bench binary, or NAME=ours:OPTS for our bench, "
                         "OPTS a comma-separated list of variant=V (EDGECASCADE_CPU_VARIANT), "
                         "config=FILE (bench --config) and bin=PATH (another edgecascade binary)")
    ap.add_argument("--model", default=os.path.join(
        os.environ.get("EDGECASCADE_MODELS", os.path.expanduser("~/.cache/edgecascade/models")),
        "smollm2-135m-instruct-q4_1.gguf"))
    ap.add_argument("--ours", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/edgecascade/target")),
        "release", "edgecascade"))
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--background", help="a shell command to run as a competing load throughout")
    ap.add_argument("--metric", choices=["decode", "prefill"], default="decode")
    a = ap.parse_args()

    def llama_bench(path):
        if a.metric == "prefill":
            sizes = ["-p", str(a.prompt_tokens), "-n", "0"]
        else:
            # Decode at the depth where ours decodes (right after the prompt).
            sizes = ["-p", "0", "-n", str(a.gen_tokens), "-d", str(a.prompt_tokens)]
        out = subprocess.run([os.path.expanduser(path), "-m", a.model, "-t", str(a.threads),
                              *sizes, "-r", str(a.reps), "-o", "json"],
                             capture_output=True, text=True, check=True).stdout
        return statistics.median(json.loads(out)[0]["samples_ts"])

    def ours(opts=""):
        o = dict(kv.split("=", 1) for kv in opts.split(",") if kv)
        unknown = set(o) - {"variant", "config", "bin"}
        if unknown:
            raise SystemExit(f"unknown ours: options {sorted(unknown)}")
        env = dict(os.environ)
        if "variant" in o:
            env["EDGECASCADE_CPU_VARIANT"] = o["variant"]
        cmd = [os.path.expanduser(o.get("bin", a.ours)), "bench"]
        if "config" in o:
            cmd += ["--config", os.path.expanduser(o["config"])]
        out = subprocess.run(cmd + ["--model", a.model, "--threads", str(a.threads),
                              "--prompt-tokens", str(a.prompt_tokens), "--gen-tokens",
                              str(a.gen_tokens), "--reps", str(a.reps), "--json"],
                             capture_output=True, text=True, check=True, env=env).stdout
        return json.loads(out)[f"{a.metric}_tok_s"]

    tools = {"ours": ours}
    for b in a.builds:
        name, path = b.split("=", 1)
        if path.startswith("ours:"):
            tools[name] = lambda v=path[5:]: ours(v)
        else:
            tools[name] = lambda p=path: llama_bench(p)
    names = list(tools)
    rows = {k: [] for k in names}
    load = None
    if a.background:
        load = subprocess.Popen(a.background, shell=True, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(2)  # let the load reach its steady state (a model load, threads spinning)
        if load.poll() is not None:
            raise SystemExit(f"the background load exited at once ({load.returncode})")
        print(f"background load running: {a.background}", flush=True)
    try:
        for r in range(a.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for k in order:
                rows[k].append(tools[k]())
            print(f"round {r + 1}: " + ", ".join(f"{k} {rows[k][-1]:.1f}" for k in names),
                  flush=True)
    finally:
        if load is not None:
            os.killpg(load.pid, signal.SIGKILL)
            load.wait()
    print(f"{a.metric} tok/s, median: " + ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in rows.items()))
    for i, x in enumerate(names):
        for y in names[i + 1:]:
            ratios = [p / q for p, q in zip(rows[x], rows[y])]
            lo, hi = bootstrap_median(ratios)
            print(f"{x}/{y}: paired median {statistics.median(ratios):.3f} "
                  f"[{lo:.3f}, {hi:.3f}] (bootstrap 95%), {x} faster in "
                  f"{sum(r > 1 for r in ratios)} of {len(ratios)}")


if __name__ == "__main__":
    main()
