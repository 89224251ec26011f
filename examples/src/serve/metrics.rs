//! `GET /metrics` in Prometheus text format.

use std::sync::atomic::AtomicU64;

use edgecascade::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierLabels {
    pub tier: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub tier: String,
    pub kind: String,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub tokens: Family<TokenLabels, Counter>,
    pub cost_usd: Family<TierLabels, Counter<f64, AtomicU64>>,
    pub all_remote_usd: Counter<f64, AtomicU64>,
    pub escalations: Counter,
    pub ttft: Histogram,
    pub decode_rate: Histogram,
    pub in_flight: Gauge,
    pub rejected: Counter,
    pub cancelled: Counter,
    pub stalled: Counter,
    pub refused_connections: Counter,
    batch_steps: Counter,
    batch_tokens: Counter,
    batch_sampled: Counter,
    /// The engine's batch counters as last copied into the three above.
    batch_seen: std::sync::Mutex<edgecascade::engine::local::BatchStats>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("edgecascade");
        let requests = Family::<RequestLabels, Counter>::default();
        let tokens = Family::<TokenLabels, Counter>::default();
        let cost_usd = Family::<TierLabels, Counter<f64, AtomicU64>>::default();
        let all_remote_usd = Counter::<f64, AtomicU64>::default();
        let escalations = Counter::default();
        let ttft = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        let decode_rate = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        let in_flight = Gauge::default();
        let rejected = Counter::default();
        let cancelled = Counter::default();
        let stalled = Counter::default();
        let refused_connections = Counter::default();
        let (batch_steps, batch_tokens, batch_sampled) =
            (Counter::default(), Counter::default(), Counter::default());
        registry.register(
            "batch_steps",
            "llama.cpp decode calls of the continuous batch",
            batch_steps.clone(),
        );
        registry.register(
            "batch_tokens",
            "Tokens evaluated by the continuous batch (prompt chunks and generated tokens)",
            batch_tokens.clone(),
        );
        registry.register(
            "batch_sampled_tokens",
            "Tokens sampled from the continuous batch; divided by batch_steps, the mean number \
             of requests decoded together",
            batch_sampled.clone(),
        );
        registry.register(
            "stalled_streams",
            "Streams cancelled because the client stopped reading for --write-timeout",
            stalled.clone(),
        );
        registry.register(
            "refused_connections",
            "Connections closed on accept because --max-connections were open",
            refused_connections.clone(),
        );
        registry.register(
            "requests",
            "Chat completion requests by route and HTTP status",
            requests.clone(),
        );
        registry.register(
            "tokens",
            "Tokens by tier and kind (prompt, completion)",
            tokens.clone(),
        );
        registry.register("cost_usd", "Spend in USD by tier", cost_usd.clone());
        registry.register(
            "all_remote_usd",
            "What the same requests would have cost all-remote",
            all_remote_usd.clone(),
        );
        registry.register(
            "escalations",
            "Requests escalated from local to remote",
            escalations.clone(),
        );
        registry.register("ttft_seconds", "Time to first token", ttft.clone());
        registry.register(
            "decode_tokens_per_second",
            "Decode rate per request",
            decode_rate.clone(),
        );
        registry.register(
            "in_flight",
            "Requests admitted and not finished (running or queued)",
            in_flight.clone(),
        );
        registry.register(
            "rejected",
            "Requests refused with 503 because the queue was full",
            rejected.clone(),
        );
        registry.register(
            "cancelled",
            "Generations stopped early because the client went away or the server shut down",
            cancelled.clone(),
        );
        Self {
            registry,
            requests,
            tokens,
            cost_usd,
            all_remote_usd,
            escalations,
            ttft,
            decode_rate,
            in_flight,
            rejected,
            cancelled,
            stalled,
            refused_connections,
            batch_steps,
            batch_tokens,
            batch_sampled,
            batch_seen: std::sync::Mutex::default(),
        }
    }

    /// Brings the batch counters up to the engine's.
    pub fn batch(&self, now: edgecascade::engine::local::BatchStats) {
        if let Ok(mut seen) = self.batch_seen.lock() {
            self.batch_steps
                .inc_by(now.steps.saturating_sub(seen.steps));
            self.batch_tokens
                .inc_by(now.tokens.saturating_sub(seen.tokens));
            self.batch_sampled
                .inc_by(now.sampled.saturating_sub(seen.sampled));
            *seen = now;
        }
    }

    pub fn request(&self, route: &str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.into(),
                status: status.to_string(),
            })
            .inc();
    }

    pub fn response(&self, r: &Response) {
        self.request(r.route.name(), 200);
        for (tier, u) in [("local", r.usage.local), ("remote", r.usage.remote)] {
            if let Some(u) = u {
                let t = |kind: &str| TokenLabels {
                    tier: tier.into(),
                    kind: kind.into(),
                };
                self.tokens
                    .get_or_create(&t("prompt"))
                    .inc_by(u64::from(u.prompt_tokens));
                self.tokens
                    .get_or_create(&t("completion"))
                    .inc_by(u64::from(u.completion_tokens));
            }
        }
        self.cost_usd
            .get_or_create(&TierLabels {
                tier: "local".into(),
            })
            .inc_by(r.cost.local_usd);
        self.cost_usd
            .get_or_create(&TierLabels {
                tier: "remote".into(),
            })
            .inc_by(r.cost.remote_usd);
        self.all_remote_usd.inc_by(r.cost.all_remote_usd);
        if r.route == edgecascade::Route::Escalated {
            self.escalations.inc();
        }
        if r.timings.ttft_ms > 0.0 {
            self.ttft.observe(r.timings.ttft_ms / 1e3);
        }
        if r.timings.decode_tok_s > 0.0 {
            self.decode_rate.observe(r.timings.decode_tok_s);
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
