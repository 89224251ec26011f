//! The calibrated cascade signal: a small logistic regression giving P(the small model's answer
//! is right) from the local answer's confidence signals and cheap features of the request and
//! answer. `edgecascade eval` fits it on the user's labelled data and writes it into
//! `[cascade.calibrated]`; `signal = "calibrated"` selects it.
//!
//! Every feature is computed from the request and the local answer alone: at run time there is
//! no dataset. The task kind comes from the request's optional hint, else from the prompt's
//! wording (lettered options, "yes or no", a number asked for).

// Linear algebra reads best with math names.
#![allow(clippy::many_single_char_names)]

use crate::error::Invalid;
use serde::{Deserialize, Serialize};

use super::{answer, TokenSignal};
use crate::types::Kind;

#[cfg(feature = "eval")]
pub use super::fit::{assign_folds, cross_validate, cross_validate_gain};
use crate::types::{ChatMessage, FinishReason, Role};

/// The features, in order. A saved model lists the names it was fitted on, and loading checks
/// them, so a model from another version fails loudly instead of scoring garbage.
pub const FEATURES: [&str; 24] = [
    "mean_logprob",
    "ln_min_prob",
    "ln_p10_prob",
    "mean_entropy",
    "mean_margin",
    "ln_first_prob",
    "ln_tokens",
    "hit_length",
    "format_ok",
    "kind_choice",
    "kind_number",
    "kind_yesno",
    "kind_exact",
    "ln_prompt_tokens",
    "digit_share",
    "answer_yes",
    "choice_first_prob",
    "number_first_prob",
    "yesno_first_prob",
    "exact_first_prob",
    "choice_mean_logprob",
    "number_mean_logprob",
    "yesno_mean_logprob",
    "exact_mean_logprob",
];

/// Number of features.
pub const N: usize = FEATURES.len();

/// What the features are computed from: one request and its local answer.
#[derive(Debug, Clone, Copy)]
pub struct Evidence<'a> {
    /// The request's messages.
    pub messages: &'a [ChatMessage],
    /// The request's task hint, if any.
    pub hint: Option<Kind>,
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Per-token signals of the local answer.
    pub signals: &'a [TokenSignal],
    /// The local answer.
    pub text: &'a str,
    /// Why it ended.
    pub finish: FinishReason,
    /// The local model's hidden states, when they were read (for the probe).
    pub hidden: Option<&'a super::HiddenStates>,
    /// The request's task name, if any (for the probe's per-task terms).
    pub task: Option<&'a str>,
}

/// The task kind a request asks for: the hint, else inferred from the last user message.
pub fn infer_kind(messages: &[ChatMessage], hint: Option<Kind>) -> Option<Kind> {
    if hint.is_some() {
        return hint;
    }
    let text = messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .map(|m| m.content.as_str())?;
    let lower = text.to_lowercase();
    // Two or more lettered options on their own lines: "A. ...", "B) ...".
    let lettered = text
        .lines()
        .filter(|l| {
            let b = l.trim_start().as_bytes();
            b.len() >= 2 && b[0].is_ascii_uppercase() && matches!(b[1], b'.' | b')')
        })
        .count();
    if lettered >= 2 || lower.contains("letter of the correct") {
        Some(Kind::Choice)
    } else if lower.contains("yes or no") || lower.contains("true or false") {
        Some(Kind::YesNo)
    } else if lower.contains("the number only")
        || lower.contains("answer with a number")
        || lower.starts_with("calculate ")
        || lower.starts_with("what is ") && text.chars().any(|c| c.is_ascii_digit())
    {
        Some(Kind::Number)
    } else {
        None
    }
}

/// The features known from the prompt alone: the kind's one-hot (choice, number, yesno,
/// exact), the log prompt length and the last user message's digit share. The
/// pre-generation probe uses them; [`features`] holds them too.
pub fn prompt_features(
    messages: &[ChatMessage],
    hint: Option<Kind>,
    prompt_tokens: u32,
) -> [f64; 6] {
    let kind = infer_kind(messages, hint);
    let one_hot = |k: Kind| f64::from(kind == Some(k));
    let user = messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .map_or("", |m| m.content.as_str());
    let digits = user.chars().filter(char::is_ascii_digit).count() as f64;
    [
        one_hot(Kind::Choice),
        one_hot(Kind::Number),
        one_hot(Kind::YesNo),
        one_hot(Kind::Exact),
        (1.0 + f64::from(prompt_tokens)).ln(),
        digits / user.chars().count().max(1) as f64,
    ]
}

