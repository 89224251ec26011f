//! What the subcommands share: config loading with flag overrides, the runtime with a load
//! progress bar, and Ctrl-C handling.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Args as ClapArgs;
use edgecascade::{Config, Runtime};
use indicatif::{ProgressBar, ProgressStyle};

use crate::Failure;

/// The default model, fetched by `scripts/fetch_models.py smollm2`.
pub const DEFAULT_MODEL: &str = "smollm2-135m-instruct-q4_1.gguf";

/// Flags every model-running subcommand takes.
#[derive(ClapArgs, Clone, Default)]
pub struct ModelArgs {
    /// Config file (TOML). Default: ./edgecascade.toml if it exists.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// GGUF model; overrides [local] model.
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Decode threads; overrides [local] threads.
    #[arg(long)]
    pub threads: Option<u32>,
    /// Context size in tokens; overrides [local] `n_ctx`.
    #[arg(long)]
    pub n_ctx: Option<u32>,
    /// KV reuse across turns: fast, exact or off; overrides [local] `prefix_cache`.
    #[arg(long, value_parser = ["fast", "exact", "off"])]
    pub prefix_cache: Option<String>,
}

/// Where models are cached: $`EDGECASCADE_MODELS`, else ./models.
pub fn models_dir() -> PathBuf {
    std::env::var_os("EDGECASCADE_MODELS").map_or_else(|| PathBuf::from("models"), PathBuf::from)
}

/// The config file alone: `--config`, else ./edgecascade.toml, else defaults.
pub fn load_config_file(args: &ModelArgs) -> Result<Config, Failure> {
    Ok(match &args.config {
        Some(p) => Config::from_file(p)?,
        None if Path::new("edgecascade.toml").exists() => {
            Config::from_file(Path::new("edgecascade.toml"))?
        }
        None => Config::default(),
    })
}

/// The desktop binary's ledger: `[ledger] path`, else $EDGECASCADE_LEDGER, else
/// $XDG_DATA_HOME (or ~/.local/share)/edgecascade/ledger.jsonl.
pub fn ledger_path(cfg: &Config) -> PathBuf {
    if let Some(p) = &cfg.ledger.path {
        return p.clone();
    }
    if let Some(p) = std::env::var_os("EDGECASCADE_LEDGER") {
        return PathBuf::from(p);
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")));
    data.unwrap_or_else(|| PathBuf::from("."))
        .join("edgecascade/ledger.jsonl")
}

/// The config file, then the flags on top.
pub fn load_config(args: &ModelArgs) -> Result<Config, Failure> {
    let mut cfg = load_config_file(args)?;
    cfg.ledger.path = Some(ledger_path(&cfg));
    if let Some(m) = &args.model {
        cfg.local.model = Some(m.clone());
    }
    if let Some(t) = args.threads {
        cfg.local.threads = Some(t);
    }
    if let Some(n) = args.n_ctx {
        cfg.local.n_ctx = Some(n);
    }
    if let Some(p) = &args.prefix_cache {
        cfg.local.prefix_cache = match p.as_str() {
            "exact" => edgecascade::config::PrefixCache::Exact,
            "off" => edgecascade::config::PrefixCache::Off,
            _ => edgecascade::config::PrefixCache::Fast,
        };
    }
    if cfg.local.model.is_none() {
        let default = models_dir().join(DEFAULT_MODEL);
        if default.exists() {
            cfg.local.model = Some(default);
        } else {
            return Err(Failure::Runtime(format!(
                "no model: pass --model PATH, set [local] model, or fetch the default with scripts/fetch_models.py ({} not found)",
                default.display()
            )));
        }
    }
    cfg.validate()?;
    Ok(cfg)
}

/// The local engine, or the error a model-only command gives without one.
pub fn local_engine(rt: &Runtime) -> Result<std::sync::Arc<edgecascade::LocalEngine>, Failure> {
    rt.local_engine().ok_or_else(|| {
        Failure::Runtime("this command needs a local model: pass --model PATH".into())
    })
}

/// Loads the runtime, with a progress bar on a terminal.
pub fn load_runtime(cfg: Config, quiet: bool) -> Result<Runtime, Failure> {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(Some(1000), indicatif::ProgressDrawTarget::stderr())
    };
    bar.set_style(
        ProgressStyle::with_template("loading {msg} {bar:30} {percent:>3}%")
            .expect("valid template"),
    );
    let name = cfg
        .local
        .model
        .as_ref()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    bar.set_message(name);
    bar.enable_steady_tick(Duration::from_millis(100));
    let b = bar.clone();
    let rt = Runtime::with_progress(
        cfg,
        Some(Box::new(move |p| b.set_position((p * 1000.0) as u64))),
    );
    bar.finish_and_clear();
    Ok(rt?)
}

/// Ctrl-C handling: while `busy` is set, Ctrl-C sets `cancel`; otherwise it exits with 130.
pub struct Interrupt {
    /// Set by Ctrl-C during work.
    pub cancel: Arc<AtomicBool>,
    /// Set while work is running.
    pub busy: Arc<AtomicBool>,
}

impl Interrupt {
    /// Installs the handler.
    pub fn install() -> Self {
        let cancel = Arc::new(AtomicBool::new(false));
        let busy = Arc::new(AtomicBool::new(false));
        let (c, b) = (Arc::clone(&cancel), Arc::clone(&busy));
        let _ = ctrlc::set_handler(move || {
            if b.load(Ordering::SeqCst) {
                c.store(true, Ordering::SeqCst);
            } else {
                eprintln!();
                std::process::exit(130);
            }
        });
        Self { cancel, busy }
    }
}
