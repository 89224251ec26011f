//! `edgecascade chat`: an interactive multi-turn REPL. The runtime's slot keeps the conversation
//! in its KV cache, so each turn evaluates only the new tokens.

use std::io::{BufRead, Write};
use std::sync::atomic::Ordering;

use clap::Args as ClapArgs;
use edgecascade::{ChatMessage, ChatRequest, Event, FinishReason};

use crate::common::{load_config, load_runtime, Interrupt, ModelArgs};
use crate::Failure;

/// `chat` flags.
#[derive(ClapArgs)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// System message.
    #[arg(long, default_value = "You are a helpful assistant.")]
    system: String,
    /// Most tokens per answer.
    #[arg(long, default_value_t = 512)]
    max_tokens: u32,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
}

pub fn run(args: Args) -> Result<(), Failure> {
    let cfg = load_config(&args.model)?;
    let interrupt = Interrupt::install();
    let rt = load_runtime(cfg, false)?;
    if let Some(info) = rt.local_model() {
        eprintln!(
            "{} ({}, n_ctx {}). Ctrl-C cancels an answer; /reset starts over; Ctrl-D quits.",
            info.name, info.architecture, info.n_ctx
        );
    }
    let mut messages = vec![ChatMessage::system(args.system.clone())];
    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        eprint!("> ");
        let _ = std::io::stderr().flush();
        line.clear();
        if stdin.lock().read_line(&mut line)? == 0 {
            eprintln!();
            return Ok(());
        }
        let input = line.trim();
        if input.is_empty() {
            continue;
        }
        if input == "/reset" {
            messages.truncate(1);
            if let Some(engine) = rt.local_engine() {
                engine.clear_cache();
            }
            continue;
        }
        messages.push(ChatMessage::user(input));
        let mut req = ChatRequest {
            messages: messages.clone(),
            max_tokens: args.max_tokens,
            ..ChatRequest::default()
        };
        req.sampling.temperature = args.temperature;
        req.hold_draft = crate::ask::Display::holds_draft();
        interrupt.cancel.store(false, Ordering::SeqCst);
        interrupt.busy.store(true, Ordering::SeqCst);
        let display = crate::ask::Display::new(false);
        let sink = |e: Event| display.event(&e);
        let result = rt.chat_cancellable(&req, &sink, &interrupt.cancel);
        interrupt.busy.store(false, Ordering::SeqCst);
        display.finish();
        match result {
            Ok(r) => {
                if r.finish_reason == FinishReason::Cancelled {
                    eprintln!("[cancelled]");
                }
                eprintln!("{}", crate::ask::summary_line(&r));
                messages.push(ChatMessage::assistant(r.text));
            }
            Err(e) => {
                eprintln!("error: {e}");
                messages.pop();
            }
        }
    }
}
