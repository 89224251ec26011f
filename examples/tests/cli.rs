//! The CLI contract (DESIGN.md): flags, JSON fields, exit codes. Runs the real binary on SmolLM2.
#![allow(missing_docs)]

mod common;
use common::edgecascade;
use common::smollm2 as model;
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    edgecascade().args(args).output().expect("run edgecascade")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn ask_json_has_every_contract_field() {
    let m = model();
    let o = run(&[
        "ask",
        "--model",
        m.to_str().unwrap(),
        "--json",
        "--max-tokens",
        "12",
        "What is 2+2?",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).expect("stdout is one JSON object");
    for k in [
        "text",
        "route",
        "reason",
        "reason_detail",
        "remote_error",
        "finish_reason",
        "usage",
        "timings",
        "confidence",
        "cost",
    ] {
        assert!(v.get(k).is_some(), "missing {k}");
    }
    assert_eq!(v["route"], "local");
    assert!(["stop", "length"].contains(&v["finish_reason"].as_str().unwrap()));
    for k in ["prompt_tokens", "completion_tokens", "by_tier", "estimated"] {
        assert!(v["usage"].get(k).is_some(), "usage.{k}");
    }
    assert!(
        v["usage"]["by_tier"]["local"]["completion_tokens"]
            .as_u64()
            .unwrap()
            >= 1
    );
    for k in ["ttft_ms", "prefill_tok_s", "decode_tok_s"] {
        assert!(v["timings"][k].as_f64().unwrap() >= 0.0, "timings.{k}");
    }
    for k in ["mean_logprob", "min_prob", "p10_prob", "mean_entropy"] {
        assert!(v["confidence"][k].is_number(), "confidence.{k}");
    }
    for k in ["local_usd", "remote_usd", "total_usd", "all_remote_usd"] {
        assert!(v["cost"][k].is_number(), "cost.{k}");
    }
}

#[test]
fn ask_streams_text_and_a_summary() {
    let m = model();
    let o = run(&[
        "ask",
        "--model",
        m.to_str().unwrap(),
        "--max-tokens",
        "8",
        "Say hi.",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!String::from_utf8_lossy(&o.stdout).trim().is_empty());
    let e = stderr(&o);
    assert!(
        e.contains("local") && e.contains("TTFT") && e.contains("tok/s"),
        "{e}"
    );
}

#[test]
fn usage_errors_exit_2() {
    let m = model();
    let o = run(&[
        "ask",
        "--model",
        m.to_str().unwrap(),
        "--private",
        "--force",
        "remote",
        "x",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("contradict"));
    assert_eq!(run(&["ask"]).status.code(), Some(2));
    assert_eq!(run(&["bogus-command"]).status.code(), Some(2));
}

#[test]
fn runtime_errors_exit_1_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.gguf");
    std::fs::write(&bad, b"GGUF\x03\0\0\0truncated").unwrap();
    let o = run(&["ask", "--model", bad.to_str().unwrap(), "hi"]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(e.contains("bad.gguf"), "{e}");
}

#[test]
fn models_verify_good_and_bad() {
    let m = model();
    let o = run(&["models", "verify", m.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("valid GGUF") && out.contains("loads and generates"),
        "{out}"
    );
    let dir = tempfile::tempdir().unwrap();
    let o = run(&["models", "verify", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn bench_json_reports_medians() {
    let m = model();
    let o = run(&[
        "bench",
        "--model",
        m.to_str().unwrap(),
        "--prompt-tokens",
        "32",
        "--gen-tokens",
        "8",
        "--reps",
        "2",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for k in [
        "prefill_tok_s",
        "decode_tok_s",
        "ttft_ms",
        "threads",
        "prompt_tokens",
        "gen_tokens",
        "reps",
    ] {
        assert!(v.get(k).is_some(), "missing {k}");
    }
    assert!(v["decode_tok_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn config_file_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("edgecascade.toml");
    std::fs::write(
        &cfg,
        format!("[local]\nmodel = {:?}\nn_ctx = 256\n", model()),
    )
    .unwrap();
    let o = run(&[
        "ask",
        "--config",
        cfg.to_str().unwrap(),
        "--json",
        "--max-tokens",
        "4",
        "hi",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::write(&cfg, "[local]\nthreadz = 2\n").unwrap();
    let o = run(&["ask", "--config", cfg.to_str().unwrap(), "hi"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("threadz"), "{}", stderr(&o));
}

#[test]
fn chat_ctrl_c_cancels_the_answer_not_the_program() {
    use std::io::{Read, Write};
    use std::process::Stdio;
    let m = model();
    let mut child = edgecascade()
        .args([
            "chat",
            "--model",
            m.to_str().unwrap(),
            "--max-tokens",
            "400",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "Write a very long story about a dragon.").unwrap();
    // Wait for the answer to start streaming, then press Ctrl-C.
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 64];
    let n = stdout.read(&mut first).unwrap();
    assert!(n > 0, "no answer streamed");
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    std::thread::sleep(std::time::Duration::from_millis(300));
    writeln!(stdin, "What is 2+2?").unwrap();
    drop(stdin); // Ctrl-D after the second turn
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("[cancelled]"), "{err}");
    assert_eq!(
        err.matches("completion tokens").count(),
        2,
        "both turns must finish: {err}"
    );
}

#[test]
fn costs_plan_arithmetic_and_json_contract() {
    // 100M tokens/day at $0.0002 per 1k tokens is $600 per 30-day month.
    let o = run(&[
        "costs",
        "plan",
        "--tokens-per-day",
        "100000000",
        "--small-input-per-1k",
        "0.0002",
        "--small-output-per-1k",
        "0.0002",
        "--escalation",
        "0.25",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let f = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("missing {k}"));
    assert!((f("all_small_usd") - 600.0).abs() < 1e-6);
    // The 70b preset at $0.004 per 1k: 20x the small tier.
    assert!((f("all_large_usd") - 12_000.0).abs() < 1e-6);
    assert!((f("cascade_usd") - (600.0 + 0.25 * 12_000.0)).abs() < 1e-6);
    assert!((f("savings_usd") - (12_000.0 - 3_600.0)).abs() < 1e-6);
    assert!(v["steps"].as_array().is_some_and(|s| s.len() >= 5));
    // Requests x tokens per request is the same traffic.
    let o = run(&[
        "costs",
        "plan",
        "--requests-per-day",
        "200000",
        "--tokens-per-request",
        "500",
        "--json",
    ]);
    let w: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(w["all_small_usd"], v["all_small_usd"]);
    // The escalation rate read from `eval --json` output.
    let dir = tempfile::tempdir().unwrap();
    let eval = dir.path().join("eval.json");
    std::fs::write(&eval, r#"{"recommended": {"escalation_rate": 0.25}}"#).unwrap();
    let o = run(&[
        "costs",
        "plan",
        "--from-eval",
        eval.to_str().unwrap(),
        "--json",
    ]);
    let e: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(e["cascade_usd"], v["cascade_usd"]);
    // Nonsense is a usage error.
    for bad in [
        &["costs", "plan", "--escalation", "1.5"][..],
        &["costs", "plan", "--small", "3b"][..],
        &["costs", "plan", "--regions", "0"][..],
    ] {
        assert_eq!(run(bad).status.code(), Some(2), "{bad:?}");
    }
}

#[test]
fn ask_with_a_schema_answers_json_that_matches_it() {
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("city.json");
    std::fs::write(
        &schema,
        r#"{"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
            "country": {"type": "string", "maxLength": 30}}, "required": ["city", "country"],
            "additionalProperties": false}"#,
    )
    .unwrap();
    let m = model();
    let out = run(&[
        "ask",
        "--model",
        m.to_str().unwrap(),
        "--schema",
        schema.to_str().unwrap(),
        "--max-tokens",
        "60",
        "--json",
        "What is the capital of France?",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let answer: serde_json::Value = serde_json::from_str(v["text"].as_str().unwrap()).unwrap();
    assert!(
        answer["city"].is_string() && answer["country"].is_string(),
        "{answer}"
    );
    assert_eq!(answer.as_object().unwrap().len(), 2, "{answer}");
    assert!(v["format_error"].is_null(), "{v}");
    // A schema that is not JSON is a usage error for the request (exit 1 with one line).
    std::fs::write(&schema, "{not json").unwrap();
    let out = run(&[
        "ask",
        "--model",
        m.to_str().unwrap(),
        "--schema",
        schema.to_str().unwrap(),
        "hi",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("response_format"), "{}", stderr(&out));
}

#[test]
fn private_asks_never_connect_and_the_key_never_shows() {
    use std::sync::atomic::Ordering;
    let key = "sk-cli-secret-90ab";
    let (url, connections) = common::counting_server();
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::escalating_config(dir.path(), &model(), &url, key);
    let ask = |extra: &[&str]| {
        let mut args = vec![
            "-vv",
            "ask",
            "--config",
            cfg.to_str().unwrap(),
            "--max-tokens",
            "8",
        ];
        args.extend_from_slice(extra);
        args.push("My PIN is 4321. Is it safe?");
        run(&args)
    };
    for extra in [&["--private"][..], &["--private", "--json"]] {
        let o = ask(extra);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "a private ask connected"
    );
    // The positive control: the same ask, not private, connects (and degrades to local).
    let o = ask(&["--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(connections.load(Ordering::SeqCst) >= 1);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["route"], "degraded_local", "{v}");
    let forced = ask(&["--force", "remote"]);
    assert_eq!(forced.status.code(), Some(1));
    for out in [&o, &forced] {
        for text in [
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        ] {
            assert!(!text.contains(key), "the key leaked: {text}");
        }
    }
    assert!(
        stderr(&forced).contains("[redacted]"),
        "the 401 answer, redacted, is not in: {}",
        stderr(&forced)
    );
    let ledger = std::fs::read_to_string(dir.path().join("ledger.jsonl")).unwrap();
    assert!(
        // The whole phrase: "4321" alone can occur in a request id (hex digits).
        !ledger.contains(key) && !ledger.contains("PIN is 4321"),
        "{ledger}"
    );
}
