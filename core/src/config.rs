//! One serde configuration: a TOML file for the CLI, a record for the SDKs.
//!
//! Every section has defaults that work; `[local] model` is the only key a local-only run needs.
//! Unknown keys are errors, so a typo never silently falls back to a default.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct Config {
    /// The on-device model.
    pub local: LocalConfig,
    /// The remote tier; without it everything is local.
    pub remote: Option<RemoteConfig>,
    /// Routing rules beyond the built-in ones.
    pub router: RouterConfig,
    /// When to escalate.
    pub cascade: CascadeConfig,
    /// How the device's state (heat, battery, network, background) moves routing.
    pub device: DeviceConfig,
    /// The models folder.
    pub models: ModelsConfig,
    /// Remote spend caps.
    pub budget: BudgetConfig,
    /// Prices per tier.
    pub prices: PriceConfig,
    /// Where cost records go.
    pub ledger: LedgerConfig,
}

/// What to do with a prompt longer than the local context.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum ContextPolicy {
    /// Fail with `ContextOverflow` (the default: never truncate silently).
    #[default]
    Error,
    /// Drop the oldest turns (keeping the system message) and report it in the response.
    TruncateOldest,
}

/// How a slot reuses its KV cache across requests that share a prefix.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum PrefixCache {
    /// Reuse every cached token, generated ones included: a chat turn evaluates only its new
    /// tokens. llama.cpp's kernels round differently for different batch sizes, so the output
    /// can differ from a cold run's in rare near-ties (as with llama-server's `cache_prompt`).
    #[default]
    Fast,
    /// Reuse only tokens that a cold run would compute in identical batches (whole `n_batch`
    /// chunks of earlier prompts): output is bit-identical to a cold run, reuse is coarser.
    Exact,
    /// Never reuse: every request starts cold.
    Off,
}

/// The `[local]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct LocalConfig {
    /// Path to a GGUF model.
    pub model: Option<PathBuf>,
    /// Decode threads (the most the adaptive policy uses); default: all cores (with separate
    /// parallel contexts, `batching = false`: each its share).
    pub threads: Option<u32>,
    /// Adapt the decode thread count to contention from other processes (see
    /// `engine::local::governor`), and prompt processing's in proportion; off pins both.
    pub adaptive_threads: bool,
    /// Prompt-processing threads (the most, when adaptive); default: as `threads`'s default
    /// (all cores, or each separate context's share).
    pub threads_batch: Option<u32>,
    /// Context size in tokens; default: min(4096, the model's training context).
    pub n_ctx: Option<u32>,
    /// Logical batch size for prompt processing.
    pub n_batch: u32,
    /// Layers to offload to a GPU backend (needs a GPU cargo feature).
    pub n_gpu_layers: u32,
    /// Most memory the model may take, in MB (weights, KV cache, compute buffers, estimated
    /// before loading); default: the memory the system reports available (Linux and Android),
    /// no check elsewhere. A model that does not fit is refused with `insufficient_memory`.
    pub memory_limit_mb: Option<u64>,
    /// Requests served in parallel; further requests queue.
    pub parallel: u32,
    /// With `parallel` > 1: decode all running requests together in one context, one
    /// llama.cpp call per token step (continuous batching); off gives each request a context
    /// of its own.
    pub batching: bool,
    /// What to do with an over-long prompt.
    pub context_policy: ContextPolicy,
    /// KV reuse across requests.
    pub prefix_cache: PrefixCache,
    /// How long idle worker threads spin before sleeping, 0-100 (llama.cpp's `--poll`).
    pub poll: u32,
    /// A llama.cpp built-in template name ("chatml", "gemma", "llama3", ...) to use when the model
    /// has no template of its own, or to override it.
    pub chat_template: Option<String>,
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self {
            model: None,
            threads: None,
            adaptive_threads: true,
            threads_batch: None,
            n_ctx: None,
            n_batch: 512,
            n_gpu_layers: 0,
            memory_limit_mb: None,
            parallel: 1,
            batching: true,
            context_policy: ContextPolicy::Error,
            prefix_cache: PrefixCache::Fast,
            poll: 50,
            chat_template: None,
        }
    }
}

impl LocalConfig {
    /// The default decode thread count: every core. The adaptive policy steps down under
    /// contention (README, "Busy cores").
    pub fn default_threads() -> u32 {
        std::thread::available_parallelism().map_or(1, std::num::NonZero::get) as u32
    }
}

