//! `edgecascade ask`: one prompt, streamed, with a one-line summary (or one JSON object).

use std::io::Write;
use std::sync::atomic::Ordering;

use clap::{Args as ClapArgs, ValueEnum};
use edgecascade::{ChatRequest, Event, PolicyOverride, Response, Sampling};

use crate::common::{load_config, load_runtime, Interrupt, ModelArgs};
use crate::Failure;

#[derive(Clone, Copy, ValueEnum)]
pub enum Force {
    Local,
    Remote,
}

/// `ask` flags.
#[derive(ClapArgs)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    max_tokens: u32,
    /// Sampling temperature; 0 is greedy (deterministic).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Sampling seed.
    #[arg(long)]
    seed: Option<u32>,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Top-k sampling.
    #[arg(long, default_value_t = 40)]
    top_k: u32,
    /// Repetition penalty (1.0 disables).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Stop sequence (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// System message.
    #[arg(long)]
    system: Option<String>,
    /// Never send this request off the device.
    #[arg(long)]
    private: bool,
    /// Force a tier.
    #[arg(long, value_enum)]
    force: Option<Force>,
    /// The task: an answer kind (choice, number, exact, yesno) hints the calibrated signal;
    /// any name selects the hidden-state probe's per-task terms.
    #[arg(long)]
    task: Option<String>,
    /// Answer with JSON matching this JSON schema (a file); locally, decoding is constrained
    /// to it.
    #[arg(long, value_name = "FILE")]
    schema: Option<std::path::PathBuf>,
    /// Offer these tools (a file holding OpenAI's `tools` array); calls print as JSON lines.
    #[arg(long, value_name = "FILE")]
    tools: Option<std::path::PathBuf>,
    /// With --tools: auto (default), none, required, or the name of the function to call.
    #[arg(long, value_name = "CHOICE", requires = "tools")]
    tool_choice: Option<String>,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
    /// The prompt.
    prompt: String,
}

pub fn run(args: Args) -> Result<(), Failure> {
    if args.private && matches!(args.force, Some(Force::Remote)) {
        return Err(Failure::Usage(
            "--private and --force remote contradict each other".into(),
        ));
    }
    let cfg = load_config(&args.model)?;
    let policy = match args.force {
        None => PolicyOverride::Auto,
        Some(Force::Local) => PolicyOverride::ForceLocal,
        Some(Force::Remote) => PolicyOverride::ForceRemote,
    };
    let mut messages = Vec::new();
    if let Some(s) = args.system {
        messages.push(edgecascade::ChatMessage::system(s));
    }
    messages.push(edgecascade::ChatMessage::user(args.prompt));
    let response_format = match &args.schema {
        None => edgecascade::ResponseFormat::Text,
        Some(path) => {
            let schema = std::fs::read_to_string(path)
                .map_err(|e| Failure::Usage(format!("--schema {}: {e}", path.display())))?;
            edgecascade::ResponseFormat::JsonSchema {
                name: path
                    .file_stem()
                    .map_or_else(|| "schema".into(), |s| s.to_string_lossy().into_owned()),
                schema,
                strict: true,
            }
        }
    };
    let tools = match &args.tools {
        None => Vec::new(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Failure::Usage(format!("--tools {}: {e}", path.display())))?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                Failure::Usage(format!("--tools {}: not JSON: {e}", path.display()))
            })?;
            crate::serve::openai::tools(Some(v))
                .map_err(|e| Failure::Usage(format!("--tools {}: {}", path.display(), e.message)))?
        }
    };
    let tool_choice = match args.tool_choice.as_deref() {
        None | Some("auto") => edgecascade::ToolChoice::Auto,
        Some("none") => edgecascade::ToolChoice::None,
        Some("required") => edgecascade::ToolChoice::Required,
        Some(name) => edgecascade::ToolChoice::Function { name: name.into() },
    };
    let req = ChatRequest {
        tools,
        tool_choice,
        response_format,
        messages,
        max_tokens: args.max_tokens,
        sampling: Sampling {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            repeat_penalty: args.repeat_penalty,
            seed: args.seed,
            ..Sampling::default()
        },
        stop: args.stop,
        policy,
        private: args.private,
        task_hint: args.task.as_deref().and_then(edgecascade::Kind::parse),
        task: args.task.clone(),
        hold_draft: Display::holds_draft(),
    };
    let interrupt = Interrupt::install();
    let rt = load_runtime(cfg, args.json)?;
    interrupt.busy.store(true, Ordering::SeqCst);
    let display = Display::new(args.json);
    let sink = |e: Event| display.event(&e);
    let result = rt.chat_cancellable(&req, &sink, &interrupt.cancel);
    if interrupt.cancel.load(Ordering::SeqCst) {
        // Ctrl-C in any leg: print what there is, then exit 130.
        display.finish();
        return Err(Failure::Interrupted);
    }
    let resp = result?;
    if args.json {
        println!("{}", resp.to_contract_json());
    } else {
        display.finish();
        for c in &resp.tool_calls {
            println!(
                "{}",
                serde_json::json!({"tool_call": {"id": c.id, "name": c.name, "arguments": c.arguments}})
            );
        }
        if let Some(e) = &resp.format_error {
            eprintln!("warning: {e}");
        }
        eprintln!("{}", summary_line(&resp));
    }
    if let Some(e) = &resp.ledger_error {
        // The answer stands; only its cost record is missing.
        eprintln!("warning: {e}");
    }
    Ok(())
}

