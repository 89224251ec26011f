#!/usr/bin/env python3
"""Structured items for `edgecascade eval` (issue 12): tool calls and extraction into JSON.

- data/eval/bfcl_simple.jsonl: the Berkeley Function Calling Leaderboard's `simple` Python
  items (400), from the `bfcl-eval` wheel on PyPI (wheel only: no package code runs). Each
  item offers one function (BFCL's Python-flavoured types turned into JSON Schema) and expects
  a call: {"name", "arguments": {arg: [accepted values]}}, "" marking an optional argument.
- data/eval/bfcl_required.jsonl: the same items under `tool_choice: required` (task
  `bfcl_required`), the constrained call an app makes with a small model.
- data/eval/json_extract.jsonl: extraction into JSON from text, built from three of the sets
  `scripts/fetch_eval_data.py` writes (run it first): SQuAD (the passage and question ->
  {"answer": string}, the first gold answer), BoolQ (passage and question -> {"answer":
  boolean}) and basic arithmetic ({"result": integer}), each under a strict JSON schema, with
  the source set as the item's `task`.

    scripts/fetch_structured_data.py      # -> data/eval/{bfcl_simple,bfcl_required,json_extract}.jsonl
"""
import glob
import json
import os
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(os.environ.get("EDGECASCADE_DATA", os.path.join(ROOT, "data")), "eval")
CACHE = os.path.join(os.environ.get("EDGECASCADE_CACHE", os.path.expanduser("~/.cache/edgecascade")), "bfcl")
BFCL_WHEEL = "bfcl-eval==2026.3.23"
BFCL_SET = "BFCL_v4_simple_python.json"


def bfcl_items(n=None):
    """(question, answer) pairs of BFCL's simple Python set, the wheel fetched through pip."""
    os.makedirs(CACHE, exist_ok=True)
    if not glob.glob(os.path.join(CACHE, "*.whl")):
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        "-q", "-d", CACHE, BFCL_WHEEL], check=True)
    z = zipfile.ZipFile(glob.glob(os.path.join(CACHE, "*.whl"))[0])
    questions = [json.loads(l) for l in z.read(f"bfcl_eval/data/{BFCL_SET}").decode().splitlines()]
    answers = {a["id"]: a for a in
               (json.loads(l) for l in z.read(f"bfcl_eval/data/possible_answer/{BFCL_SET}").decode().splitlines())}
    pairs = [(q, answers[q["id"]]) for q in questions]
    return pairs if n is None else pairs[:n]


def bfcl_schema(p):
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
                out[k] = {name: bfcl_schema(s) for name, s in v.items()}
            elif k in ("items", "additionalProperties"):
                out[k] = bfcl_schema(v)
            elif k in ("required", "enum", "description", "default", "maximum", "minimum"):
                out[k] = v
        return out
    return p


def bfcl_jsonl():
    out = []
    for q, truth in bfcl_items():
        (f,) = q["function"]
        ((name, args),) = truth["ground_truth"][0].items()
        out.append({
            "id": q["id"],
            "messages": q["question"][0],
            "tools": [{"name": f["name"], "description": f.get("description", ""),
                       "parameters": json.dumps(bfcl_schema(f["parameters"]))}],
            "tool_choice": {"type": "auto"},
            "expected": {"name": name, "arguments": args},
            "answer": name,
        })
    return out


def schema(name, field, typ):
    return {"type": "json_schema", "name": name, "strict": True, "schema": json.dumps({
        "type": "object", "properties": {field: {"type": typ}}, "required": [field],
        "additionalProperties": False})}


def json_extract():
    def read(name):
        path = os.path.join(OUT, f"{name}.jsonl")
        if not os.path.exists(path):
            sys.exit(f"{path} is missing: run scripts/fetch_eval_data.py first")
        return [json.loads(l) for l in open(path)]
    out = []
    for it in read("squad")[:400]:
        out.append({"id": f"json-{it['id']}", "task": "squad_json", "answer": it["answer"],
                    "question": f"{it['question']}\n\nReply with JSON: the answer, copied from the passage.",
                    "response_format": schema("answer", "answer", "string"),
                    "expected": {"answer": it["answer"]}})
    for it in read("boolq")[:400]:
        out.append({"id": f"json-{it['id']}", "task": "boolq_json", "answer": it["answer"],
                    "question": f"{it['question']}\n\nReply with JSON: true or false.",
                    "response_format": schema("answer", "answer", "boolean"),
                    "expected": {"answer": it["answer"].strip().lower() == "yes"}})
    for it in read("arithmetic")[:400]:
        out.append({"id": f"json-{it['id']}", "task": "arithmetic_json", "answer": it["answer"],
                    "question": f"{it['question']}\n\nReply with JSON: the result.",
                    "response_format": schema("result", "result", "integer"),
                    "expected": {"result": int(it["answer"])}})
    return out


def required(items):
    """The same calls under `tool_choice: required`: decoding is constrained to a valid call,
    the way an app uses a model too small to decide for itself (SmolLM2 never calls under
    `auto`). Its own ids and task, so both variants can be evaluated together."""
    return [dict(it, id=f"{it['id']}-required", task="bfcl_required", tool_choice={"type": "required"})
            for it in items]


def main():
    os.makedirs(OUT, exist_ok=True)
    bfcl = bfcl_jsonl()
    for name, items in [("bfcl_simple", bfcl), ("bfcl_required", required(bfcl)),
                        ("json_extract", json_extract())]:
        path = os.path.join(OUT, f"{name}.jsonl")
        with open(path, "w") as f:
            for it in items:
                f.write(json.dumps(it, ensure_ascii=False) + "\n")
        print(f"{name}: {len(items)} items -> {path}")


if __name__ == "__main__":
    main()
