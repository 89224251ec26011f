//! `edgecascade eval`: runs a labelled JSONL set through both tiers, then measures what each
//! confidence signal (and a calibrated model over several) is worth as a cascade threshold.

mod collect;
mod probe;
mod report;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use clap::Args as ClapArgs;
use edgecascade::config::RemoteConfig;
use edgecascade::engine::remote::RemoteEngine;
use edgecascade::eval::{default_max_tokens, Item, Kind, Prompts};
use edgecascade::{ChatRequest, Config, LocalEngine, ModelInfo};
use sha2::{Digest, Sha256};

use crate::common::{load_config, load_runtime, Interrupt, ModelArgs};
use crate::Failure;

/// `eval` flags.
#[derive(ClapArgs)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Labelled JSONL file (repeatable: several sets make one mixed evaluation).
    #[arg(long, required = true, value_name = "FILE")]
    dataset: Vec<PathBuf>,
    /// Items per dataset: a seeded sample (stable across runs and machines).
    #[arg(long)]
    limit: Option<usize>,
    /// Seed for the sample and the cross-validation folds.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Remote endpoint; overrides [remote] base_url.
    #[arg(long, value_name = "URL")]
    remote_url: Option<String>,
    /// Remote model name; overrides [remote] model.
    #[arg(long)]
    remote_model: Option<String>,
    /// Prompt templates per kind (TOML with keys choice, number, exact, yesno, system).
    #[arg(long, value_name = "FILE")]
    prompts: Option<PathBuf>,
    /// Most tokens per answer (default: by kind, 8 to 32).
    #[arg(long)]
    max_tokens: Option<u32>,
    /// Where results are cached.
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Recommend the cheapest threshold reaching this share of the large model's accuracy.
    #[arg(long, default_value_t = 0.95, conflicts_with = "max_escalation")]
    target_quality: f64,
    /// Instead: recommend the most accurate threshold escalating at most this share.
    #[arg(long)]
    max_escalation: Option<f64>,
    /// Cross-validation folds for the calibrated model's held-out figures.
    #[arg(long, default_value_t = 5)]
    folds: usize,
    /// Write the recommended [cascade] section into this config file (created if missing).
    #[arg(long, value_name = "FILE")]
    write_config: Option<PathBuf>,
    /// Plot accuracy against share escalated (SVG).
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// An HTML report with the table and the plot.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Per-item results (JSONL): answers, correctness and signals.
    #[arg(long, value_name = "FILE")]
    details: Option<PathBuf>,
    /// How the local tier answers choice and yes/no items: `generate` a reply (as apps do),
    /// `score` each option's likelihood ("B. text", after the same prompt) and take the best,
    /// or `cloze`: the question alone, each choice's text as the continuation.
    #[arg(long, default_value = "generate", value_parser = ["generate", "score", "cloze"])]
    local_answers: String,
    /// Also fit and measure the hidden-state probe (reads the local model's final hidden
    /// states: generated answers only).
    #[arg(long)]
    probe: bool,
    /// Write the probe, fitted on every item, to this JSON file (implies --probe). With
    /// --write-config, `[cascade]` then points at it (`signal = "probe"`).
    #[arg(long, value_name = "FILE")]
    write_probe: Option<PathBuf>,
    /// Fit the probe without per-task terms.
    #[arg(long)]
    no_task_terms: bool,
    /// Also measure the probe's learning curve (implies --probe): its held-out figures when
    /// each outer fold trains on a quarter, a half and three quarters of its items, against
    /// all of them. A curve still rising says more items would help.
    #[arg(long)]
    probe_curve: bool,
    /// Write what the probe is fitted on (implies --probe), one JSON line per item: its id,
    /// task, group, whether each tier was right, the scalar features before and after
    /// generation and both hidden states. For fitting other routers outside `eval`.
    #[arg(long, value_name = "FILE")]
    probe_data: Option<PathBuf>,
    /// Print one JSON object (see the CLI contract).
    #[arg(long)]
    json: bool,
}

impl Args {
    /// The probe is fitted.
    fn probe(&self) -> bool {
        self.probe || self.write_probe.is_some() || self.probe_curve || self.probe_data.is_some()
    }
}

/// The answer budget of a structured item (a JSON object or a call).
const STRUCTURED_MAX_TOKENS: u32 = 192;

/// An item with its source, ready to run.
pub struct Prepared {
    /// The item.
    pub item: Item,
    /// The dataset's file stem.
    pub dataset: String,
    /// The request both tiers get.
    pub request: ChatRequest,
}

/// Whether each structured item's answers are valid (parse, and match the schema or the
/// tools), checked with the local model's tokenizer and grammars; `None` for other items.
pub struct Validity {
    /// The local answers.
    pub local: Vec<Option<bool>>,
    /// The remote answers.
    pub remote: Vec<Option<bool>>,
    /// Structured local answers cut short by `max_tokens` (closed early by the budget, or left
    /// incomplete): the runtime's cascade escalates them whatever their confidence.
    pub cut: Vec<bool>,
}

