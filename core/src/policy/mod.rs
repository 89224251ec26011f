//! Policy: the router decides before generation, the cascade during and after it. Both are pure
//! functions of plain inputs, so every decision is testable and carries a stable reason code.

pub mod device;
pub mod probe;
#[cfg(feature = "eval")]
pub mod probe_fit;

use crate::config::{CascadeConfig, RouteTarget, RouterConfig};
use crate::error::Invalid;
use crate::signal::TokenSignal;
use crate::types::{Confidence, PolicyOverride, Reason};

pub use crate::signal::{
    answer, calibrated, CalibratedModel, Evidence, Signal, STRUCTURED_DEFAULT,
};
pub use device::Shift;

/// Where a request goes before generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Local only.
    Local,
    /// Remote only.
    Remote,
    /// Local first; escalate if unsure.
    Cascade,
}

/// A routing decision and its reason.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Where to go.
    pub plan: Plan,
    /// Stable code: private, forced, no_remote, offline, no_local_model, remote_unavailable,
    /// budget_exhausted, context_too_long, background or rule. For `Plan::Cascade` it is provisional: the
    /// cascade's outcome (accepted, low_confidence, ...) replaces it.
    pub reason: Reason,
    /// The same in prose.
    pub detail: String,
}

/// What the router knows about a request and the tiers.
#[derive(Debug, Clone)]
pub struct RouteInput<'a> {
    /// The request's override.
    pub policy: PolicyOverride,
    /// The request is private.
    pub private: bool,
    /// A remote tier is configured.
    pub remote_configured: bool,
    /// A local model is loaded.
    pub local_available: bool,
    /// The device has no network.
    pub offline: bool,
    /// The app is in the background.
    pub background: bool,
    /// Why the remote tier cannot be used now (breaker open), if so.
    pub remote_unavailable: Option<&'a str>,
    /// Why the budget refuses the worst case, if so.
    pub budget_refusal: Option<&'a str>,
    /// Prompt tokens and the local context, when the prompt does not fit.
    pub overflow: Option<(u32, u32)>,
    /// Prompt tokens (for config rules).
    pub prompt_tokens: u32,
    /// The last user message (for config rules).
    pub last_user: &'a str,
    /// The configured rules.
    pub rules: &'a RouterConfig,
}

/// The router: plain rules, evaluated in order.
pub fn route(i: &RouteInput<'_>) -> Decision {
    let d = |plan, reason, detail: String| Decision {
        plan,
        reason,
        detail,
    };
    if i.private {
        return d(
            Plan::Local,
            Reason::Private,
            "the request is private: it never leaves the device".into(),
        );
    }
    if i.policy == PolicyOverride::ForceLocal {
        return d(
            Plan::Local,
            Reason::Forced,
            "the request forced the local tier".into(),
        );
    }
    if !i.remote_configured {
        return d(
            Plan::Local,
            Reason::NoRemote,
            "no remote tier is configured".into(),
        );
    }
    // Offline, a request that can only go remote fails there with remote_unavailable.
    if i.offline {
        return if i.policy == PolicyOverride::ForceRemote || !i.local_available {
            d(
                Plan::Remote,
                Reason::Offline,
                "the device is offline and the request needs the remote tier".into(),
            )
        } else {
            d(
                Plan::Local,
                Reason::Offline,
                "the device is offline: the local model answers".into(),
            )
        };
    }
    // A forced remote request goes remote or fails: the runtime checks the breaker and the
    // budget and returns an error rather than a silent local answer.
    if i.policy == PolicyOverride::ForceRemote {
        return d(
            Plan::Remote,
            Reason::Forced,
            "the request forced the remote tier".into(),
        );
    }
    if !i.local_available {
        return d(
            Plan::Remote,
            Reason::NoLocalModel,
            "no local model is loaded yet".into(),
        );
    }
    if let Some(why) = i.remote_unavailable {
        return d(
            Plan::Local,
            Reason::RemoteUnavailable,
            format!("remote tier unavailable: {why}"),
        );
    }
    if let Some(why) = i.budget_refusal {
        return d(Plan::Local, Reason::BudgetExhausted, why.to_owned());
    }
    if let Some((prompt, n_ctx)) = i.overflow {
        return d(
            Plan::Remote,
            Reason::ContextTooLong,
            format!("prompt of {prompt} tokens does not fit the local context of {n_ctx}"),
        );
    }
    if i.background {
        return d(
            Plan::Remote,
            Reason::Background,
            "the app is in the background: the remote tier answers, sparing the device".into(),
        );
    }
    let plan = |t: RouteTarget| match t {
        RouteTarget::Local => Plan::Local,
        RouteTarget::Remote => Plan::Remote,
        RouteTarget::Cascade => Plan::Cascade,
    };
    let text = i.last_user.to_lowercase();
    for (n, r) in i.rules.rules.iter().enumerate() {
        let matches = r.min_prompt_tokens.is_none_or(|m| i.prompt_tokens >= m)
            && r.max_prompt_tokens.is_none_or(|m| i.prompt_tokens <= m)
            && (r.contains.is_empty()
                || r.contains.iter().any(|c| text.contains(&c.to_lowercase())));
        if matches {
            let name = r
                .name
                .clone()
                .unwrap_or_else(|| format!("router.rules[{n}]"));
            return d(plan(r.route), Reason::Rule, format!("matched {name}"));
        }
    }
    match i.rules.default {
        RouteTarget::Cascade => d(
            Plan::Cascade,
            Reason::Rule,
            "local first, escalating if unsure".into(),
        ),
        other => d(
            plan(other),
            Reason::Rule,
            format!("router.default = {other:?}").to_lowercase(),
        ),
    }
}

