//! `edgecascade bench`: prefill and decode speed and TTFT, the median of several repetitions,
//! through the same generation path as a real request (sampling and confidence included).

use clap::Args as ClapArgs;

use crate::common::{load_config, load_runtime, ModelArgs};
use crate::Failure;

/// `bench` flags.
#[derive(ClapArgs)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 128)]
    prompt_tokens: u32,
    /// Tokens to generate.
    #[arg(long, default_value_t = 64)]
    gen_tokens: u32,
    /// Repetitions (after one warm-up).
    #[arg(long, default_value_t = 5)]
    reps: u32,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Instead: time to first remote token through our client against the server's own TTFT
    /// (needs a `[remote]` that is `edgecascade serve`), over this many requests.
    #[arg(long, value_name = "REQUESTS")]
    remote_ttft: Option<u32>,
    /// Instead: measure a second chat turn's TTFT (prefix reuse) against the same turn cold,
    /// on a history of about this many tokens.
    #[arg(long, value_name = "HISTORY_TOKENS")]
    prefix_reuse: Option<u32>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    }
}

pub fn run(args: Args) -> Result<(), Failure> {
    if let Some(n) = args.remote_ttft {
        return remote_ttft(&args.model, n, args.json);
    }
    if args.reps == 0 || args.prompt_tokens == 0 || args.gen_tokens < 2 {
        return Err(Failure::Usage(
            "--reps and --prompt-tokens must be at least 1, --gen-tokens at least 2".into(),
        ));
    }
    let mut cfg = load_config(&args.model)?;
    let need = args.prompt_tokens + args.gen_tokens + 8;
    if cfg.local.n_ctx.is_none_or(|n| n < need) {
        cfg.local.n_ctx = Some(need.max(512));
    }
    if args.prefix_reuse.is_none() {
        cfg.local.n_batch = cfg.local.n_batch.max(args.prompt_tokens);
    }
    let rt = load_runtime(cfg, args.json)?;
    if let Some(history) = args.prefix_reuse {
        return prefix_reuse(&rt, history, args.reps, args.json);
    }
    let engine = crate::common::local_engine(&rt)?;
    let info = engine.info().clone();
    engine.bench_once(args.prompt_tokens, args.gen_tokens)?; // warm-up
    let (mut pp, mut tg, mut ttft, mut conf) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut outside = Vec::new();
    for i in 0..args.reps {
        let o = engine.bench_once(args.prompt_tokens, args.gen_tokens)?;
        let p = f64::from(o.prompt_tokens_evaluated) / (o.prefill_ms / 1e3);
        let d = f64::from(o.completion_tokens - 1) / (o.decode_ms / 1e3);
        if !args.json {
            eprintln!(
                "rep {}: prefill {p:.1} tok/s, decode {d:.1} tok/s, TTFT {:.1} ms (per token: llama_decode {:.3} ms, sampling {:.3} ms, confidence {:.3} ms)",
                i + 1,
                o.ttft_ms,
                o.decode_call_ms / f64::from(o.completion_tokens - 1),
                o.sample_ms / f64::from(o.completion_tokens),
                o.confidence_ms / f64::from(o.completion_tokens)
            );
        }
        pp.push(p);
        tg.push(d);
        ttft.push(o.ttft_ms);
        conf.push(100.0 * o.confidence_ms / o.decode_ms);
        // Decode time spent on our side of the loop (sampling, confidence, text, callbacks):
        // everything but llama.cpp's decode of the fed-back tokens.
        outside.push(100.0 * (1.0 - o.decode_call_ms / o.decode_ms));
    }
    let (pp, tg, ttft, conf) = (median(pp), median(tg), median(ttft), median(conf));
    let outside = median(outside);
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "model": info.path, "prefill_tok_s": pp, "decode_tok_s": tg, "ttft_ms": ttft,
                "threads": info.threads, "threads_batch": info.threads_batch,
                "confidence_pct_of_decode": conf, "n_vocab": info.n_vocab,
                "outside_llama_decode_pct_of_decode": outside,
                "prompt_tokens": args.prompt_tokens, "gen_tokens": args.gen_tokens, "reps": args.reps,
            })
        );
    } else {
        println!(
            "{}: pp{} {pp:.1} tok/s · tg{} {tg:.1} tok/s · TTFT {ttft:.1} ms · confidence {conf:.2}% of decode, outside llama_decode {outside:.2}% (median of {}, {} threads)",
            info.name, args.prompt_tokens, args.gen_tokens, args.reps, info.threads
        );
    }
    Ok(())
}

