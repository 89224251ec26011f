//! Confidence signals: what the local model's answer says about itself, and the calibrated
//! model over them. Plain data and pure functions, below the engines (which produce the
//! signals) and the policy (which decides on them), so the config can name a signal or carry a
//! fitted model without depending on either.

pub mod answer;
pub mod calibrated;
#[cfg(feature = "eval")]
pub(crate) mod fit;

use crate::types::Confidence;

pub use calibrated::{CalibratedModel, Evidence};

/// Signals for one generated token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenSignal {
    /// ln p(chosen token).
    pub logprob: f32,
    /// Entropy of the distribution, in nats.
    pub entropy: f32,
    /// p(top-1) - p(top-2).
    pub margin: f32,
    /// ln p(top-1): how sure the model was of its own distribution, whatever was sampled (equal
    /// to `logprob` under greedy decoding).
    pub top_logprob: f32,
}

impl TokenSignal {
    /// p(chosen token).
    pub fn prob(&self) -> f32 {
        self.logprob.exp()
    }
}

/// Summarises a response's token signals.
pub fn summarize(signals: &[TokenSignal]) -> Confidence {
    if signals.is_empty() {
        return Confidence::default();
    }
    let n = signals.len() as f64;
    let mut probs: Vec<f64> = signals.iter().map(|s| f64::from(s.prob())).collect();
    let first_prob = probs[0];
    probs.sort_by(f64::total_cmp);
    // Nearest-rank 10th percentile.
    let p10 = probs[((0.1 * n).ceil() as usize)
        .saturating_sub(1)
        .min(probs.len() - 1)];
    Confidence {
        mean_logprob: signals.iter().map(|s| f64::from(s.logprob)).sum::<f64>() / n,
        min_prob: probs[0],
        p10_prob: p10,
        mean_entropy: signals.iter().map(|s| f64::from(s.entropy)).sum::<f64>() / n,
        mean_margin: signals.iter().map(|s| f64::from(s.margin)).sum::<f64>() / n,
        first_prob,
        tokens: signals.len() as u32,
        max_forced: signals
            .iter()
            .map(|s| f64::from(s.top_logprob.exp() - s.prob()).max(0.0))
            .fold(0.0, f64::max),
    }
}

/// The local model's final hidden state (after its output norm, before the output head).
#[derive(Debug, Clone, PartialEq)]
pub struct HiddenStates {
    /// At the prompt's last token: what the model knows before it answers.
    pub prompt: Vec<f32>,
    /// At the answer's end: the state the last token (or end of turn) was predicted from.
    pub answer: Vec<f32>,
}

/// The confidence signals a threshold can be set on (`[cascade] signal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum Signal {
    /// Mean token log-probability (escalate below).
    #[default]
    MeanLogprob,
    /// Lowest token probability (escalate below).
    MinProb,
    /// 10th-percentile token probability (escalate below).
    P10Prob,
    /// Mean entropy (escalate above).
    MeanEntropy,
    /// The largest gap between the model's top-token probability and the written token's:
    /// how hard a grammar forced a token the model did not want (escalate above).
    MaxForced,
    /// P(the small model is right) from the calibrated model (escalate below).
    Calibrated,
    /// P(small right) - P(large right) from the calibrated pair: the accuracy expected to be
    /// lost by escalating (escalate below; a negative value means escalating should help).
    CalibratedGain,
    /// The hidden-state probe's P(small right) - P(large right) after the answer (escalate
    /// below); with the probe's `pre_threshold`, it also routes before generation.
    Probe,
}

impl Signal {
    /// Parses a config name.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "mean_logprob" => Signal::MeanLogprob,
            "min_prob" => Signal::MinProb,
            "p10_prob" => Signal::P10Prob,
            "mean_entropy" => Signal::MeanEntropy,
            "max_forced" => Signal::MaxForced,
            "calibrated" => Signal::Calibrated,
            "calibrated_gain" => Signal::CalibratedGain,
            "probe" => Signal::Probe,
            _ => return None,
        })
    }

    /// The config name.
    pub fn name(self) -> &'static str {
        match self {
            Signal::MeanLogprob => "mean_logprob",
            Signal::MinProb => "min_prob",
            Signal::P10Prob => "p10_prob",
            Signal::MeanEntropy => "mean_entropy",
            Signal::MaxForced => "max_forced",
            Signal::Calibrated => "calibrated",
            Signal::CalibratedGain => "calibrated_gain",
            Signal::Probe => "probe",
        }
    }

    /// The signal's value in a summary; `None` for the calibrated signal, which needs more
    /// than the summary.
    pub fn value(self, c: &Confidence) -> Option<f64> {
        Some(match self {
            Signal::MeanLogprob => c.mean_logprob,
            Signal::MinProb => c.min_prob,
            Signal::P10Prob => c.p10_prob,
            Signal::MeanEntropy => c.mean_entropy,
            Signal::MaxForced => c.max_forced,
            Signal::Calibrated | Signal::CalibratedGain | Signal::Probe => return None,
        })
    }

    /// Whether a higher value means less sure (entropy, forcing): these escalate above their
    /// threshold, the others below.
    pub fn escalates_above(self) -> bool {
        matches!(self, Signal::MeanEntropy | Signal::MaxForced)
    }

    /// Whether `value` is on the unsure side of `threshold`.
    pub fn unsure(self, value: f64, threshold: f64) -> bool {
        if self.escalates_above() {
            value > threshold
        } else {
            value < threshold
        }
    }
}

/// The default `[cascade] structured_signal` and `structured_threshold`: a grammar-constrained
/// local answer escalates when its mean entropy is above 0.6 nats. `edgecascade eval` on BFCL
/// calls under `tool_choice: required` and on JSON extraction (150 items each, SmolLM2 and
/// Qwen2.5-0.5B against Qwen2.5-1.5B) found mean entropy the most consistent signal (held-in
/// AUROC 0.66 to 0.74 on three of the four sets); the lowest token probability and the grammar's
/// forcing were near random on most. 0.6 is the threshold that reached 95% of the large
/// model's accuracy on Qwen2.5-0.5B's JSON extraction; the best threshold differs by model and
/// task (0.25 to 0.82), so `eval --write-config` fits your own (README, "Structured output and
/// the cascade").
pub const STRUCTURED_DEFAULT: (Signal, f64) = (Signal::MeanEntropy, 0.6);
