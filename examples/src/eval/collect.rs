//! Running items through each tier, with an on-disk result cache keyed by tier, model, prompt
//! and parameters: reruns and threshold sweeps cost nothing, and an interrupted run resumes
//! where it stopped.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use edgecascade::engine::local::{confidence, GenerateOptions, LocalEngine};
use edgecascade::engine::remote::RemoteEngine;
use edgecascade::{ChatRequest, FinishReason};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Failure;

/// How to answer an item by likelihood: the conversation to score after, and the options.
#[derive(Debug, Clone, Serialize)]
pub struct Scoring {
    /// The conversation the options continue.
    pub messages: Vec<edgecascade::ChatMessage>,
    /// The candidate answers.
    pub options: Vec<String>,
}

/// What the local tier produced for one item.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalResult {
    /// The answer.
    pub text: String,
    /// "stop", "length" or "cancelled".
    pub finish: String,
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Per generated token: [logprob, entropy, margin].
    pub signals: Vec<[f32; 3]>,
    /// Per generated token, the log-probability of the model's own top token, where a grammar
    /// may have written another (absent in older caches: then the token written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top: Option<Vec<f32>>,
    /// Wall time of the generation.
    pub ms: f64,
    /// Of which evaluating the prompt.
    #[serde(default)]
    pub prefill_ms: f64,
    /// The model's final hidden states (with `--probe`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden: Option<Hidden>,
}

/// Hidden states as stored: little-endian f32, base64.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hidden {
    /// At the prompt's end.
    pub prompt: String,
    /// At the answer's end.
    pub answer: String,
}

impl Hidden {
    fn encode(v: &[f32]) -> String {
        use base64::Engine as _;
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn decode(s: &str) -> Option<Vec<f32>> {
        use base64::Engine as _;
        let b = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
        (b.len() % 4 == 0).then(|| {
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        })
    }

    /// The two vectors, if they decode to one width.
    pub fn vectors(&self) -> Option<(Vec<f32>, Vec<f32>)> {
        let (p, a) = (Self::decode(&self.prompt)?, Self::decode(&self.answer)?);
        (p.len() == a.len() && !p.is_empty()).then_some((p, a))
    }
}

/// What the remote tier produced for one item.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoteResult {
    /// The answer.
    pub text: String,
    /// Prompt tokens (server-reported or estimated).
    pub prompt_tokens: u32,
    /// Completion tokens.
    pub completion_tokens: u32,
    /// Wall time of the call.
    pub ms: f64,
    /// The calls it made (a request with tools).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<edgecascade::ToolCall>,
}

#[derive(Serialize, Deserialize)]
struct Line {
    key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    local: Option<LocalResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    remote: Option<RemoteResult>,
}

/// The result cache: one JSONL file, appended a whole line per result. A torn last line (a
/// crash mid-write) is skipped.
pub struct Cache {
    path: PathBuf,
    local: HashMap<String, LocalResult>,
    remote: HashMap<String, RemoteResult>,
    /// The file is empty or ends with a newline (false after a torn last line).
    clean_end: bool,
}

impl Cache {
    /// Opens (or starts) the cache in `dir`.
    pub fn open(dir: &Path) -> Result<Self, Failure> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Failure::Runtime(format!("eval cache {}: {e}", dir.display())))?;
        let path = dir.join("results.jsonl");
        let mut c = Self {
            path,
            local: HashMap::new(),
            remote: HashMap::new(),
            clean_end: true,
        };
        if let Ok(mut f) = File::open(&c.path) {
            let mut last = [0u8; 1];
            if f.seek(SeekFrom::End(-1)).is_ok() && f.read_exact(&mut last).is_ok() {
                c.clean_end = last[0] == b'\n';
            }
            f.rewind()?;
            for line in BufReader::new(f).lines() {
                let Ok(line) = line else { break };
                let Ok(l) = serde_json::from_str::<Line>(&line) else {
                    continue;
                };
                if let Some(r) = l.local {
                    c.local.insert(l.key.clone(), r);
                }
                if let Some(r) = l.remote {
                    c.remote.insert(l.key, r);
                }
            }
        }
        Ok(c)
    }

    fn append(&mut self, line: &Line) -> Result<(), Failure> {
        let mut text = serde_json::to_string(line)?;
        text.push('\n');
        // A torn line from an earlier crash must not swallow this one.
        if !self.clean_end {
            text.insert(0, '\n');
        }
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| Failure::Runtime(format!("eval cache {}: {e}", self.path.display())))?;
        self.clean_end = true;
        Ok(())
    }
}