/// The `[remote]` section: an OpenAI-compatible endpoint.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct RemoteConfig {
    /// Base URL, with or without a trailing `/v1`.
    pub base_url: String,
    /// Model name sent to the endpoint.
    pub model: String,
    /// The API key itself (apps set it directly; it is never serialised, printed or logged).
    #[serde(skip_serializing)]
    pub api_key: Option<String>,
    /// The environment variable holding the API key (when `api_key` is not set).
    pub api_key_env: Option<String>,
    /// Seconds to connect.
    pub connect_timeout_s: f64,
    /// Seconds to the first byte of the response.
    pub first_byte_timeout_s: f64,
    /// Seconds allowed between stream chunks.
    pub chunk_gap_timeout_s: f64,
    /// Seconds for one attempt (one HTTP exchange).
    pub total_timeout_s: f64,
    /// Seconds for the whole remote leg, retries and their waits included: an escalation never
    /// holds the answer longer than this.
    pub deadline_s: f64,
    /// Retries on connection errors, 429 and 5xx.
    pub max_retries: u32,
    /// Extra HTTP headers.
    pub headers: std::collections::HashMap<String, String>,
    /// Allow plain http to non-loopback hosts.
    pub allow_insecure_http: bool,
    /// Stream the answer over SSE (default); false asks for one JSON response.
    pub stream: bool,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        Self {
            base_url: String::new(),
            model: String::new(),
            api_key: None,
            api_key_env: None,
            connect_timeout_s: 5.0,
            first_byte_timeout_s: 30.0,
            chunk_gap_timeout_s: 30.0,
            total_timeout_s: 300.0,
            deadline_s: 90.0,
            max_retries: 2,
            headers: std::collections::HashMap::new(),
            allow_insecure_http: false,
            stream: true,
        }
    }
}

impl std::fmt::Debug for RemoteConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteConfig")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("api_key_env", &self.api_key_env)
            .field("deadline_s", &self.deadline_s)
            .finish_non_exhaustive()
    }
}

/// Where a rule sends a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum RouteTarget {
    /// The local tier only.
    Local,
    /// The remote tier only.
    Remote,
    /// Local first, escalating when unsure.
    #[default]
    Cascade,
}

/// One routing rule: every condition given must hold; the first matching rule wins.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct RouteRule {
    /// A name for the rule, reported in `reason_detail`.
    pub name: Option<String>,
    /// Prompts of at least this many tokens.
    pub min_prompt_tokens: Option<u32>,
    /// Prompts of at most this many tokens.
    pub max_prompt_tokens: Option<u32>,
    /// The last user message contains any of these (case-insensitive).
    pub contains: Vec<String>,
    /// Where matching requests go.
    pub route: RouteTarget,
}

/// The `[router]` section. The built-in rules (private, forced, no remote tier, breaker open,
/// budget exhausted, prompt too long for the local context) always come first; these rules
/// then apply in order; `default` takes the rest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct RouterConfig {
    /// Where requests no rule matches go.
    pub default: RouteTarget,
    /// Ordered rules.
    pub rules: Vec<RouteRule>,
}

/// The `[cascade]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct CascadeConfig {
    /// Which confidence signal decides.
    pub signal: crate::signal::Signal,
    /// Escalate when the signal is on the unsure side of this.
    pub threshold: f64,
    /// Mid-stream: escalate when the mean top-token probability of the last 8 tokens falls
    /// under this (0 disables).
    pub mid_stream_floor: f64,
    /// Mid-stream: only after this many tokens.
    pub mid_stream_min_tokens: u32,
    /// The calibrated model (`signal = "calibrated"`), fitted by `edgecascade eval`.
    pub calibrated: Option<crate::signal::CalibratedModel>,
    /// The hidden-state probe file (`signal = "probe"`), fitted by `edgecascade eval
    /// --write-probe`; it must match the local model's sha256.
    #[cfg_attr(feature = "uniffi", uniffi(default))]
    pub probe: Option<PathBuf>,
    /// For answers decoded under a grammar (a JSON schema, or a forced tool call): the signal
    /// that decides instead of `signal`. Unset: `mean_entropy`, the most consistent signal
    /// `eval` measured on such answers. `max_forced` (how much more probable the model's own
    /// top token was than the token the grammar let through) and the other raw signals
    /// (`mean_logprob`, `min_prob`, `p10_prob`) can be set; the calibrated ones cannot (they
    /// are fitted on free text).
    #[cfg_attr(feature = "uniffi", uniffi(default))]
    pub structured_signal: Option<crate::signal::Signal>,
    /// Its threshold. Unset: 0.6 for `mean_entropy` ([`crate::signal::STRUCTURED_DEFAULT`],
    /// measured by `edgecascade eval` on tool calls and JSON extraction; `eval --write-config`
    /// fits your own); with another `structured_signal` it must be set.
    #[cfg_attr(feature = "uniffi", uniffi(default))]
    pub structured_threshold: Option<f64>,
}