impl Validity {
    /// Whether the cascade escalates item `i`'s local answer whatever its confidence.
    pub fn escalates(&self, i: usize) -> bool {
        self.local[i] == Some(false) || self.cut[i]
    }
}

fn load_items(path: &Path) -> Result<Vec<Item>, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::Runtime(format!("dataset {}: {e}", path.display())))?;
    let mut items = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let item: Item = serde_json::from_str(line)
            .map_err(|e| Failure::Runtime(format!("dataset {}:{}: {e}", path.display(), n + 1)))?;
        item.validate()
            .map_err(|e| Failure::Runtime(format!("dataset {}:{}: {e}", path.display(), n + 1)))?;
        items.push(item);
    }
    if items.is_empty() {
        return Err(Failure::Runtime(format!(
            "dataset {}: no items",
            path.display()
        )));
    }
    Ok(items)
}

/// A stable seeded sample: items ordered by a hash of (seed, id).
fn sample(mut items: Vec<Item>, seed: u64, limit: Option<usize>) -> Vec<Item> {
    if let Some(n) = limit {
        let h = |id: &str| Sha256::digest(format!("{seed}:{id}").as_bytes());
        items.sort_by_cached_key(|i| h(&i.id));
        items.truncate(n);
    }
    items
}

fn default_cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"))
        .join("edgecascade/eval")
}

/// Runs `eval`: checks the flags, sends every item through both tiers (cached) and reports
/// what each signal is worth.
pub fn run(args: Args) -> Result<(), Failure> {
    check_args(&args)?;
    let prompts = load_prompts(&args)?;
    let (cfg, remote_cfg) = eval_config(&args)?;
    let remote = RemoteEngine::new(&remote_cfg)?;
    let prepared = prepare(&args, &prompts)?;

    let quiet = args.json;
    let interrupt = Interrupt::install();
    let rt = load_runtime(cfg.clone(), quiet)?;
    let engine = crate::common::local_engine(&rt)?;
    let info = engine.info().clone();
    // The report names the model by the first word of `general.name`.
    let small_name = info.name.split(' ').next().unwrap_or_default().to_owned();
    let model_id = model_id(&engine, &info);
    let cache_dir = args.cache_dir.clone().unwrap_or_else(default_cache_dir);
    let mut cache = collect::Cache::open(&cache_dir)?;
    let reqs: Vec<ChatRequest> = prepared.iter().map(|p| p.request.clone()).collect();
    let options = scoring_options(&args, &prepared);
    interrupt.busy.store(true, Ordering::SeqCst);
    let local = collect::run_local(
        &mut cache,
        &engine,
        &model_id,
        &reqs,
        &options,
        &interrupt.cancel,
        quiet,
        args.probe(),
    )?;
    // Reread: another eval sharing the cache may have finished remote items meanwhile.
    let mut cache = collect::Cache::open(&cache_dir)?;
    let remote_out = collect::run_remote(&mut cache, &remote, &reqs, &interrupt.cancel, quiet)?;
    interrupt.busy.store(false, Ordering::SeqCst);
    let validity = check_validity(&engine, &prepared, &local, &remote_out);
    drop(engine);
    drop(rt);

    report::report(
        &args,
        &cfg,
        &report::Collected {
            items: &prepared,
            local: &local,
            remote: &remote_out,
            validity: &validity,
            small_name: &small_name,
            large_name: &remote_cfg.model,
            model_path: &info.path,
        },
    )
}

/// Rejects flags out of range or at odds with each other.
fn check_args(args: &Args) -> Result<(), Failure> {
    if !(0.0..=1.0).contains(&args.target_quality) {
        return Err(Failure::Usage(
            "--target-quality must be between 0 and 1".into(),
        ));
    }
    if args
        .max_escalation
        .is_some_and(|m| !(0.0..=1.0).contains(&m))
    {
        return Err(Failure::Usage(
            "--max-escalation must be between 0 and 1".into(),
        ));
    }
    if args.folds < 2 {
        return Err(Failure::Usage("--folds must be 2 or more".into()));
    }
    if args.probe() && args.local_answers != "generate" {
        return Err(Failure::Usage(
            "--probe reads the hidden states of generated answers: use --local-answers generate"
                .into(),
        ));
    }
    Ok(())
}

/// The prompt templates of `--prompts`, else the defaults.
fn load_prompts(args: &Args) -> Result<Prompts, Failure> {
    Ok(match &args.prompts {
        Some(p) => toml::from_str(
            &std::fs::read_to_string(p)
                .map_err(|e| Failure::Runtime(format!("prompts {}: {e}", p.display())))?,
        )
        .map_err(|e| Failure::Runtime(format!("prompts {}: {e}", p.display())))?,
        None => Prompts::default(),
    })
}