/// Shows an answer as it streams. On a terminal the local draft streams; when the cascade
/// escalates, a dim marker line on stderr makes the switch visible and the remote answer
/// follows. When stdout is not a terminal (a pipe, a file) it carries exactly the final answer:
/// the request then holds the local draft until the route is settled (`hold_draft`), so every
/// token that arrives is final. With `--json` nothing streams.
pub struct Display {
    live: bool,
    quiet: bool,
}

impl Display {
    /// For `ask --json` (`quiet`) or text.
    pub fn new(quiet: bool) -> Self {
        use std::io::IsTerminal;
        Self {
            live: std::io::stdout().is_terminal(),
            quiet,
        }
    }

    /// Whether requests should hold the local draft: when stdout cannot take text back.
    pub fn holds_draft() -> bool {
        use std::io::IsTerminal;
        !std::io::stdout().is_terminal()
    }

    /// One event.
    pub fn event(&self, e: &Event) {
        if self.quiet {
            return;
        }
        match e {
            Event::Token { text, .. } => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(text.as_bytes());
                let _ = out.flush();
            }
            Event::Escalating { reason } if self.live => {
                println!();
                eprintln!(
                    "\x1b[2m── escalating to remote: {} ──\x1b[0m",
                    reason.as_str().replace('_', " ")
                );
            }
            Event::FallingBack { detail } if self.live => {
                println!();
                eprintln!("\x1b[2m── falling back to the local answer: {detail} ──\x1b[0m");
            }
            _ => {}
        }
    }

    /// After the request: the closing newline.
    pub fn finish(&self) {
        if !self.quiet {
            println!();
        }
    }
}

/// `[local · no_remote] 42 tokens · TTFT 85 ms · prefill 900 tok/s · decode 110 tok/s · ...`
pub fn summary_line(r: &Response) -> String {
    let conf = r.confidence.map_or(String::new(), |c| {
        format!(
            " · confidence: mean logprob {:.2}, p10 {:.2}, min {:.2}",
            c.mean_logprob, c.p10_prob, c.min_prob
        )
    });
    // A remote answer has no prefill time of its own to report: no figure rather than a 0.
    let prefill = if r.timings.prefill_tok_s > 0.0 {
        format!(" · prefill {:.0} tok/s", r.timings.prefill_tok_s)
    } else {
        String::new()
    };
    format!(
        "[{} · {}] {} prompt + {} completion tokens ({}) · TTFT {:.0} ms{} · decode {:.1} tok/s{} · ${:.6}",
        r.route.name(),
        r.reason,
        r.usage.prompt_tokens,
        r.usage.completion_tokens,
        serde_json::to_value(r.finish_reason).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
        r.timings.ttft_ms,
        prefill,
        r.timings.decode_tok_s,
        conf,
        r.cost.total_usd
    )
}
