//! `edgecascade models`: list configured models, or verify a file. Verification validates the
//! GGUF header in Rust, then trial-loads the model in a child process, so even a llama.cpp abort
//! on some metadata we do not check becomes a clear error instead of a crash.

use std::path::PathBuf;
use std::process::Command;

use clap::{Args as ClapArgs, Subcommand};
use edgecascade::engine::local::verify_model;
use edgecascade::{ChatRequest, Config, NullSink, Runtime};

use crate::common::{models_dir, ModelArgs};
use crate::Failure;

/// `models` flags.
#[derive(ClapArgs)]
pub struct Args {
    #[command(subcommand)]
    command: Option<ModelsCommand>,
    #[command(flatten)]
    model: ModelArgs,
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// List the configured model and the models in the models folder (default).
    List,
    /// Validate a model file, then trial-load it in a child process.
    Verify {
        /// The GGUF file.
        path: PathBuf,
        /// Only validate the header; no trial load.
        #[arg(long)]
        no_load: bool,
    },
    /// Internal: load and decode one token (run by `verify` in a child process).
    #[command(hide = true)]
    TrialLoad { path: PathBuf },
}

pub fn run(args: Args) -> Result<(), Failure> {
    match args.command.unwrap_or(ModelsCommand::List) {
        ModelsCommand::List => list(&args.model),
        ModelsCommand::Verify { path, no_load } => verify(&path, no_load),
        ModelsCommand::TrialLoad { path } => trial_load(path),
    }
}

fn describe(path: &std::path::Path) -> String {
    match verify_model(path) {
        Ok(i) => format!(
            "ok   {} ({}, {} tensors, {:.1} MB, context {})",
            i.name.unwrap_or_default(),
            i.architecture.unwrap_or_default(),
            i.tensor_count,
            i.file_len as f64 / 1e6,
            i.context_length.map_or("?".into(), |c| c.to_string())
        ),
        Err(e) => format!("BAD  {e}"),
    }
}

fn list(args: &ModelArgs) -> Result<(), Failure> {
    let cfg = crate::common::load_config(args).ok();
    if let Some(m) = cfg.as_ref().and_then(|c| c.local.model.as_ref()) {
        println!("configured local model: {}\n  {}", m.display(), describe(m));
    }
    if let Some(r) = cfg.as_ref().and_then(|c| c.remote.as_ref()) {
        println!("configured remote model: {} at {}", r.model, r.base_url);
    }
    let dir = models_dir();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    println!("models in {}:", dir.display());
    if files.is_empty() {
        println!("  (none; fetch the default with scripts/fetch_models.py)");
    }
    for f in files {
        println!("  {}\n    {}", f.display(), describe(&f));
    }
    Ok(())
}

fn verify(path: &std::path::Path, no_load: bool) -> Result<(), Failure> {
    let info = verify_model(path)?;
    println!(
        "{}: valid GGUF v{} ({}, {} tensors, {} metadata keys, {:.1} MB of tensor data)",
        path.display(),
        info.version,
        info.architecture
            .as_deref()
            .unwrap_or("unknown architecture"),
        info.tensor_count,
        info.kv_count,
        info.data_bytes as f64 / 1e6
    );
    if no_load {
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let out = Command::new(exe)
        .args(["models", "trial-load"])
        .arg(path)
        .output()?;
    if out.status.success() {
        print!("{}", String::from_utf8_lossy(&out.stdout));
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_owned();
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = out.status.signal() {
            return Err(Failure::Runtime(format!(
                "{}: llama.cpp crashed loading this file (signal {sig}); it would crash an app too. {last}",
                path.display()
            )));
        }
    }
    Err(Failure::Runtime(if last.is_empty() {
        format!("{}: trial load failed", path.display())
    } else {
        last.trim_start_matches("error: ").to_owned()
    }))
}

fn trial_load(path: PathBuf) -> Result<(), Failure> {
    let mut cfg = Config::default();
    cfg.local.model = Some(path.clone());
    cfg.local.n_ctx = Some(256);
    let rt = Runtime::new(cfg)?;
    let r = rt.chat(
        &ChatRequest {
            max_tokens: 1,
            ..ChatRequest::user("Hi")
        },
        &NullSink,
    )?;
    let i = rt.local_model().expect("loaded with a model");
    println!(
        "{}: loads and generates ({} params, vocab {}, trained context {}, chat template: {}, load {:.0} ms, first token {:.0} ms)",
        path.display(),
        i.n_params,
        i.n_vocab,
        i.n_ctx_train,
        i.chat_template,
        i.load_ms,
        r.timings.ttft_ms
    );
    Ok(())
}
