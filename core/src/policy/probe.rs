//! The hidden-state probe: linear heads on the local model's own final hidden state (at the
//! prompt's end, and at the answer's end) plus the calibrated features, giving P(the small
//! model is right) and P(the large model is right) before generation and after it.
//!
//! `edgecascade eval --write-probe FILE` fits it (principal components of the hidden states,
//! L2 logistic regression, both chosen by nested cross-validation) and folds the components
//! back into one weight vector per head, so a decision is two dot products over the hidden
//! width plus a few dozen scalar terms. The file carries the local model's sha256 and the
//! feature layout: a probe for another model, or from a build with other features, refuses to
//! load.

use crate::error::Invalid;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::signal::calibrated::{self, sigmoid, Evidence};
use crate::types::{ChatMessage, Kind};

/// The probe file's format tag.
pub const FORMAT: &str = "edgecascade-probe/1";

/// Prompt-only scalar features, known before generation: the calibrated features that need no
/// answer (in [`calibrated::FEATURES`] they follow `format_ok`).
pub const PRE_FEATURES: [&str; 6] = {
    let f = calibrated::FEATURES;
    [f[9], f[10], f[11], f[12], f[13], f[14]]
};

/// One logistic head: standardised scalar features and a weight vector over the hidden state
/// (the prompt's, then, for post-generation heads, the answer's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    /// Per scalar feature: mean subtracted.
    pub mean: Vec<f64>,
    /// Per scalar feature: scale divided by.
    pub scale: Vec<f64>,
    /// Per scalar feature: weight.
    pub weights: Vec<f64>,
    /// The hidden state's mean, subtracted (one or two hidden widths).
    pub hidden_mean: Vec<f32>,
    /// Weights over the centred hidden state.
    pub hidden_weights: Vec<f32>,
    /// The intercept.
    pub bias: f64,
}

impl Head {
    /// The logit for scalar features `x` and hidden state `h`.
    pub fn logit(&self, x: &[f64], h: &[f32]) -> f64 {
        let s: f64 = (0..self.weights.len())
            .map(|i| self.weights[i] * (x[i] - self.mean[i]) / self.scale[i])
            .sum();
        let d: f32 = h
            .iter()
            .zip(&self.hidden_mean)
            .zip(&self.hidden_weights)
            .map(|((v, m), w)| (v - m) * w)
            .sum();
        self.bias + s + f64::from(d)
    }

    /// The probability.
    pub fn predict(&self, x: &[f64], h: &[f32]) -> f64 {
        sigmoid(self.logit(x, h))
    }

    fn check(&self, what: &str, scalars: usize, hidden: usize) -> Result<(), String> {
        if [self.mean.len(), self.scale.len(), self.weights.len()] != [scalars; 3]
            || self.hidden_mean.len() != hidden
            || self.hidden_weights.len() != hidden
        {
            return Err(format!(
                "probe head {what} has the wrong shape (expected {scalars} scalar and {hidden} hidden weights)"
            ));
        }
        let finite = self
            .mean
            .iter()
            .chain(&self.weights)
            .chain([&self.bias])
            .all(|v| v.is_finite())
            && self.scale.iter().all(|s| s.is_finite() && *s > 0.0)
            && self
                .hidden_mean
                .iter()
                .chain(&self.hidden_weights)
                .all(|v| v.is_finite());
        if !finite {
            return Err(format!(
                "probe head {what} has a non-finite value or a scale <= 0"
            ));
        }
        Ok(())
    }
}

/// P(small right) and P(large right) at one stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadPair {
    /// P(the small model's answer is right).
    pub small: Head,
    /// P(the large model's answer is right).
    pub large: Head,
}

impl HeadPair {
    /// P(small right) - P(large right): the accuracy expected to be lost by escalating
    /// (negative: escalating is expected to help).
    pub fn gain_score(&self, x: &[f64], h: &[f32]) -> f64 {
        self.small.predict(x, h) - self.large.predict(x, h)
    }
}