/// Cold against warm TTFT for the next turn of a conversation whose history (system, user and
/// the model's own answer) is about `history` tokens.
fn prefix_reuse(
    rt: &edgecascade::Runtime,
    history: u32,
    reps: u32,
    json: bool,
) -> Result<(), Failure> {
    use edgecascade::{ChatMessage, ChatRequest, NullSink};
    let engine = crate::common::local_engine(rt)?;
    let system = ChatMessage::system("You are a helpful assistant. Answer briefly.");
    let filler = "The river runs past the old mill, and the miller counts the sacks of grain. ";
    let answer_tokens = 40;
    let mut body = String::new();
    while engine.count_prompt_tokens(&[system.clone(), ChatMessage::user(body.clone())])?
        + answer_tokens
        < history
    {
        body.push_str(filler);
    }
    let first = ChatRequest {
        messages: vec![system, ChatMessage::user(body)],
        max_tokens: answer_tokens,
        ..ChatRequest::default()
    };
    let (mut cold, mut warm, mut same) = (Vec::new(), Vec::new(), 0);
    let (mut evaluated, mut prompt_tokens) = (0, 0);
    for _ in 0..=reps {
        engine.clear_cache();
        let answer = rt.chat(&first, &NullSink)?; // turn 1 fills the cache, answer included
        let mut messages = first.messages.clone();
        messages.push(ChatMessage::assistant(answer.text));
        messages.push(ChatMessage::user("How many sacks are there?"));
        let turn = ChatRequest {
            messages,
            max_tokens: 8,
            ..ChatRequest::default()
        };
        let w = rt.chat(&turn, &NullSink)?;
        engine.clear_cache();
        let c = rt.chat(&turn, &NullSink)?;
        same += u32::from(c.text == w.text);
        cold.push(c.timings.ttft_ms);
        warm.push(w.timings.ttft_ms);
        evaluated = w.usage.prompt_tokens_evaluated;
        prompt_tokens = w.usage.prompt_tokens;
    }
    // The first pair is a warm-up.
    let (cold, warm) = (median(cold[1..].to_vec()), median(warm[1..].to_vec()));
    let mode = format!("{:?}", rt.config().local.prefix_cache).to_lowercase();
    if json {
        println!(
            "{}",
            serde_json::json!({"prefix_cache": mode, "prompt_tokens": prompt_tokens, "warm_evaluated_tokens": evaluated,
                "cold_ttft_ms": cold, "warm_ttft_ms": warm, "ratio": warm / cold, "identical": same, "reps": reps + 1})
        );
    } else {
        println!(
            "prefix cache {mode}: next turn of a {prompt_tokens}-token conversation: cold TTFT {cold:.1} ms, warm {warm:.1} ms \
             ({evaluated} tokens evaluated), ratio {:.3}; output identical to cold in {same} of {} (median of {reps})",
            warm / cold,
            reps + 1
        );
    }
    Ok(())
}

/// Client-observed time to the first remote token minus the server's own TTFT, per request.
fn remote_ttft(model: &ModelArgs, n: u32, json: bool) -> Result<(), Failure> {
    use edgecascade::engine::remote::RemoteEngine;
    use edgecascade::ChatRequest;
    let cfg = crate::common::load_config_file(model)?;
    let remote = cfg
        .remote
        .as_ref()
        .ok_or_else(|| Failure::Usage("--remote-ttft needs a [remote] section".into()))?;
    let engine = RemoteEngine::new(remote)?;
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let mut over = Vec::new();
    for i in 0..=n {
        let req = ChatRequest {
            max_tokens: 8,
            ..ChatRequest::user(format!("Say a word about the number {i}."))
        };
        let out = engine.generate(&req, &cancel, &mut |_| {})?;
        let server = out.server_ttft_ms.ok_or_else(|| {
            Failure::Runtime(
                "the server reports no TTFT: use edgecascade serve as the remote".into(),
            )
        })?;
        if i > 0 {
            over.push(out.ttft_ms - server);
        }
    }
    let mut sorted = over.clone();
    sorted.sort_by(f64::total_cmp);
    let p50 = median(over);
    let p99 = sorted[((0.99 * sorted.len() as f64).ceil() as usize).saturating_sub(1)];
    if json {
        println!(
            "{}",
            serde_json::json!({"requests": n, "client_overhead_ms_p50": p50, "client_overhead_ms_p99": p99})
        );
    } else {
        println!("time to first remote token, client minus server TTFT over {n} requests: p50 {p50:.2} ms, p99 {p99:.2} ms");
    }
    Ok(())
}