impl Default for CascadeConfig {
    fn default() -> Self {
        Self {
            signal: crate::signal::Signal::MeanLogprob,
            threshold: -1.0,
            mid_stream_floor: 0.4,
            mid_stream_min_tokens: 8,
            calibrated: None,
            probe: None,
            structured_signal: None,
            structured_threshold: None,
        }
    }
}

/// The `[device]` section: how the state an app reports through `Runtime::set_device_state`
/// moves routing. Offline keeps everything local and the background sends work to the remote
/// tier whatever these say; the shifts move `[cascade] threshold` in the signal's own units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct DeviceConfig {
    /// Serious or critical heat, low-power mode or a low battery: move the threshold this far
    /// towards escalating (0 turns it off).
    pub hot_threshold_shift: f64,
    /// A metered network: move the threshold this far towards keeping the local answer (0 turns
    /// it off).
    pub metered_threshold_shift: f64,
    /// A battery at or below this charge (0 to 1), not charging, counts as low power.
    pub low_battery: f64,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        Self {
            hot_threshold_shift: 0.15,
            metered_threshold_shift: 0.15,
            low_battery: 0.15,
        }
    }
}

/// The `[models]` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct ModelsConfig {
    /// Most gigabytes (1e9 bytes) the models folder may hold; a pull past it evicts the least
    /// recently used models other than `[local] model`, or refuses. None: no limit.
    pub quota_gb: Option<f64>,
}

impl ModelsConfig {
    /// The quota in bytes.
    pub fn quota_bytes(&self) -> Option<u64> {
        self.quota_gb.map(|g| (g * 1e9) as u64)
    }
}

/// The `[budget]` section: remote spend caps in USD.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct BudgetConfig {
    /// Per UTC day.
    pub daily_usd: Option<f64>,
    /// Per UTC month.
    pub monthly_usd: Option<f64>,
    /// Per request.
    pub per_request_usd: Option<f64>,
}

/// The `[prices]` section, USD per 1k tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct PriceConfig {
    /// Local tier, all tokens.
    pub local_per_1k: f64,
    /// Remote tier, prompt tokens.
    pub remote_input_per_1k: f64,
    /// Remote tier, completion tokens.
    pub remote_output_per_1k: f64,
    /// Derive the local cost from energy instead: the device's power draw while generating, W.
    pub local_watts: Option<f64>,
    /// Electricity price, USD per kWh (with `local_watts`).
    pub electricity_usd_per_kwh: f64,
    /// Amortised hardware cost while generating, USD per hour (with `local_watts`).
    pub hardware_usd_per_hour: f64,
}

impl Default for PriceConfig {
    fn default() -> Self {
        Self {
            local_per_1k: 0.0002,
            remote_input_per_1k: 0.0005,
            remote_output_per_1k: 0.0015,
            local_watts: None,
            electricity_usd_per_kwh: 0.15,
            hardware_usd_per_hour: 0.0,
        }
    }
}

/// The `[ledger]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[derive(Default)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct LedgerConfig {
    /// The JSONL file.
    pub path: Option<PathBuf>,
    /// Store prompt and answer text (off by default).
    pub store_prompts: bool,
}