/// The feature vector for `e`.
pub fn features(e: &Evidence<'_>) -> [f64; N] {
    let c = super::summarize(e.signals);
    let kind = infer_kind(e.messages, e.hint);
    let ln = |p: f64| p.max(1e-6).ln();
    let [kc, kn, ky, ke, ln_prompt, digit_share] =
        prompt_features(e.messages, e.hint, e.prompt_tokens);
    let choices: Vec<String> = Vec::new();
    let extracted = kind.map(|k| answer::extract(k, e.text, &choices));
    let format_ok = match &extracted {
        Some(Some(_)) | None => 1.0,
        Some(None) => 0.0,
    };
    let answer_yes = f64::from(matches!(
        (kind, &extracted),
        (Some(Kind::YesNo), Some(Some(a))) if a == "yes"
    ));
    let one_hot = |k: Kind| f64::from(kind == Some(k));
    let (fp, ml) = if c.tokens == 0 {
        (ln(0.0), ln(0.0))
    } else {
        (ln(c.first_prob), c.mean_logprob)
    };
    [
        ml,
        ln(c.min_prob),
        ln(c.p10_prob),
        c.mean_entropy,
        c.mean_margin,
        fp,
        (1.0 + f64::from(c.tokens)).ln(),
        f64::from(e.finish == FinishReason::Length),
        format_ok,
        kc,
        kn,
        ky,
        ke,
        ln_prompt,
        digit_share,
        answer_yes,
        one_hot(Kind::Choice) * fp,
        one_hot(Kind::Number) * fp,
        one_hot(Kind::YesNo) * fp,
        one_hot(Kind::Exact) * fp,
        one_hot(Kind::Choice) * ml,
        one_hot(Kind::Number) * ml,
        one_hot(Kind::YesNo) * ml,
        one_hot(Kind::Exact) * ml,
    ]
}

/// A fitted model: standardisation, weights and bias. The `[cascade.calibrated]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct CalibratedModel {
    /// Feature names, in order (must equal [`FEATURES`]).
    pub features: Vec<String>,
    /// Per-feature mean subtracted before scaling.
    pub mean: Vec<f64>,
    /// Per-feature scale divided by.
    pub scale: Vec<f64>,
    /// Per-feature weights.
    pub weights: Vec<f64>,
    /// The intercept.
    pub bias: f64,
    /// Weights of P(the large model is right), on the same standardised features (for the
    /// `calibrated_gain` signal); empty without that half.
    #[serde(default)]
    pub large_weights: Vec<f64>,
    /// Its intercept.
    #[serde(default)]
    pub large_bias: f64,
    /// What it was fitted on, for people reading the config.
    #[serde(default)]
    pub fitted_on: String,
}

impl CalibratedModel {
    /// Checks the model matches this build's features.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.features.iter().map(String::as_str).ne(FEATURES) {
            return Err(Invalid(format!(
                "cascade.calibrated was fitted on features {:?}, but this version computes {:?}: refit it with `edgecascade eval --write-config`",
                self.features, FEATURES
            )));
        }
        if [self.mean.len(), self.scale.len(), self.weights.len()] != [N; 3] {
            return Err(Invalid(format!(
                "cascade.calibrated needs {N} means, scales and weights"
            )));
        }
        if !self.large_weights.is_empty() && self.large_weights.len() != N {
            return Err(Invalid(format!(
                "cascade.calibrated.large_weights needs {N} weights"
            )));
        }
        if self
            .mean
            .iter()
            .chain(&self.scale)
            .chain(&self.weights)
            .chain(&self.large_weights)
            .chain([&self.bias, &self.large_bias])
            .any(|v| !v.is_finite())
            || self.scale.iter().any(|&s| s <= 0.0)
        {
            return Err("cascade.calibrated has a non-finite value or a scale <= 0".into());
        }
        Ok(())
    }

    /// P(the small model is right) for features `x`.
    pub fn predict(&self, x: &[f64; N]) -> f64 {
        let z = self.bias
            + (0..N)
                .map(|i| self.weights[i] * (x[i] - self.mean[i]) / self.scale[i])
                .sum::<f64>();
        sigmoid(z)
    }

    /// P(the large model is right) for features `x`, when the model has that half.
    pub fn predict_large(&self, x: &[f64; N]) -> Option<f64> {
        (self.large_weights.len() == N).then(|| {
            sigmoid(
                self.large_bias
                    + (0..N)
                        .map(|i| self.large_weights[i] * (x[i] - self.mean[i]) / self.scale[i])
                        .sum::<f64>(),
            )
        })
    }

    /// The `calibrated_gain` score: P(small right) - P(large right), the accuracy expected to
    /// be lost by escalating (negative: escalating is expected to help).
    pub fn gain_score(&self, x: &[f64; N]) -> Option<f64> {
        Some(self.predict(x) - self.predict_large(x)?)
    }
}

