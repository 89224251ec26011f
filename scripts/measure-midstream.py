#!/usr/bin/env python3
"""What mid-stream escalation saves: the same prompts through `edgecascade ask`, once with the
mid-stream floor on (post-hoc escalation off, so only mid-stream decisions count) and once
purely local, then the local tokens and decode time not spent on the escalated ones.
The remote tier is `edgecascade serve` with Qwen2.5-Coder-0.5B on 127.0.0.1.

    scripts/measure-midstream.py [--floor 0.05] [--max-tokens 64]
"""
import argparse, json, os, subprocess, sys, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = [
    "What is the capital of France?", "Who wrote Romeo and Juliet?", "What is 17 times 23?",
    "Name the largest planet in the solar system.", "What is the boiling point of water in Fahrenheit?",
    "Who was the 23rd president of the United States?", "What is the capital of Burkina Faso?",
    "Explain the Riemann hypothesis in two sentences.", "What year did the Treaty of Westphalia end?",
    "What is the chemical formula of table salt?", "Translate 'good morning' into Finnish.",
    "What is the square root of 1764?", "Who discovered penicillin?", "What is the speed of light in km/s?",
    "Name three noble gases.", "What does the acronym RSVP stand for?", "Who painted the Mona Lisa?",
    "What is the derivative of x^3 * sin(x)?", "Summarise the plot of Moby Dick in one sentence.",
    "What is the population of Iceland?", "Which element has atomic number 74?",
    "Write a haiku about autumn.", "What is the GDP of Japan in 2020 in US dollars?", "How many bones are in the human body?",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--floor", type=float, default=0.05)
    ap.add_argument("--max-tokens", type=int, default=64)
    a = ap.parse_args()
    models = os.environ.get("EDGECASCADE_MODELS", os.path.join(ROOT, "models"))
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    subprocess.run(["cargo", "build", "--release", "-q", "--bin", "edgecascade"], check=True, cwd=ROOT)
    ec = os.path.join(target, "release", "edgecascade")
    server = subprocess.Popen([ec, "serve", "--model", os.path.join(models, "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"), "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    url = server.stdout.readline().strip().split("listening on ")[1]
    work = tempfile.mkdtemp()
    local = os.path.join(models, "smollm2-135m-instruct-q4_1.gguf")

    def cfg(name, floor, remote):
        path = os.path.join(work, name + ".toml")
        with open(path, "w") as f:
            f.write(f'[local]\nmodel = "{local}"\n')
            if remote:
                f.write(f'[remote]\nbase_url = "{url}"\nmodel = "qwen"\n')
            f.write(f"[cascade]\nthreshold = -100.0\nmid_stream_floor = {floor}\nmid_stream_min_tokens = 8\n")
            f.write(f'[ledger]\npath = "{os.path.join(work, name + ".jsonl")}"\n')
        return path

    floor_cfg, local_cfg = cfg("floor", a.floor, True), cfg("local", 0.0, False)
    ask = lambda c, p: json.loads(subprocess.run([ec, "ask", "--config", c, "--json", "--max-tokens", str(a.max_tokens), p],
                                                 check=True, capture_output=True, text=True).stdout)
    rows = []
    try:
        for p in PROMPTS:
            f, l = ask(floor_cfg, p), ask(local_cfg, p)
            rows.append((p, f, l))
            print(f"{f['route']:>10} {f['reason']:>26}  draft {f['usage']['by_tier']['local']['completion_tokens']:>3} vs full "
                  f"{l['usage']['completion_tokens']:>3} tokens  {p[:50]}", file=sys.stderr)
    finally:
        server.terminate()
    mid = [(f, l) for _, f, l in rows if f["reason"] == "mid_stream_low_confidence"]
    saved = sum(l["usage"]["completion_tokens"] - f["usage"]["by_tier"]["local"]["completion_tokens"] for f, l in mid)
    full = sum(l["usage"]["completion_tokens"] for f, l in mid)
    # Decode time not spent: saved tokens at each full local answer's own decode rate.
    saved_s = sum((l["usage"]["completion_tokens"] - f["usage"]["by_tier"]["local"]["completion_tokens"]) / max(l["timings"]["decode_tok_s"], 1e-9)
                  for f, l in mid)
    out = {"prompts": len(rows), "mid_stream_escalations": len(mid), "floor": a.floor,
           "local_tokens_full": full, "local_tokens_saved": saved,
           "saved_share": saved / full if full else 0.0, "decode_seconds_saved": saved_s}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