/// The cascade's decisions.
#[derive(Debug, Clone)]
pub struct Cascade {
    signal: Signal,
    model: Option<CalibratedModel>,
    /// The hidden-state probe (`signal = "probe"`), loaded by the runtime against its model.
    probe: Option<std::sync::Arc<probe::Probe>>,
    threshold: f64,
    /// The signal and threshold for answers decoded under a grammar.
    structured: (Signal, f64),
    floor: f64,
    min_tokens: u32,
}

/// The cascade's decision after the local answer, with its reason and detail.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Keep the local answer (accepted, or metered when only the shift kept it).
    Accept(Reason, String),
    /// Escalate (low_confidence, or thermal / low_power when only the shift escalated it).
    Escalate(Reason, String),
}

/// `[cascade] structured_signal` and `structured_threshold`, checked, with their defaults.
fn structured_rule(c: &CascadeConfig) -> Result<(Signal, f64), Invalid> {
    let signal = c.structured_signal.unwrap_or(STRUCTURED_DEFAULT.0);
    if signal.value(&Confidence::default()).is_none() {
        return Err(Invalid(format!(
            "cascade.structured_signal = {:?}: only mean_logprob, min_prob, p10_prob, mean_entropy or max_forced (the calibrated signals are fitted on free text)",
            signal.name()
        )));
    }
    let threshold = match (c.structured_threshold, signal) {
        (Some(t), _) => t,
        (None, s) if s == STRUCTURED_DEFAULT.0 => STRUCTURED_DEFAULT.1,
        (None, s) => {
            return Err(Invalid(format!(
                "cascade.structured_signal = {:?} needs cascade.structured_threshold",
                s.name()
            )))
        }
    };
    let probability = matches!(
        signal,
        Signal::MinProb | Signal::P10Prob | Signal::MaxForced
    );
    if !threshold.is_finite() || (probability && !(0.0..=1.0).contains(&threshold)) {
        return Err(Invalid(format!(
            "cascade.structured_threshold {threshold} must be {} for {}",
            if probability {
                "a probability (0 to 1)"
            } else {
                "a finite number"
            },
            signal.name()
        )));
    }
    Ok((signal, threshold))
}

/// Tokens in the rolling window of the mid-stream check.
const WINDOW: usize = 8;