pub(crate) fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

#[cfg(all(test, feature = "eval"))]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_inferred_from_the_prompt() {
        let m = |t: &str| vec![ChatMessage::user(t)];
        assert_eq!(
            infer_kind(&m("Which?\n\nA. x\nB. y\n\nAnswer with the letter."), None),
            Some(Kind::Choice)
        );
        assert_eq!(
            infer_kind(&m("Is it raining? Answer with yes or no only."), None),
            Some(Kind::YesNo)
        );
        assert_eq!(infer_kind(&m("Calculate 5 + 91"), None), Some(Kind::Number));
        assert_eq!(infer_kind(&m("Write a poem"), None), None);
        assert_eq!(
            infer_kind(&m("Write a poem"), Some(Kind::Exact)),
            Some(Kind::Exact)
        );
    }

    #[test]
    fn fit_recovers_a_separating_feature_and_generalises() {
        // y depends on feature 0 (mean_logprob) through a logistic link; the rest is noise.
        let mut state = 7u64;
        let mut rnd = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 10_000) as f64 / 10_000.0
        };
        let mut xs = Vec::new();
        let mut ys = Vec::new();
        for _ in 0..600 {
            let mut x = [0.0; N];
            for v in &mut x {
                *v = rnd();
            }
            x[0] = rnd() * 4.0 - 2.0;
            let p = 1.0 / (1.0 + (-3.0 * x[0]).exp());
            ys.push(rnd() < p);
            xs.push(x);
        }
        let m = CalibratedModel::fit(&xs, &ys, 1.0);
        m.validate().unwrap();
        assert!(m.weights[0] > 1.0, "{:?}", m.weights);
        let strongest = (0..N).max_by(|&a, &b| m.weights[a].abs().total_cmp(&m.weights[b].abs()));
        assert_eq!(strongest, Some(0));
        let groups = vec![0; xs.len()];
        let held_out = cross_validate(&xs, &ys, &groups, 5, 1, 1.0);
        let auc = crate::stats::auroc(&ys, &held_out).unwrap();
        assert!(auc > 0.8, "held-out AUROC {auc}");
        // A wrong feature list is refused.
        let mut bad = m.clone();
        bad.features.swap(0, 1);
        assert!(bad.validate().is_err());
    }

    #[test]
    fn the_gain_pair_ranks_items_the_large_model_fixes_first() {
        // Small is right when x0 > 0; large is right when x1 > 0. Escalating helps most where
        // x0 < 0 and x1 > 0.
        let mut xs = Vec::new();
        let (mut small, mut large) = (Vec::new(), Vec::new());
        for i in 0..400 {
            let mut x = [0.0; N];
            x[0] = f64::from(i % 20) / 10.0 - 0.95;
            x[1] = f64::from((i / 20) % 20) / 10.0 - 0.95;
            small.push(x[0] > 0.0);
            large.push(x[1] > 0.0);
            xs.push(x);
        }
        let m = CalibratedModel::fit_pair(&xs, &small, &large, 1.0);
        m.validate().unwrap();
        let at = |a: f64, b: f64| {
            let mut x = [0.0; N];
            x[0] = a;
            x[1] = b;
            m.gain_score(&x).unwrap()
        };
        assert!(at(-0.9, 0.9) < at(-0.9, -0.9), "fixable items rank lowest");
        assert!(
            at(-0.9, -0.9) < at(0.9, -0.9),
            "items only small gets right rank highest"
        );
        assert!(CalibratedModel::fit(&xs, &small, 1.0)
            .gain_score(&xs[0])
            .is_none());
    }

    #[test]
    fn folds_are_stratified_and_seeded() {
        let groups = [0, 0, 0, 0, 1, 1, 1, 1];
        let f = assign_folds(&groups, 2, 3);
        for g in 0..2 {
            let in_fold0 = (0..8).filter(|&i| groups[i] == g && f[i] == 0).count();
            assert_eq!(in_fold0, 2);
        }
        assert_eq!(f, assign_folds(&groups, 2, 3));
    }
}
