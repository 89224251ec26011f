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
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn run(args: Args) -> Result<(), Failure> {
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
    cfg.local.n_batch = cfg.local.n_batch.max(args.prompt_tokens);
    let rt = load_runtime(cfg, args.json)?;
    let engine = rt.local_engine();
    let info = engine.info().clone();
    engine.bench_once(args.prompt_tokens, args.gen_tokens)?; // warm-up
    let (mut pp, mut tg, mut ttft) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..args.reps {
        let o = engine.bench_once(args.prompt_tokens, args.gen_tokens)?;
        let p = f64::from(o.prompt_tokens_evaluated) / (o.prefill_ms / 1e3);
        let d = f64::from(o.completion_tokens - 1) / (o.decode_ms / 1e3);
        if !args.json {
            eprintln!(
                "rep {}: prefill {p:.1} tok/s, decode {d:.1} tok/s, TTFT {:.1} ms",
                i + 1,
                o.ttft_ms
            );
        }
        pp.push(p);
        tg.push(d);
        ttft.push(o.ttft_ms);
    }
    let (pp, tg, ttft) = (median(pp), median(tg), median(ttft));
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "model": info.path, "prefill_tok_s": pp, "decode_tok_s": tg, "ttft_ms": ttft,
                "threads": info.threads, "threads_batch": info.threads_batch,
                "prompt_tokens": args.prompt_tokens, "gen_tokens": args.gen_tokens, "reps": args.reps,
            })
        );
    } else {
        println!(
            "{}: pp{} {pp:.1} tok/s · tg{} {tg:.1} tok/s · TTFT {ttft:.1} ms (median of {}, {} threads)",
            info.name, args.prompt_tokens, args.gen_tokens, args.reps, info.threads
        );
    }
    Ok(())
}