impl Cascade {
    /// From the `[cascade]` section.
    pub fn new(c: &CascadeConfig) -> Result<Self, Invalid> {
        let signal = c.signal;
        if let Some(m) = &c.calibrated {
            m.validate()?;
        }
        if signal == Signal::Probe {
            if c.probe.is_none() {
                return Err("cascade.signal = \"probe\" needs cascade.probe = \"FILE\": fit one with `edgecascade eval --write-probe FILE`".into());
            }
            if !(-1.0..=1.0).contains(&c.threshold) {
                return Err(Invalid(format!(
                    "cascade.threshold {} must be between -1 and 1 for the probe",
                    c.threshold
                )));
            }
        }
        if matches!(signal, Signal::Calibrated | Signal::CalibratedGain) && c.calibrated.is_none() {
            return Err(
                "cascade.signal = \"calibrated\" needs a [cascade.calibrated] section: fit one with `edgecascade eval --write-config`".into(),
            );
        }
        if signal == Signal::Calibrated && !(0.0..=1.0).contains(&c.threshold) {
            return Err(Invalid(format!(
                "cascade.threshold {} must be a probability (0 to 1) for the calibrated signal",
                c.threshold
            )));
        }
        if signal == Signal::CalibratedGain {
            if c.calibrated
                .as_ref()
                .is_some_and(|m| m.large_weights.is_empty())
            {
                return Err("cascade.signal = \"calibrated_gain\" needs large_weights in [cascade.calibrated]: refit with `edgecascade eval --write-config`".into());
            }
            if !(-1.0..=1.0).contains(&c.threshold) {
                return Err(Invalid(format!(
                    "cascade.threshold {} must be between -1 and 1 for calibrated_gain",
                    c.threshold
                )));
            }
        }
        let structured = structured_rule(c)?;
        Ok(Self {
            signal,
            model: c.calibrated.clone(),
            probe: None,
            threshold: c.threshold,
            structured,
            floor: c.mid_stream_floor,
            min_tokens: c.mid_stream_min_tokens,
        })
    }

    /// Uses `probe` for `signal = "probe"` (the runtime loads it against the local model).
    #[must_use]
    pub fn with_probe(mut self, probe: probe::Probe) -> Self {
        self.probe = Some(std::sync::Arc::new(probe));
        self
    }

    /// The local model's hidden states are needed (`signal = "probe"` with a probe loaded).
    pub fn wants_hidden(&self) -> bool {
        self.signal == Signal::Probe && self.probe.is_some()
    }

    /// The probe, when it routes before generation (it has a `pre_threshold`).
    pub fn pre_router(&self) -> Option<&probe::Probe> {
        self.probe
            .as_deref()
            .filter(|p| self.signal == Signal::Probe && p.pre_threshold.is_some())
    }

    /// Before generation, from the prompt's hidden state: `Some(detail)` when the probe
    /// predicts the local answer is not worth having (go remote at once).
    pub fn pre_gate(
        &self,
        messages: &[crate::types::ChatMessage],
        hint: Option<crate::types::Kind>,
        task: Option<&str>,
        prompt_tokens: u32,
        prompt_hidden: &[f32],
    ) -> Option<String> {
        let p = self.pre_router()?;
        let threshold = p.pre_threshold?;
        let x = p.pre_x(messages, hint, prompt_tokens, task);
        let v = p.pre_score(&x, prompt_hidden);
        (v.is_nan() || v < threshold).then(|| {
            format!("the probe's expected gain from the local answer {v:.3} is under the pre-generation threshold {threshold:.3}")
        })
    }

    /// The decision score of a local answer: the configured signal's value.
    pub fn score(&self, e: &Evidence<'_>) -> f64 {
        if self.signal == Signal::Probe {
            return match (&self.probe, e.hidden) {
                (Some(p), Some(h)) => p.post_score(&p.post_x(e, e.task), &h.prompt, &h.answer),
                _ => f64::NAN,
            };
        }
        match (self.signal, &self.model) {
            (Signal::Calibrated, Some(m)) => m.predict(&calibrated::features(e)),
            (Signal::CalibratedGain, Some(m)) => {
                m.gain_score(&calibrated::features(e)).unwrap_or(f64::NAN)
            }
            (s, _) => s
                .value(&crate::signal::summarize(e.signals))
                .unwrap_or(f64::NAN),
        }
    }