/// A result type and the half of the cache it lives in.
trait Cached: Clone {
    fn map(c: &mut Cache) -> &mut HashMap<String, Self>;
    fn line(key: String, r: Self) -> Line;
}

impl Cached for LocalResult {
    fn map(c: &mut Cache) -> &mut HashMap<String, Self> {
        &mut c.local
    }
    fn line(key: String, r: Self) -> Line {
        Line {
            key,
            local: Some(r),
            remote: None,
        }
    }
}

impl Cached for RemoteResult {
    fn map(c: &mut Cache) -> &mut HashMap<String, Self> {
        &mut c.remote
    }
    fn line(key: String, r: Self) -> Line {
        Line {
            key,
            local: None,
            remote: Some(r),
        }
    }
}

/// Computes the result of every key the cache lacks (`compute(i)` for `keys[i]`), appending
/// each to the cache as it comes, with a progress bar; then returns all results in order.
fn run_cached<T: Cached>(
    cache: &mut Cache,
    keys: &[String],
    label: &str,
    cancel: &AtomicBool,
    quiet: bool,
    usable: impl Fn(&T) -> bool,
    mut compute: impl FnMut(usize) -> Result<T, Failure>,
) -> Result<Vec<T>, Failure> {
    let have = |c: &mut Cache, k: &String| T::map(c).get(k).is_some_and(&usable);
    let todo = keys.iter().filter(|k| !have(cache, k)).count();
    let b = if quiet {
        ProgressBar::hidden()
    } else {
        bar(todo, label)
    };
    for (i, k) in keys.iter().enumerate() {
        if have(cache, k) {
            continue;
        }
        if cancel.load(Ordering::SeqCst) {
            return Err(Failure::Interrupted);
        }
        let r = compute(i)?;
        cache.append(&T::line(k.clone(), r.clone()))?;
        T::map(cache).insert(k.clone(), r);
        b.inc(1);
    }
    b.finish_and_clear();
    let m = T::map(cache);
    Ok(keys.iter().map(|k| m[k].clone()).collect())
}