/// The config with the flags' overrides, and its remote tier (which `eval` needs).
fn eval_config(args: &Args) -> Result<(Config, RemoteConfig), Failure> {
    let mut cfg = load_config(&args.model)?;
    if args.model.prefix_cache.is_none() {
        // Reproducible: every item's answer equals a cold run's.
        cfg.local.prefix_cache = edgecascade::config::PrefixCache::Exact;
    }
    if let Some(url) = &args.remote_url {
        let r = cfg.remote.get_or_insert_with(Default::default);
        r.base_url.clone_from(url);
    }
    if let Some(m) = &args.remote_model {
        let r = cfg.remote.get_or_insert_with(Default::default);
        r.model.clone_from(m);
    }
    let Some(remote_cfg) = cfg.remote.clone() else {
        return Err(Failure::Usage(
            "eval needs a remote tier: set [remote] in the config, or pass --remote-url".into(),
        ));
    };
    Ok((cfg, remote_cfg))
}

/// Every dataset's (sampled) items with the request both tiers get.
fn prepare(args: &Args, prompts: &Prompts) -> Result<Vec<Prepared>, Failure> {
    let mut prepared = Vec::new();
    for path in &args.dataset {
        let name = path
            .file_stem()
            .map_or_else(|| "dataset".into(), |s| s.to_string_lossy().into_owned());
        for item in sample(load_items(path)?, args.seed, args.limit) {
            let request = ChatRequest {
                messages: prompts.messages(&item),
                max_tokens: args.max_tokens.unwrap_or_else(|| {
                    if item.structured().is_some() {
                        STRUCTURED_MAX_TOKENS
                    } else {
                        default_max_tokens(item.kind())
                    }
                }),
                response_format: item.response_format.clone().unwrap_or_default(),
                tools: item.tools.clone(),
                tool_choice: item.tool_choice.clone().unwrap_or_default(),
                ..ChatRequest::default()
            };
            prepared.push(Prepared {
                item,
                dataset: name.clone(),
                request,
            });
        }
    }
    Ok(prepared)
}

/// The cache's key for the local model: its name, size and file.
fn model_id(engine: &LocalEngine, info: &ModelInfo) -> String {
    let mut model_id = format!(
        "{} {} {}",
        info.name,
        info.size_bytes,
        info.path.file_name().unwrap_or_default().to_string_lossy()
    );
    // Hidden states read from another tensor (an experiment) are cached apart.
    if engine.hidden_tensor() != edgecascade::engine::local::FINAL_HIDDEN_TENSOR {
        model_id.push_str(&format!(" hidden={}", engine.hidden_tensor()));
    }
    model_id
}

/// Per item, the options the local tier scores instead of generating (`--local-answers score`
/// or `cloze`, choice and yes/no items without their own messages); `None` to generate.
fn scoring_options(args: &Args, prepared: &[Prepared]) -> Vec<Option<collect::Scoring>> {
    prepared
        .iter()
        .map(|p| {
            let i = &p.item;
            let cloze = args.local_answers == "cloze";
            let scoring = |options: Vec<String>, messages: Vec<edgecascade::ChatMessage>| {
                Some(collect::Scoring { messages, options })
            };
            (args.local_answers != "generate" && i.messages.is_none())
                .then(|| match i.kind() {
                    Kind::Choice if cloze => scoring(
                        i.choices.clone(),
                        vec![edgecascade::ChatMessage::user(
                            i.question.clone().unwrap_or_default(),
                        )],
                    ),
                    Kind::Choice => scoring(i.lettered_choices(), p.request.messages.clone()),
                    Kind::YesNo => {
                        scoring(vec!["Yes".into(), "No".into()], p.request.messages.clone())
                    }
                    Kind::Number | Kind::Exact => None,
                })
                .flatten()
        })
        .collect()
}

/// Whether each tier's answer to each structured item is valid, and which local ones
/// `max_tokens` cut short.
fn check_validity(
    engine: &LocalEngine,
    prepared: &[Prepared],
    local: &[collect::LocalResult],
    remote: &[collect::RemoteResult],
) -> Validity {
    Validity {
        local: prepared
            .iter()
            .zip(local)
            .map(|(p, l)| is_valid(engine, p, &l.text, None))
            .collect(),
        remote: prepared
            .iter()
            .zip(remote)
            .map(|(p, r)| is_valid(engine, p, &r.text, Some(&r.tool_calls)))
            .collect(),
        cut: prepared
            .iter()
            .zip(local)
            .map(|(p, l)| p.item.structured().is_some() && l.finish == "length")
            .collect(),
    }
}

/// Whether one answer to a structured item parses and fits its schema or tools (`calls`: the
/// remote tier's parsed calls, else they are parsed from `text`); `None` for other items.
fn is_valid(
    engine: &LocalEngine,
    p: &Prepared,
    text: &str,
    calls: Option<&[edgecascade::ToolCall]>,
) -> Option<bool> {
    p.item.structured().map(|kind| match kind {
        edgecascade::eval::Structured::Call => {
            let parsed;
            let calls = if let Some(c) = calls {
                c
            } else {
                parsed = edgecascade::tools::parse(text, "eval");
                if parsed.error.is_some() {
                    return false;
                }
                &parsed.calls
            };
            !calls.is_empty() && engine.check_calls(&p.request, calls).is_ok()
        }
        edgecascade::eval::Structured::Json => {
            let t = edgecascade::eval::structured::parse_json(text)
                .map_or_else(|| text.to_owned(), |v| v.to_string());
            engine.check_format(&p.request.response_format, &t).is_ok()
        }
    })
}