    /// After the local answer: `Some(detail)` to escalate.
    pub fn after(&self, e: &Evidence<'_>) -> Option<String> {
        match self.decide(e, &Shift::NONE) {
            Verdict::Escalate(_, detail) => Some(detail),
            Verdict::Accept(..) => None,
        }
    }

    /// After the local answer, with the threshold moved by the device's state. The reason is
    /// the device's (thermal, low_power, metered) when the shift changed the outcome.
    pub fn decide(&self, e: &Evidence<'_>, shift: &Shift) -> Verdict {
        if e.signals.is_empty() || e.text.trim().is_empty() {
            return Verdict::Escalate(Reason::LowConfidence, "the local answer is empty".into());
        }
        Self::verdict(self.signal, self.threshold, self.score(e), shift, "")
    }

    /// [`Self::decide`] for an answer decoded under a grammar (a JSON schema, a forced tool
    /// call): `structured_signal` and `structured_threshold` decide.
    pub fn decide_structured(&self, e: &Evidence<'_>, shift: &Shift) -> Verdict {
        if e.signals.is_empty() || e.text.trim().is_empty() {
            return Verdict::Escalate(Reason::LowConfidence, "the local answer is empty".into());
        }
        let (signal, threshold) = self.structured;
        let v = signal
            .value(&crate::signal::summarize(e.signals))
            .unwrap_or(f64::NAN);
        Self::verdict(
            signal,
            threshold,
            v,
            shift,
            " for grammar-constrained answers",
        )
    }

    /// The verdict of `signal`'s value `v` against `base` moved by `shift`.
    fn verdict(signal: Signal, base: f64, v: f64, shift: &Shift, which: &str) -> Verdict {
        // Towards escalating: up for the signals that escalate below, down for entropy.
        let toward = if signal.escalates_above() { -1.0 } else { 1.0 };
        let threshold = base + toward * shift.net();
        let plain = v.is_nan() || signal.unsure(v, base);
        let shifted = v.is_nan() || signal.unsure(v, threshold);
        let name = signal.name();
        let reason = |own| match shift.reason() {
            Some(r) if plain != shifted => r,
            _ => own,
        };
        let moved = if shift.reason().is_none() {
            String::new()
        } else {
            format!(
                " ({} moved it from {base})",
                shift.reason().map_or("", |r| r.as_str()),
            )
        };
        if shifted {
            Verdict::Escalate(
                reason(Reason::LowConfidence),
                format!("{name} {v:.3} is past the threshold{which} {threshold:.3}{moved}"),
            )
        } else {
            Verdict::Accept(
                reason(Reason::Accepted),
                format!("{name} {v:.3} clears the threshold{which} {threshold:.3}{moved}"),
            )
        }
    }