/// A fitted probe (the probe file, JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    /// Always [`FORMAT`].
    pub format: String,
    /// Lowercase hex sha256 of the local model file it was fitted on.
    pub model_sha256: String,
    /// The model's hidden width.
    pub n_embd: usize,
    /// The graph tensor its hidden states were read from (files without it: `result_norm`).
    #[serde(default = "final_tensor")]
    pub hidden_tensor: String,
    /// The scalar features of the pre-generation heads, in order: [`PRE_FEATURES`], then one
    /// `task=<name>` per task.
    pub pre_features: Vec<String>,
    /// The scalar features of the post-generation heads: [`calibrated::FEATURES`], then the
    /// task features.
    pub post_features: Vec<String>,
    /// Task names it learned per-task terms for (a request's `task`).
    pub tasks: Vec<String>,
    /// Heads on the prompt alone (hidden state at the prompt's end).
    pub pre: HeadPair,
    /// Heads after the answer (both hidden states).
    pub post: HeadPair,
    /// Go remote before generation when the pre-generation gain score is below this
    /// (`None`: never; `eval` recommends one).
    #[serde(default)]
    pub pre_threshold: Option<f64>,
    /// Escalate after generation when the post-generation gain score is below this.
    pub threshold: f64,
    /// What it was fitted on, for people reading it.
    #[serde(default)]
    pub fitted_on: String,
}

fn final_tensor() -> String {
    crate::engine::local::FINAL_HIDDEN_TENSOR.to_owned()
}

/// Why a probe was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// The file could not be read or parsed.
    #[error("probe {path}: {detail}")]
    Read {
        /// The file.
        path: String,
        /// What failed.
        detail: String,
    },
    /// It was fitted on another model.
    #[error("probe {path} was fitted on the model with sha256 {expected}, but the local model {model} has sha256 {actual}: refit it with `edgecascade eval --write-probe`")]
    OtherModel {
        /// The file.
        path: String,
        /// The model file loaded.
        model: String,
        /// The probe's sha256.
        expected: String,
        /// The loaded model's sha256.
        actual: String,
    },
    /// Its layout does not match this build or the model.
    #[error("probe {path}: {detail}")]
    Layout {
        /// The file.
        path: String,
        /// What does not match.
        detail: String,
    },
}

impl Probe {
    /// The feature names this build computes, for `tasks`.
    pub fn names(tasks: &[String]) -> (Vec<String>, Vec<String>) {
        let task_names = tasks.iter().map(|t| format!("task={t}"));
        let pre = PRE_FEATURES
            .iter()
            .map(|s| (*s).to_owned())
            .chain(task_names.clone())
            .collect();
        let post = calibrated::FEATURES
            .iter()
            .map(|s| (*s).to_owned())
            .chain(task_names)
            .collect();
        (pre, post)
    }

    /// Checks the layout against this build's features and a model of width `n_embd` whose
    /// hidden states are read from `tensor`.
    pub fn validate(&self, n_embd: usize, tensor: &str) -> Result<(), Invalid> {
        if self.format != FORMAT {
            return Err(Invalid(format!(
                "format {:?}, this build reads {FORMAT:?}",
                self.format
            )));
        }
        let (pre, post) = Self::names(&self.tasks);
        if self.pre_features != pre || self.post_features != post {
            return Err(Invalid(format!("fitted on features {:?} / {:?}, but this build computes {pre:?} / {post:?}: refit it with `edgecascade eval --write-probe`", self.pre_features, self.post_features)));
        }
        if self.hidden_tensor != tensor {
            return Err(Invalid(format!(
                "fitted on the hidden states of {:?}, but this engine reads {tensor:?} (EDGECASCADE_HIDDEN_LAYER): refit it, or read the tensor it was fitted on",
                self.hidden_tensor
            )));
        }
        if self.n_embd != n_embd {
            return Err(Invalid(format!(
                "fitted on a hidden width of {}, the model has {n_embd}",
                self.n_embd
            )));
        }
        for (what, head, scalars, hidden) in [
            ("pre.small", &self.pre.small, pre.len(), n_embd),
            ("pre.large", &self.pre.large, pre.len(), n_embd),
            ("post.small", &self.post.small, post.len(), 2 * n_embd),
            ("post.large", &self.post.large, post.len(), 2 * n_embd),
        ] {
            head.check(what, scalars, hidden)?;
        }
        if !self.threshold.is_finite() || self.pre_threshold.is_some_and(|t| !t.is_finite()) {
            return Err("a threshold is not finite".into());
        }
        Ok(())
    }