/// The cache key of a request to a model.
pub fn key(tier: &str, model: &str, req: &ChatRequest) -> String {
    let mut v = serde_json::json!({
        "tier": tier,
        "model": model,
        "messages": req.messages,
        "max_tokens": req.max_tokens,
        "sampling": req.sampling,
        "stop": req.stop,
    });
    // Structured requests key on their format and tools too (text ones keep their old keys).
    if !matches!(req.response_format, edgecascade::ResponseFormat::Text) {
        v["response_format"] = serde_json::json!(req.response_format);
    }
    if !req.tools.is_empty() {
        v["tools"] = serde_json::json!(req.tools);
        v["tool_choice"] = serde_json::json!(req.tool_choice);
    }
    let digest = Sha256::digest(v.to_string().as_bytes());
    digest.iter().fold(String::with_capacity(64), |mut s, b| {
        use std::fmt::Write as _;
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn bar(len: usize, label: &str) -> ProgressBar {
    let b =
        ProgressBar::with_draw_target(Some(len as u64), indicatif::ProgressDrawTarget::stderr());
    b.set_style(
        ProgressStyle::with_template(
            "{prefix:>7} {bar:30} {pos}/{len} {per_sec:>9} ETA {eta} {msg}",
        )
        .expect("valid template"),
    );
    b.set_prefix(label.to_owned());
    b.enable_steady_tick(Duration::from_millis(250));
    b
}

/// Runs `reqs` through the local engine, cached. Returns one result per request.
///
/// A request with `options` is answered by likelihood instead: the option the small model
/// scores highest, with one synthetic token signal from the softmax over the options (its
/// log-probability, entropy and top-two margin).
pub fn run_local(
    cache: &mut Cache,
    engine: &LocalEngine,
    model_id: &str,
    reqs: &[ChatRequest],
    options: &[Option<Scoring>],
    cancel: &AtomicBool,
    quiet: bool,
    hidden: bool,
) -> Result<Vec<LocalResult>, Failure> {
    let keys: Vec<String> = reqs
        .iter()
        .zip(options)
        .map(|(r, o)| match o {
            None => key("local", model_id, r),
            Some(o) => key(
                &format!("local-score {}", serde_json::json!(o)),
                model_id,
                r,
            ),
        })
        .collect();
    // With --probe (generated answers only), an answer cached without hidden states is rerun.
    let usable = |r: &LocalResult| !hidden || r.hidden.is_some();
    run_cached(cache, &keys, "local", cancel, quiet, usable, |i| {
        if let Some(sc) = &options[i] {
            let t = std::time::Instant::now();
            let scores = engine.score_options(&sc.messages, &sc.options, cancel)?;
            return Ok(scored(
                &sc.options,
                &scores,
                engine.count_prompt_tokens(&sc.messages)?,
                t,
            ));
        }
        let out = engine.generate_with(
            &reqs[i],
            GenerateOptions { hidden, gate: None },
            cancel,
            &mut |_| ControlFlow::Continue(()),
        )?;
        if out.finish_reason == FinishReason::Cancelled {
            return Err(Failure::Interrupted);
        }
        Ok(LocalResult {
            text: out.text,
            finish: finish_name(out.finish_reason).into(),
            prompt_tokens: out.prompt_tokens,
            signals: out
                .signals
                .iter()
                .map(|s| [s.logprob, s.entropy, s.margin])
                .collect(),
            top: Some(out.signals.iter().map(|s| s.top_logprob).collect()),
            ms: out.total_ms,
            prefill_ms: out.prefill_ms,
            hidden: out.hidden.map(|h| Hidden {
                prompt: Hidden::encode(&h.prompt),
                answer: Hidden::encode(&h.answer),
            }),
        })
    })
}

/// Runs `reqs` through the remote engine, cached. A request that fails (after the engine's
/// retries) stops the run; what finished is kept, and a rerun resumes. Remote results are keyed
/// by the model name, not the URL (a `serve --port 0` moves every run): give different models
/// different names.
pub fn run_remote(
    cache: &mut Cache,
    engine: &RemoteEngine,
    reqs: &[ChatRequest],
    cancel: &AtomicBool,
    quiet: bool,
) -> Result<Vec<RemoteResult>, Failure> {
    let model_id = engine.model().to_owned();
    let keys: Vec<String> = reqs.iter().map(|r| key("remote", &model_id, r)).collect();
    run_cached(
        cache,
        &keys,
        "remote",
        cancel,
        quiet,
        |_| true,
        |i| {
            let out = engine
                .generate(&reqs[i], cancel, &mut |_| {})
                .map_err(|e| {
                    Failure::Runtime(format!(
                        "remote tier: {e} (finished items are cached; rerun to resume)"
                    ))
                })?;
            if out.finish_reason == FinishReason::Cancelled {
                return Err(Failure::Interrupted);
            }
            Ok(RemoteResult {
                text: out.text,
                prompt_tokens: out.prompt_tokens,
                completion_tokens: out.completion_tokens,
                ms: out.total_ms,
                tool_calls: out.tool_calls,
            })
        },
    )
}

/// A likelihood-scored answer: the best option, with the signals of the softmax over the
/// options' scores (taken as logits) as its one token.
fn scored(
    opts: &[String],
    scores: &[f64],
    prompt_tokens: u32,
    t: std::time::Instant,
) -> LocalResult {
    let logits: Vec<f32> = scores.iter().map(|&s| s as f32).collect();
    let stats = confidence::stats(&logits);
    let best = stats.argmax(&logits);
    let s = stats.signal(&logits, best);
    LocalResult {
        text: opts[best].clone(),
        finish: "stop".into(),
        prompt_tokens,
        signals: vec![[s.logprob, s.entropy, s.margin]],
        top: None,
        ms: t.elapsed().as_secs_f64() * 1e3,
        prefill_ms: 0.0,
        hidden: None,
    }
}

fn finish_name(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Cancelled => "cancelled",
        FinishReason::ToolCalls => "tool_calls",
    }
}