    /// During the local answer, after each token: `Some(detail)` to stop and escalate now, when
    /// the model's mean top-token probability over the last few tokens falls under the floor.
    /// Under greedy decoding that is the chosen tokens' probability; under sampling it does not
    /// depend on the luck of the draw.
    pub fn mid_stream(&self, signals: &[TokenSignal]) -> Option<String> {
        if self.floor <= 0.0 || (signals.len() as u32) < self.min_tokens.max(WINDOW as u32) {
            return None;
        }
        let recent = &signals[signals.len() - WINDOW..];
        let mean = recent
            .iter()
            .map(|s| f64::from(s.top_logprob.exp()))
            .sum::<f64>()
            / WINDOW as f64;
        (mean < self.floor).then(|| {
            format!(
                "mean probability of the last {WINDOW} tokens {mean:.3} fell under the floor {}",
                self.floor
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static NO_RULES: RouterConfig = RouterConfig {
        default: RouteTarget::Cascade,
        rules: Vec::new(),
    };

    fn input() -> RouteInput<'static> {
        RouteInput {
            policy: PolicyOverride::Auto,
            private: false,
            remote_configured: true,
            local_available: true,
            offline: false,
            background: false,
            remote_unavailable: None,
            budget_refusal: None,
            overflow: None,
            prompt_tokens: 30,
            last_user: "Write a Python function",
            rules: &NO_RULES,
        }
    }

    #[test]
    fn config_rules_apply_in_order_after_the_built_ins() {
        use crate::config::RouteRule;
        let rules = RouterConfig {
            default: RouteTarget::Local,
            rules: vec![
                RouteRule {
                    name: Some("code".into()),
                    contains: vec!["python".into()],
                    route: RouteTarget::Remote,
                    ..RouteRule::default()
                },
                RouteRule {
                    min_prompt_tokens: Some(1000),
                    route: RouteTarget::Remote,
                    ..RouteRule::default()
                },
                RouteRule {
                    max_prompt_tokens: Some(50),
                    route: RouteTarget::Cascade,
                    ..RouteRule::default()
                },
            ],
        };
        let r = route(&RouteInput {
            rules: &rules,
            ..input()
        });
        assert_eq!(
            (r.plan, r.reason, r.detail.as_str()),
            (Plan::Remote, Reason::Rule, "matched code")
        );
        let r = route(&RouteInput {
            rules: &rules,
            last_user: "hi",
            ..input()
        });
        assert_eq!(
            (r.plan, r.detail.as_str()),
            (Plan::Cascade, "matched router.rules[2]")
        );
        let r = route(&RouteInput {
            rules: &rules,
            last_user: "hi",
            prompt_tokens: 2000,
            ..input()
        });
        assert_eq!(r.plan, Plan::Remote);
        let r = route(&RouteInput {
            rules: &rules,
            last_user: "hi",
            prompt_tokens: 500,
            ..input()
        });
        assert_eq!(r.plan, Plan::Local, "the default");
        // Built-ins first: a private request ignores the rules.
        assert_eq!(
            route(&RouteInput {
                rules: &rules,
                private: true,
                ..input()
            })
            .reason
            .as_str(),
            "private"
        );
        // A rule that sends a request remote needs a remote tier: without one, built-ins win.
        assert_eq!(
            route(&RouteInput {
                rules: &rules,
                remote_configured: false,
                ..input()
            })
            .reason
            .as_str(),
            "no_remote"
        );
    }

    #[test]
    fn router_rules_in_order() {
        assert_eq!(route(&input()).plan, Plan::Cascade);
        assert_eq!(
            route(&RouteInput {
                private: true,
                ..input()
            })
            .reason
            .as_str(),
            "private"
        );
        assert_eq!(
            route(&RouteInput {
                policy: PolicyOverride::ForceLocal,
                ..input()
            })
            .reason
            .as_str(),
            "forced"
        );
        let r = route(&RouteInput {
            policy: PolicyOverride::ForceRemote,
            ..input()
        });
        assert_eq!((r.plan, r.reason.as_str()), (Plan::Remote, "forced"));
        assert_eq!(
            route(&RouteInput {
                remote_configured: false,
                ..input()
            })
            .reason
            .as_str(),
            "no_remote"
        );
        assert_eq!(
            route(&RouteInput {
                remote_unavailable: Some("breaker open"),
                ..input()
            })
            .reason
            .as_str(),
            "remote_unavailable"
        );
        assert_eq!(
            route(&RouteInput {
                budget_refusal: Some("daily cap"),
                ..input()
            })
            .reason
            .as_str(),
            "budget_exhausted"
        );
        let r = route(&RouteInput {
            overflow: Some((5000, 4096)),
            ..input()
        });
        assert_eq!(
            (r.plan, r.reason.as_str()),
            (Plan::Remote, "context_too_long")
        );
        // A forced remote request is never answered locally, breaker or budget: the runtime
        // fails it with a stable error instead.
        for r in [
            route(&RouteInput {
                policy: PolicyOverride::ForceRemote,
                remote_unavailable: Some("breaker open"),
                ..input()
            }),
            route(&RouteInput {
                policy: PolicyOverride::ForceRemote,
                budget_refusal: Some("daily cap"),
                ..input()
            }),
        ] {
            assert_eq!((r.plan, r.reason), (Plan::Remote, Reason::Forced));
        }
        // No local model yet: remote, unless private.
        let r = route(&RouteInput {
            local_available: false,
            ..input()
        });
        assert_eq!((r.plan, r.reason), (Plan::Remote, Reason::NoLocalModel));
        // Private beats everything, even an overflow.
        assert_eq!(
            route(&RouteInput {
                private: true,
                overflow: Some((5000, 4096)),
                ..input()
            })
            .plan,
            Plan::Local
        );
    }

    #[test]
    fn offline_and_background_route_with_their_own_reasons() {
        let r = route(&RouteInput {
            offline: true,
            ..input()
        });
        assert_eq!((r.plan, r.reason), (Plan::Local, Reason::Offline));
        // Offline beats rules, overflows and a background app: nothing can go remote.
        let r = route(&RouteInput {
            offline: true,
            background: true,
            overflow: Some((5000, 4096)),
            ..input()
        });
        assert_eq!((r.plan, r.reason), (Plan::Local, Reason::Offline));
        // A request that can only go remote goes there, to fail with remote_unavailable.
        for i in [
            RouteInput {
                offline: true,
                local_available: false,
                ..input()
            },
            RouteInput {
                offline: true,
                policy: PolicyOverride::ForceRemote,
                ..input()
            },
        ] {
            assert_eq!(
                (route(&i).plan, route(&i).reason),
                (Plan::Remote, Reason::Offline)
            );
        }
        // Private and forced-local requests stay private and forced, offline or not.
        let r = route(&RouteInput {
            offline: true,
            private: true,
            ..input()
        });
        assert_eq!(r.reason, Reason::Private);
        let r = route(&RouteInput {
            background: true,
            ..input()
        });
        assert_eq!((r.plan, r.reason), (Plan::Remote, Reason::Background));
        // In the background a private request stays local (the runtime refuses it when the
        // local model runs on a GPU), and so does one the remote tier cannot take.
        let r = route(&RouteInput {
            background: true,
            private: true,
            ..input()
        });
        assert_eq!((r.plan, r.reason), (Plan::Local, Reason::Private));
        let r = route(&RouteInput {
            background: true,
            budget_refusal: Some("daily cap"),
            ..input()
        });
        assert_eq!((r.plan, r.reason), (Plan::Local, Reason::BudgetExhausted));
    }

    #[test]
    fn device_shifts_move_the_threshold_and_name_themselves() {
        use crate::types::{DeviceState, Network, Thermal};
        let signals = [TokenSignal {
            logprob: -0.5,
            entropy: 1.5,
            margin: 0.2,
            top_logprob: -0.5,
        }; 10];
        let messages = [crate::types::ChatMessage::user("hi")];
        let e = Evidence {
            messages: &messages,
            hint: None,
            prompt_tokens: 5,
            signals: &signals,
            text: "hello",
            finish: crate::types::FinishReason::Stop,
            hidden: None,
            task: None,
        };
        let cascade = |signal, threshold| {
            Cascade::new(&CascadeConfig {
                signal,
                threshold,
                ..CascadeConfig::default()
            })
            .unwrap()
        };
        let cfg = crate::config::DeviceConfig::default();
        let hot = Shift::of(
            &DeviceState {
                thermal: Thermal::Serious,
                ..DeviceState::default()
            },
            &cfg,
        );
        let metered = Shift::of(
            &DeviceState {
                network: Network::Metered,
                ..DeviceState::default()
            },
            &cfg,
        );
        let reason = |v: Verdict| match v {
            Verdict::Accept(r, _) => ("accept", r),
            Verdict::Escalate(r, _) => ("escalate", r),
        };
        // Mean logprob -0.5 against -0.6: kept; heat moves the threshold to -0.45: escalated,
        // and the reason says heat did it.
        let c = cascade(Signal::MeanLogprob, -0.6);
        assert_eq!(
            reason(c.decide(&e, &Shift::NONE)),
            ("accept", Reason::Accepted)
        );
        assert_eq!(reason(c.decide(&e, &hot)), ("escalate", Reason::Thermal));
        // Far past the threshold the shift changes nothing, and the reason stays the signal's.
        let c = cascade(Signal::MeanLogprob, -2.0);
        assert_eq!(reason(c.decide(&e, &hot)), ("accept", Reason::Accepted));
        // Metered: -0.5 against -0.4 escalates; shifted to -0.55 it is kept, for metered.
        let c = cascade(Signal::MeanLogprob, -0.4);
        assert_eq!(
            reason(c.decide(&e, &Shift::NONE)),
            ("escalate", Reason::LowConfidence)
        );
        assert_eq!(reason(c.decide(&e, &metered)), ("accept", Reason::Metered));
        // Entropy escalates above its threshold, so heat moves it down: 1.5 against 1.6.
        let c = cascade(Signal::MeanEntropy, 1.6);
        assert_eq!(
            reason(c.decide(&e, &Shift::NONE)),
            ("accept", Reason::Accepted)
        );
        assert_eq!(reason(c.decide(&e, &hot)), ("escalate", Reason::Thermal));
    }

    #[test]
    fn grammar_constrained_answers_have_their_own_rule() {
        // Nine sure tokens and one the grammar forced at p = 0.02: the mean logprob is high,
        // the lowest probability is not.
        let mut signals = vec![
            TokenSignal {
                logprob: -0.01,
                entropy: 0.1,
                margin: 5.0,
                top_logprob: -0.01,
            };
            10
        ];
        signals[4].logprob = 0.02f32.ln();
        signals[4].top_logprob = 0.02f32.ln();
        // Unsure tokens: mean entropy 0.1 + 0.9 * 6 / 10 = 0.64 nats.
        for s in &mut signals[..6] {
            s.entropy = 1.0;
        }
        let messages = [crate::types::ChatMessage::user("hi")];
        let e = Evidence {
            messages: &messages,
            hint: None,
            prompt_tokens: 5,
            signals: &signals,
            text: "{\"a\": 1}",
            finish: crate::types::FinishReason::Stop,
            hidden: None,
            task: None,
        };
        let escalates = |v: Verdict| matches!(v, Verdict::Escalate(..));
        // The default: mean entropy above 0.6 escalates a constrained answer that the text
        // rule (mean logprob against -1.0) keeps.
        let c = Cascade::new(&CascadeConfig::default()).unwrap();
        assert!(!escalates(c.decide(&e, &Shift::NONE)));
        let v = c.decide_structured(&e, &Shift::NONE);
        assert!(
            matches!(&v, Verdict::Escalate(Reason::LowConfidence, d) if d.contains("mean_entropy 0.640") && d.contains("grammar-constrained")),
            "{v:?}"
        );
        // min_prob, set, sees the token at 0.02.
        let min = Cascade::new(&CascadeConfig {
            structured_signal: Some(Signal::MinProb),
            structured_threshold: Some(0.05),
            ..CascadeConfig::default()
        })
        .unwrap();
        assert!(escalates(min.decide_structured(&e, &Shift::NONE)));
        // Configured: another signal with its threshold; 0 turns min_prob off.
        let with = |signal, threshold| {
            Cascade::new(&CascadeConfig {
                structured_signal: signal,
                structured_threshold: threshold,
                ..CascadeConfig::default()
            })
        };
        // Forcing: the token the grammar wrote at 0.02 was the model's first choice here, so
        // max_forced is 0 and keeps it; had the model preferred another token at 0.9, it
        // escalates above 0.5.
        let forcing = with(Some(Signal::MaxForced), Some(0.5)).unwrap();
        assert!(!escalates(forcing.decide_structured(&e, &Shift::NONE)));
        let mut overridden = signals.clone();
        overridden[4].top_logprob = 0.9f32.ln();
        let e2 = Evidence {
            signals: &overridden,
            ..e
        };
        assert!(escalates(forcing.decide_structured(&e2, &Shift::NONE)));
        let off = with(Some(Signal::MinProb), Some(0.0)).unwrap();
        assert!(!escalates(off.decide_structured(&e, &Shift::NONE)));
        let mean = with(Some(Signal::MeanLogprob), Some(-0.5)).unwrap();
        assert!(!escalates(mean.decide_structured(&e, &Shift::NONE)));
        // Refused: a signal without its threshold, a calibrated signal, a probability
        // outside 0 to 1, a NaN.
        for (signal, threshold, says) in [
            (
                Some(Signal::MeanLogprob),
                None,
                "needs cascade.structured_threshold",
            ),
            (Some(Signal::Calibrated), Some(0.5), "only mean_logprob"),
            (Some(Signal::MinProb), Some(1.5), "a probability"),
            (Some(Signal::MeanEntropy), Some(f64::NAN), "a finite number"),
        ] {
            let err = with(signal, threshold).unwrap_err();
            assert!(err.0.contains(says), "{err}");
        }
    }

    #[test]
    fn thresholds_have_directions() {
        let c = |signal: &str, threshold| {
            Cascade::new(&CascadeConfig {
                signal: Signal::parse(signal).unwrap(),
                threshold,
                ..CascadeConfig::default()
            })
            .unwrap()
        };
        // Ten tokens at p = e^-0.5, entropy 1.5: mean logprob -0.5.
        let signals = [TokenSignal {
            logprob: -0.5,
            entropy: 1.5,
            margin: 0.2,
            top_logprob: -0.5,
        }; 10];
        let messages = [crate::types::ChatMessage::user("hi")];
        let e = Evidence {
            messages: &messages,
            hint: None,
            prompt_tokens: 5,
            signals: &signals,
            text: "hello",
            finish: crate::types::FinishReason::Stop,
            hidden: None,
            task: None,
        };
        assert!(c("mean_logprob", -1.0).after(&e).is_none());
        assert!(c("mean_logprob", -0.2).after(&e).is_some());
        assert!(c("mean_entropy", 1.0).after(&e).is_some());
        assert!(c("mean_entropy", 2.0).after(&e).is_none());
        // An empty answer always escalates.
        assert!(c("mean_logprob", -9.0)
            .after(&Evidence { text: " ", ..e })
            .is_some());
        // The calibrated signal needs its model.
        assert!(Cascade::new(&CascadeConfig {
            signal: Signal::Calibrated,
            ..CascadeConfig::default()
        })
        .unwrap_err()
        .0
        .contains("[cascade.calibrated]"));
        // The gain signal needs the large half, and a threshold in [-1, 1] (fitting is in the
        // `eval` feature).
        #[cfg(feature = "eval")]
        {
            let xs = vec![[0.0; calibrated::N], [1.0; calibrated::N]];
            let small_only = CalibratedModel::fit(&xs, &[false, true], 1.0);
            let gain = |m: &CalibratedModel, threshold| {
                Cascade::new(&CascadeConfig {
                    signal: Signal::CalibratedGain,
                    threshold,
                    calibrated: Some(m.clone()),
                    ..CascadeConfig::default()
                })
            };
            assert!(gain(&small_only, 0.0)
                .unwrap_err()
                .0
                .contains("large_weights"));
            let pair = CalibratedModel::fit_pair(&xs, &[false, true], &[true, true], 1.0);
            assert!(gain(&pair, 0.0).is_ok());
            assert!(gain(&pair, 2.0).is_err());
        }
        // An unknown signal is a config error that names the choices.
        let e = crate::config::Config::from_toml("[cascade]\nsignal = \"vibes\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("mean_logprob"), "{e}");
    }

    #[test]
    fn mid_stream_floor_needs_enough_tokens() {
        let c = Cascade::new(&CascadeConfig::default()).unwrap();
        let low = TokenSignal {
            logprob: (0.01f32).ln(),
            entropy: 3.0,
            margin: 0.0,
            top_logprob: (0.02f32).ln(),
        };
        let high = TokenSignal {
            logprob: (0.9f32).ln(),
            entropy: 0.1,
            margin: 0.8,
            top_logprob: (0.9f32).ln(),
        };
        // A sampled token can be unlikely while the model was sure: the floor looks at the
        // model's top probability, not at the luck of the draw.
        let unlucky = TokenSignal {
            logprob: (0.01f32).ln(),
            ..high
        };
        assert!(c.mid_stream(&[low; 7]).is_none());
        assert!(c.mid_stream(&[low; 8]).is_some());
        assert!(c.mid_stream(&[high; 20]).is_none());
        assert!(c.mid_stream(&[unlucky; 20]).is_none());
        let mut mixed = vec![high; 12];
        mixed.extend([low; 8]);
        assert!(c.mid_stream(&mixed).is_some());
    }
}