    /// Reads the probe at `path` and checks it against the model (its sha256 and width).
    pub fn load(
        path: &Path,
        model_sha256: &str,
        model: &Path,
        n_embd: usize,
        tensor: &str,
    ) -> Result<Self, ProbeError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ProbeError::Read {
            path: p.clone(),
            detail: e.to_string(),
        })?;
        let probe: Probe = serde_json::from_str(&text).map_err(|e| ProbeError::Read {
            path: p.clone(),
            detail: e.to_string(),
        })?;
        if !probe.model_sha256.eq_ignore_ascii_case(model_sha256) {
            return Err(ProbeError::OtherModel {
                path: p,
                model: model.display().to_string(),
                expected: probe.model_sha256,
                actual: model_sha256.to_owned(),
            });
        }
        probe
            .validate(n_embd, tensor)
            .map_err(|e| ProbeError::Layout {
                path: p,
                detail: e.0,
            })?;
        Ok(probe)
    }

    fn task_terms<'a>(&'a self, task: Option<&'a str>) -> impl Iterator<Item = f64> + 'a {
        self.tasks
            .iter()
            .map(move |t| f64::from(task == Some(t.as_str())))
    }

    /// The pre-generation scalar features.
    pub fn pre_x(
        &self,
        messages: &[ChatMessage],
        hint: Option<Kind>,
        prompt_tokens: u32,
        task: Option<&str>,
    ) -> Vec<f64> {
        pre_features(messages, hint, prompt_tokens)
            .into_iter()
            .chain(self.task_terms(task))
            .collect()
    }

    /// The post-generation scalar features.
    pub fn post_x(&self, e: &Evidence<'_>, task: Option<&str>) -> Vec<f64> {
        calibrated::features(e)
            .into_iter()
            .chain(self.task_terms(task))
            .collect()
    }

    /// The pre-generation gain score (P(small right) - P(large right) from the prompt alone).
    pub fn pre_score(&self, x: &[f64], prompt_hidden: &[f32]) -> f64 {
        self.pre.gain_score(x, prompt_hidden)
    }

    /// The post-generation gain score, on both hidden states.
    pub fn post_score(&self, x: &[f64], prompt_hidden: &[f32], answer_hidden: &[f32]) -> f64 {
        let h: Vec<f32> = prompt_hidden.iter().chain(answer_hidden).copied().collect();
        self.post.gain_score(x, &h)
    }
}

/// The prompt-only scalar features ([`PRE_FEATURES`]), as the calibrated features hold them.
pub fn pre_features(messages: &[ChatMessage], hint: Option<Kind>, prompt_tokens: u32) -> [f64; 6] {
    calibrated::prompt_features(messages, hint, prompt_tokens)
}

#[cfg(test)]
mod tests {
    use super::PRE_FEATURES;
    use crate::signal::calibrated::{features, prompt_features, Evidence, FEATURES};
    use crate::types::{ChatMessage, FinishReason};

    #[test]
    fn the_prompt_features_sit_in_the_full_vector_under_their_names() {
        let m = [ChatMessage::user("Calculate 12 + 30")];
        let e = Evidence {
            messages: &m,
            hint: None,
            prompt_tokens: 20,
            signals: &[],
            text: "42",
            finish: FinishReason::Stop,
            hidden: None,
            task: None,
        };
        let full = features(&e);
        let pre = prompt_features(&m, None, 20);
        for (i, name) in PRE_FEATURES.iter().enumerate() {
            let at = FEATURES.iter().position(|f| f == name).unwrap();
            assert_eq!(full[at].to_bits(), pre[i].to_bits(), "{name}");
        }
        assert_eq!(pre[1], 1.0, "a number is asked for");
    }
}
