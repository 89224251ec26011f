//! `edgecascade models`: list the models folder, pull (resumable, verified), remove, show the
//! catalog, or verify a file. Verification validates the GGUF header in Rust, then trial-loads
//! the model in a child process, so even a llama.cpp abort on some metadata we do not check
//! becomes a clear error instead of a crash.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;

use clap::{Args as ClapArgs, Subcommand};
use edgecascade::engine::local::verify_model;
use edgecascade::models::{self, catalog, PullError, PullRequest, Store};
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
    /// List the configured model and the models in the models folder (default): size, whether
    /// a pull verified it, and its catalog name.
    List,
    /// Download a model (a catalog name, or a URL with --sha256), resuming an interrupted
    /// download and verifying the whole file before it appears at its path.
    Pull {
        /// A catalog name (see `models catalog`) or an https URL.
        target: String,
        /// The expected sha256 (needed with a URL; checked against the catalog's with a name).
        #[arg(long, value_name = "HEX")]
        sha256: Option<String>,
        /// Where the file goes. Default: the models folder ($EDGECASCADE_MODELS or ./models).
        #[arg(long, value_name = "PATH")]
        to: Option<PathBuf>,
        /// Most gigabytes the models folder may hold; overrides [models] quota_gb.
        #[arg(long, value_name = "GB")]
        quota_gb: Option<f64>,
        /// Give up after this many seconds, retries included.
        #[arg(long, default_value_t = 6.0 * 3600.0)]
        deadline_s: f64,
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Delete a model (file name or catalog name) and any partial download of it.
    Rm {
        /// File name or catalog name.
        name: String,
    },
    /// The built-in catalog of known models.
    Catalog,
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
        ModelsCommand::Pull {
            target,
            sha256,
            to,
            quota_gb,
            deadline_s,
            json,
        } => pull(&args.model, &target, sha256, to, quota_gb, deadline_s, json),
        ModelsCommand::Rm { name } => {
            for p in Store::new(&models_dir()).remove(&name)? {
                println!("removed {}", p.display());
            }
            Ok(())
        }
        ModelsCommand::Catalog => {
            for e in catalog::CATALOG {
                println!(
                    "{:<20} {:>6.2} GB  ctx {:>6}  {}\n{:<20} {}{}",
                    e.name,
                    e.size_bytes as f64 / 1e9,
                    e.context_length,
                    e.licence,
                    "",
                    e.recommended_use,
                    if e.url.is_none() {
                        " (no download URL)"
                    } else {
                        ""
                    }
                );
            }
            Ok(())
        }
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
    let store = Store::new(&dir);
    let files = store.list();
    println!(
        "models in {} ({:.2} GB):",
        dir.display(),
        store.usage() as f64 / 1e9
    );
    if files.is_empty() {
        println!("  (none; `edgecascade models pull NAME`, or scripts/fetch_models.py for the test models)");
    }
    for f in files {
        println!(
            "  {} ({:.1} MB, {}{})\n    {}",
            f.path,
            f.size as f64 / 1e6,
            if f.verified {
                "verified"
            } else {
                "not verified"
            },
            f.catalog_name
                .map(|n| format!(", catalog {n}"))
                .unwrap_or_default(),
            describe(Path::new(&f.path))
        );
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn pull(
    args: &ModelArgs,
    target: &str,
    sha256: Option<String>,
    to: Option<PathBuf>,
    quota_gb: Option<f64>,
    deadline_s: f64,
    json: bool,
) -> Result<(), Failure> {
    let cfg = crate::common::load_config_file(args)?;
    let names = catalog::CATALOG
        .iter()
        .map(|e| e.name)
        .collect::<Vec<_>>()
        .join(", ");
    let (url, sha, file_name) = if target.contains("://") {
        let sha = sha256.ok_or_else(|| {
            Failure::Usage(format!(
                "pulling a URL needs --sha256 HEX (or a catalog name: {names})"
            ))
        })?;
        let name = target
            .split(['?', '#'])
            .next()
            .and_then(|u| u.rsplit('/').next())
            .filter(|n| !n.is_empty())
            .unwrap_or("model.gguf")
            .to_owned();
        (target.to_owned(), sha, name)
    } else {
        let e = catalog::find(target).ok_or_else(|| {
            Failure::Usage(format!(
                "{target} is neither a URL nor a catalog name ({names})"
            ))
        })?;
        let url = e
            .url
            .ok_or_else(|| Failure::Runtime(format!("{}: {}", e.name, e.recommended_use)))?;
        if let Some(s) = sha256.filter(|s| !s.eq_ignore_ascii_case(e.sha256)) {
            return Err(Failure::Usage(format!(
                "--sha256 {s} is not the catalog's {} for {}",
                e.sha256, e.name
            )));
        }
        (url.to_owned(), e.sha256.to_owned(), e.file_name.to_owned())
    };
    let dest = to.unwrap_or_else(|| models_dir().join(&file_name));
    let quota = quota_gb
        .map(|g| (g * 1e9) as u64)
        .or(cfg.models.quota_bytes());
    let request = PullRequest {
        deadline_s,
        quota_bytes: quota,
        keep: cfg
            .local
            .model
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned()),
        ..PullRequest::new(&url, &sha, &dest)
    };
    let bar = (!json && std::io::stderr().is_terminal()).then(|| {
        let b =
            indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_message(file_name.clone());
        b
    });
    let result = models::pull_with(
        &request,
        &AtomicBool::new(false),
        &mut PullDisplay { bar: bar.as_ref() },
    );
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let out = result.map_err(|e| match e {
        PullError::Invalid(m) => Failure::Usage(m),
        other => Failure::Runtime(other.to_string()),
    })?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "path": out.path, "bytes": out.bytes, "sha256": out.sha256,
                "bytes_transferred": out.bytes_transferred, "resumed_from": out.resumed_from,
                "requests": out.requests, "restarts": out.restarts,
                "already_present": out.already_present, "evicted": out.evicted,
            })
        );
    } else if out.already_present {
        println!(
            "{} is already here and verified (sha256 {})",
            out.path, out.sha256
        );
    } else {
        println!(
            "pulled {} ({:.1} MB, sha256 {} verified{}{})",
            out.path,
            out.bytes as f64 / 1e6,
            out.sha256,
            if out.resumed_from > 0 {
                format!(", resumed at {:.1} MB", out.resumed_from as f64 / 1e6)
            } else {
                String::new()
            },
            if out.evicted.is_empty() {
                String::new()
            } else {
                format!(", evicted {}", out.evicted.join(", "))
            }
        );
    }
    Ok(())
}

/// The progress bar, and a line on stderr for each retry.
struct PullDisplay<'a> {
    bar: Option<&'a indicatif::ProgressBar>,
}

impl models::PullEvents for PullDisplay<'_> {
    fn progress(&mut self, p: &models::PullProgress) {
        if let Some(b) = self.bar {
            if let Some(t) = p.total {
                b.set_length(t);
            }
            b.set_position(p.bytes_done);
        }
    }

    fn retrying(&mut self, r: &models::PullRetry) {
        let line = format!(
            "retrying in {:.0} s: {} (attempt {} of {})",
            r.wait_s.ceil(),
            r.reason,
            r.attempt,
            models::ATTEMPTS_WITHOUT_PROGRESS
        );
        match self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }
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
        "{}: loads and generates ({} params, vocab {}, trained context {}, chat template: {}, CPU backend: {}, confidence kernel: {}, load {:.0} ms, first token {:.0} ms)",
        path.display(),
        i.n_params,
        i.n_vocab,
        i.n_ctx_train,
        i.chat_template,
        i.cpu_backend,
        edgecascade::engine::local::confidence::kernel_name(),
        i.load_ms,
        r.timings.ttft_ms
    );
    Ok(())
}
