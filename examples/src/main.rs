//! `edgecascade`: the desktop binary. See the CLI contract in DESIGN.md.
//!
//! Exit codes: 0 success, 1 runtime error (one line on stderr), 2 usage error, 130 interrupted.

#![allow(clippy::needless_pass_by_value, clippy::unnecessary_wraps)] // clap hands each command its args

mod ask;
mod bench;
mod chat;
mod common;
mod costs;
mod eval;
mod models;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// On-device LLM runtime with a cost-aware local/remote cascade.
#[derive(Parser)]
#[command(name = "edgecascade", version, about)]
struct Cli {
    /// More log output (-v: info, -vv: debug, including llama.cpp's own log).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer one prompt, streaming the answer.
    Ask(ask::Args),
    /// Interactive multi-turn chat (Ctrl-C cancels the answer, Ctrl-D quits).
    Chat(chat::Args),
    /// Measure prefill and decode speed and TTFT.
    Bench(bench::Args),
    /// List configured models, or verify a model file.
    Models(models::Args),
    /// Serve the runtime over an OpenAI-compatible HTTP API.
    Serve(serve::Args),
    /// Costs and savings from the ledger.
    Costs(costs::Args),
    /// Measure the cascade on a labelled set: accuracy against share escalated, per signal.
    Eval(eval::Args),
}

/// A failure with its exit code.
pub enum Failure {
    /// Exit 1, with this message.
    Runtime(String),
    /// Exit 2, with this message.
    Usage(String),
    /// Exit 130.
    Interrupted,
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Runtime(e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default = match cli.verbose {
        0 => "warn,llama.cpp=off",
        1 => "info,llama.cpp=warn",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format_timestamp(None)
        .init();
    let result = match cli.command {
        Command::Ask(a) => ask::run(a),
        Command::Chat(a) => chat::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Models(a) => models::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Costs(a) => costs::run(a),
        Command::Eval(a) => eval::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Runtime(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(1)
        }
        Err(Failure::Usage(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Interrupted) => ExitCode::from(130),
    }
}