impl Config {
    /// Reads a TOML config file. Relative model and ledger paths are resolved against the
    /// file's folder.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source: source.into(),
        })?;
        let mut cfg = Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &mut Option<PathBuf>| {
            if let Some(p) = p.as_mut() {
                if p.is_relative() && !p.exists() {
                    *p = base.join(&*p);
                }
            }
        };
        resolve(&mut cfg.local.model);
        resolve(&mut cfg.ledger.path);
        resolve(&mut cfg.cascade.probe);
        Ok(cfg)
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<string>"),
            message: e.message().to_owned(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks ranges and contradictions.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.local;
        if l.parallel == 0 {
            return Err(ConfigError::Invalid(
                "local.parallel must be at least 1".into(),
            ));
        }
        if l.n_batch == 0 {
            return Err(ConfigError::Invalid(
                "local.n_batch must be at least 1".into(),
            ));
        }
        // One batched step holds a token of every generating request: fewer rows than requests
        // failed every request in the batch on every step.
        if l.batching && l.parallel > 1 && l.n_batch < l.parallel {
            return Err(ConfigError::Invalid(format!(
                "local.n_batch ({}) must be at least local.parallel ({}) with batching: one step decodes a token of every running request",
                l.n_batch, l.parallel
            )));
        }
        if l.threads == Some(0) || l.threads_batch == Some(0) {
            return Err(ConfigError::Invalid(
                "local.threads must be at least 1".into(),
            ));
        }
        if l.poll > 100 {
            return Err(ConfigError::Invalid("local.poll must be 0-100".into()));
        }
        if l.n_ctx.is_some_and(|n| n < 16) {
            return Err(ConfigError::Invalid(
                "local.n_ctx must be at least 16".into(),
            ));
        }
        let p = &self.prices;
        let b = &self.budget;
        let mut amounts = vec![
            ("prices.local_per_1k", Some(p.local_per_1k)),
            ("prices.remote_input_per_1k", Some(p.remote_input_per_1k)),
            ("prices.remote_output_per_1k", Some(p.remote_output_per_1k)),
            ("prices.local_watts", p.local_watts),
            (
                "prices.electricity_usd_per_kwh",
                Some(p.electricity_usd_per_kwh),
            ),
            (
                "prices.hardware_usd_per_hour",
                Some(p.hardware_usd_per_hour),
            ),
            ("budget.daily_usd", b.daily_usd),
            ("budget.monthly_usd", b.monthly_usd),
            ("budget.per_request_usd", b.per_request_usd),
        ];
        let c = &self.cascade;
        amounts.push(("cascade.mid_stream_floor", Some(c.mid_stream_floor)));
        let d = &self.device;
        amounts.push(("device.hot_threshold_shift", Some(d.hot_threshold_shift)));
        amounts.push((
            "device.metered_threshold_shift",
            Some(d.metered_threshold_shift),
        ));
        amounts.push(("device.low_battery", Some(d.low_battery)));
        amounts.push(("models.quota_gb", self.models.quota_gb));
        for (name, v) in amounts {
            if let Some(v) = v {
                if !v.is_finite() || v < 0.0 {
                    return Err(ConfigError::Invalid(format!(
                        "{name} must be a finite non-negative number, got {v}"
                    )));
                }
            }
        }
        if !c.threshold.is_finite() {
            return Err(ConfigError::Invalid(format!(
                "cascade.threshold must be a finite number, got {}",
                c.threshold
            )));
        }
        if d.low_battery > 1.0 {
            return Err(ConfigError::Invalid(format!(
                "device.low_battery is a fraction of a charge (0 to 1), got {}",
                d.low_battery
            )));
        }
        if c.mid_stream_floor > 1.0 {
            return Err(ConfigError::Invalid(format!(
                "cascade.mid_stream_floor is a probability (0 to 1), got {}",
                c.mid_stream_floor
            )));
        }
        if let Some(r) = &self.remote {
            for (name, v) in [
                ("remote.connect_timeout_s", r.connect_timeout_s),
                ("remote.first_byte_timeout_s", r.first_byte_timeout_s),
                ("remote.chunk_gap_timeout_s", r.chunk_gap_timeout_s),
                ("remote.total_timeout_s", r.total_timeout_s),
                ("remote.deadline_s", r.deadline_s),
            ] {
                // Finite and at most a day: Duration::from_secs_f64 panics on overflow.
                if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
                    return Err(ConfigError::Invalid(format!(
                        "{name} must be a number of seconds above 0 and at most 86400, got {v}"
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_has_working_defaults() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.local.parallel, 1);
        assert!(c.remote.is_none());
        assert!(
            c.prices.local_per_1k > 0.0,
            "local price must never be zero silently"
        );
    }

    #[test]
    fn design_example_parses() {
        let c = Config::from_toml(
            r#"
[local]
model = "models/smollm2-135m-instruct-q4_1.gguf"
threads = 2
n_ctx = 4096
n_gpu_layers = 0
context_policy = "truncate_oldest"
[remote]
base_url = "http://127.0.0.1:8081"
model = "qwen2.5-coder-1.5b-instruct"
api_key_env = "EDGECASCADE_API_KEY"
[cascade]
signal = "mean_logprob"
threshold = -1.0
mid_stream_floor = 0.05
mid_stream_min_tokens = 8
[budget]
daily_usd = 5.0
monthly_usd = 100.0
per_request_usd = 0.05
[prices]
local_per_1k = 0.0002
remote_input_per_1k = 0.0005
remote_output_per_1k = 0.0015
[ledger]
path = "edgecascade-ledger.jsonl"
store_prompts = false
"#,
        )
        .unwrap();
        assert_eq!(c.local.context_policy, ContextPolicy::TruncateOldest);
        assert_eq!(c.remote.unwrap().model, "qwen2.5-coder-1.5b-instruct");
    }

    #[test]
    fn typos_and_bad_values_are_errors() {
        assert!(Config::from_toml("[local]\nthreadz = 2").is_err());
        assert!(Config::from_toml("[local]\nparallel = 0").is_err());
        let e = Config::from_toml("[local]\nparallel = 4\nn_batch = 3").unwrap_err();
        assert!(
            e.to_string()
                .contains("n_batch (3) must be at least local.parallel (4)"),
            "{e}"
        );
        assert!(Config::from_toml("[local]\nparallel = 4\nn_batch = 4").is_ok());
        // Separate contexts each decode one request.
        assert!(Config::from_toml("[local]\nparallel = 4\nn_batch = 1\nbatching = false").is_ok());
        assert!(Config::from_toml("[prices]\nlocal_per_1k = -1.0").is_err());
    }

    #[test]
    fn every_number_is_checked_and_named() {
        for (toml, key) in [
            ("[budget]\ndaily_usd = nan", "budget.daily_usd"),
            ("[budget]\nmonthly_usd = inf", "budget.monthly_usd"),
            ("[budget]\nper_request_usd = -0.5", "budget.per_request_usd"),
            ("[cascade]\nthreshold = nan", "cascade.threshold"),
            ("[cascade]\nmid_stream_floor = -1.0", "cascade.mid_stream_floor"),
            ("[cascade]\nmid_stream_floor = 2.0", "cascade.mid_stream_floor"),
            ("[device]\nhot_threshold_shift = -0.1", "device.hot_threshold_shift"),
            ("[device]\nmetered_threshold_shift = nan", "device.metered_threshold_shift"),
            ("[device]\nlow_battery = 1.5", "device.low_battery"),
            ("[models]\nquota_gb = -1", "models.quota_gb"),
            ("[prices]\nlocal_watts = inf", "prices.local_watts"),
            (
                "[remote]\nbase_url = \"http://127.0.0.1:1\"\nmodel = \"m\"\ntotal_timeout_s = inf",
                "remote.total_timeout_s",
            ),
            (
                "[remote]\nbase_url = \"http://127.0.0.1:1\"\nmodel = \"m\"\ndeadline_s = 0.0",
                "remote.deadline_s",
            ),
            (
                "[remote]\nbase_url = \"http://127.0.0.1:1\"\nmodel = \"m\"\nconnect_timeout_s = 1e300",
                "remote.connect_timeout_s",
            ),
        ] {
            let e = Config::from_toml(toml).unwrap_err().to_string();
            assert!(e.contains(key), "{toml}: {e}");
        }
    }

    #[test]
    fn the_api_key_is_never_printed_or_serialised() {
        let c = Config::from_toml(
            "[remote]\nbase_url = \"http://127.0.0.1:1\"\nmodel = \"m\"\napi_key = \"sk-secret-123\"",
        )
        .unwrap();
        assert_eq!(
            c.remote.as_ref().unwrap().api_key.as_deref(),
            Some("sk-secret-123")
        );
        assert!(!format!("{c:?}").contains("sk-secret-123"));
        assert!(!toml::to_string(&c).unwrap().contains("sk-secret-123"));
    }
}
