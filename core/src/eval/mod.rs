//! Evaluation and calibration: labelled items, prompt formats per answer kind, answer scoring,
//! and the metrics that say what a cascade threshold is worth (APGR, CPT, AUROC, the oracle).
//! `edgecascade eval` drives it; the calibrated decision model it fits lives in
//! [`crate::signal::calibrated`].

pub mod metrics;
pub mod score;
pub mod structured;

use crate::error::Invalid;
use serde::{Deserialize, Serialize};

use crate::types::{ChatMessage, ResponseFormat, Tool, ToolChoice};

pub use crate::types::Kind;

/// One labelled item of an eval set (a line of the JSONL file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// Unique within the set.
    pub id: String,
    /// The question; formatted with the prompt for its kind. Ignored when `messages` is set.
    #[serde(default)]
    pub question: Option<String>,
    /// The conversation to send as is, instead of a formatted question.
    #[serde(default)]
    pub messages: Option<Vec<ChatMessage>>,
    /// Options for `choice` items, lettered A, B, ... in order.
    #[serde(default)]
    pub choices: Vec<String>,
    /// The gold answer (structured items have `expected` instead).
    #[serde(default)]
    pub answer: String,
    /// Other accepted answers (`exact`).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// How to score; default `choice` when there are choices, else `exact`.
    #[serde(default)]
    pub kind: Option<Kind>,
    /// The task's name, for the probe's per-task terms (default: the dataset's file stem).
    #[serde(default)]
    pub task: Option<String>,
    /// A structured item: the answer's format (a JSON object, or JSON matching a schema).
    #[serde(default)]
    pub response_format: Option<ResponseFormat>,
    /// A structured item: the functions offered (OpenAI's `tools`, as `ChatRequest` has them).
    #[serde(default)]
    pub tools: Vec<Tool>,
    /// With tools: whether a call is required (default `auto`).
    #[serde(default)]
    pub tool_choice: Option<ToolChoice>,
    /// A structured item's expected answer: the JSON object (with `response_format`), or the
    /// call `{"name", "arguments": {arg: [accepted values]}}` (with `tools`); see
    /// [`structured`].
    #[serde(default)]
    pub expected: Option<serde_json::Value>,
}

/// What a structured item asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Structured {
    /// A JSON answer, scored field by field.
    Json,
    /// A tool call, scored by name and arguments.
    Call,
}

impl Structured {
    /// The name reports use.
    pub fn name(self) -> &'static str {
        match self {
            Structured::Json => "json",
            Structured::Call => "tool_call",
        }
    }
}

impl Item {
    /// The item's kind, defaulted.
    pub fn kind(&self) -> Kind {
        self.kind.unwrap_or(if self.choices.is_empty() {
            Kind::Exact
        } else {
            Kind::Choice
        })
    }

    /// The choices lettered as the prompts show them: "A. text", "B. text", ...
    pub fn lettered_choices(&self) -> Vec<String> {
        self.choices
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{}. {c}", (b'A' + i as u8) as char))
            .collect()
    }

    /// A structured item's kind: a call with tools, JSON with a response format.
    pub fn structured(&self) -> Option<Structured> {
        if !self.tools.is_empty() {
            Some(Structured::Call)
        } else if self
            .response_format
            .as_ref()
            .is_some_and(|f| !matches!(f, ResponseFormat::Text))
        {
            Some(Structured::Json)
        } else {
            None
        }
    }

    /// Checks the item can be run and scored.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.id.is_empty() {
            return Err("an item has an empty id".into());
        }
        match (self.structured(), &self.expected) {
            (Some(_), None) => {
                return Err(Invalid(format!(
                    "item {}: a structured item needs `expected`",
                    self.id
                )))
            }
            (None, Some(_)) => {
                return Err(Invalid(format!(
                    "item {}: `expected` needs `response_format` or `tools`",
                    self.id
                )))
            }
            (Some(Structured::Json), Some(e)) if !e.is_object() => {
                return Err(Invalid(format!(
                    "item {}: `expected` must be a JSON object",
                    self.id
                )))
            }
            (Some(Structured::Call), Some(e))
                if e.get("name").and_then(serde_json::Value::as_str).is_none() =>
            {
                return Err(Invalid(format!(
                    "item {}: `expected` must name the call (`name`)",
                    self.id
                )))
            }
            (Some(_), Some(_)) => {
                return if self.question.is_none() && self.messages.is_none() {
                    Err(Invalid(format!(
                        "item {}: needs question or messages",
                        self.id
                    )))
                } else {
                    Ok(())
                };
            }
            (None, None) => {
                if self.answer.trim().is_empty() {
                    return Err(Invalid(format!("item {}: needs an answer", self.id)));
                }
            }
        }
        match (&self.question, &self.messages) {
            (None, None) => {
                return Err(Invalid(format!(
                    "item {}: needs question or messages",
                    self.id
                )))
            }
            (_, Some(m)) if m.is_empty() => {
                return Err(Invalid(format!("item {}: messages is empty", self.id)))
            }
            _ => {}
        }
        if self.kind() == Kind::Choice && self.messages.is_none() && self.choices.len() < 2 {
            return Err(Invalid(format!(
                "item {}: a choice item needs two or more choices",
                self.id
            )));
        }
        if self.choices.len() > 26 {
            return Err(Invalid(format!("item {}: more than 26 choices", self.id)));
        }
        if self.kind() == Kind::Number && score::extract_number(&self.answer).is_none() {
            return Err(Invalid(format!(
                "item {}: answer {:?} is not a number",
                self.id, self.answer
            )));
        }
        Ok(())
    }
}

/// Prompt templates per kind. `{question}` is replaced by the question and `{choices}` by the
/// lettered options, one per line ("A. ..."). The defaults end with a plain instruction on the
/// answer's form, which models as small as 135M follow; override them per task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Prompts {
    /// For `choice` items.
    pub choice: String,
    /// For `number` items.
    pub number: String,
    /// For `exact` items.
    pub exact: String,
    /// For `yesno` items.
    pub yesno: String,
    /// An optional system message.
    pub system: Option<String>,
    /// Worked examples per kind, sent as earlier user/assistant turns before the item (through
    /// the same template), so the model sees the answer's form rather than only being told it.
    pub examples: Examples,
}

/// Few-shot examples per kind: `[[examples.exact]]` tables with `question` and `answer`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Examples {
    /// For `choice` items (the question includes its lettered options).
    pub choice: Vec<Shot>,
    /// For `number` items.
    pub number: Vec<Shot>,
    /// For `exact` items.
    pub exact: Vec<Shot>,
    /// For `yesno` items.
    pub yesno: Vec<Shot>,
}

/// One worked example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shot {
    /// The question, filled into the kind's template like an item's.
    pub question: String,
    /// The answer, as the model should write it.
    pub answer: String,
}

impl Default for Prompts {
    fn default() -> Self {
        Self {
            choice: "{question}\n\n{choices}\n\nAnswer with the letter of the correct option only."
                .into(),
            number: "{question}\n\nAnswer with the number only.".into(),
            exact: "{question}\n\nAnswer with a few words only.".into(),
            yesno: "{question}\n\nAnswer with yes or no only.".into(),
            system: None,
            examples: Examples::default(),
        }
    }
}

impl Prompts {
    /// The messages to send for `item`.
    pub fn messages(&self, item: &Item) -> Vec<ChatMessage> {
        if let Some(m) = &item.messages {
            return m.clone();
        }
        // A structured item's question goes as is: its format is in the request.
        if item.structured().is_some() {
            let mut out: Vec<ChatMessage> = self
                .system
                .iter()
                .map(|s| ChatMessage::system(s.clone()))
                .collect();
            out.push(ChatMessage::user(item.question.clone().unwrap_or_default()));
            return out;
        }
        let (template, shots) = match item.kind() {
            Kind::Choice => (&self.choice, &self.examples.choice),
            Kind::Number => (&self.number, &self.examples.number),
            Kind::Exact => (&self.exact, &self.examples.exact),
            Kind::YesNo => (&self.yesno, &self.examples.yesno),
        };
        // Without options (an example carries its own in its question), the options block goes
        // with the blank line before it.
        let fill = |question: &str, choices: &str| {
            let t = if choices.is_empty() {
                template.replace("\n\n{choices}", "")
            } else {
                template.clone()
            };
            t.replace("{choices}", choices)
                .replace("{question}", question)
        };
        let mut out = Vec::new();
        if let Some(s) = &self.system {
            out.push(ChatMessage::system(s.clone()));
        }
        for shot in shots {
            out.push(ChatMessage::user(fill(&shot.question, "")));
            out.push(ChatMessage::assistant(shot.answer.clone()));
        }
        let choices = item.lettered_choices().join("\n");
        out.push(ChatMessage::user(fill(
            item.question.as_deref().unwrap_or_default(),
            &choices,
        )));
        out
    }
}

/// The largest completion worth generating for a short answer of `kind`.
pub fn default_max_tokens(kind: Kind) -> u32 {
    match kind {
        Kind::Choice => 16,
        Kind::YesNo => 8,
        Kind::Number => 24,
        Kind::Exact => 32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Role;

    #[test]
    fn items_parse_and_format() {
        let item: Item = serde_json::from_str(
            r#"{"id":"1","question":"Which?","choices":["x","y"],"answer":"B"}"#,
        )
        .unwrap();
        assert_eq!(item.kind(), Kind::Choice);
        item.validate().unwrap();
        let m = Prompts::default().messages(&item);
        assert_eq!(
            m[0].content,
            "Which?\n\nA. x\nB. y\n\nAnswer with the letter of the correct option only."
        );
        let bad: Item =
            serde_json::from_str(r#"{"id":"2","question":"2+2","answer":"four","kind":"number"}"#)
                .unwrap();
        assert!(bad.validate().unwrap_err().0.contains("not a number"));
        let none: Item = serde_json::from_str(r#"{"id":"3","answer":"x"}"#).unwrap();
        assert!(none.validate().is_err());
        assert_eq!(Kind::parse("yesno"), Some(Kind::YesNo));
    }

    #[test]
    fn few_shot_examples_become_earlier_turns_through_the_same_template() {
        let prompts: Prompts = toml::from_str(
            r#"
            system = "Be brief."
            exact = "Q: {question}"
            [[examples.exact]]
            question = "Capital of France?"
            answer = "Paris"
            [[examples.choice]]
            question = "Pick one.\nA. x\nB. y"
            answer = "B"
            "#,
        )
        .unwrap();
        let item: Item =
            serde_json::from_str(r#"{"id":"1","question":"Capital of Peru?","answer":"Lima"}"#)
                .unwrap();
        let m = prompts.messages(&item);
        let turns: Vec<(Role, &str)> = m.iter().map(|m| (m.role, m.content.as_str())).collect();
        assert_eq!(
            turns,
            [
                (Role::System, "Be brief."),
                (Role::User, "Q: Capital of France?"),
                (Role::Assistant, "Paris"),
                (Role::User, "Q: Capital of Peru?"),
            ]
        );
        // A choice example carries its options in its question: no empty options block.
        let choice: Item = serde_json::from_str(
            r#"{"id":"2","question":"Which?","choices":["p","q"],"answer":"A"}"#,
        )
        .unwrap();
        let m = prompts.messages(&choice);
        assert_eq!(
            m[1].content,
            "Pick one.\nA. x\nB. y\n\nAnswer with the letter of the correct option only."
        );
        assert!(m[3].content.contains("A. p\nB. q"));
        // Unknown keys are refused, not ignored.
        assert!(
            toml::from_str::<Prompts>("[[examples.exact]]\nquestion = 'q'\nanswr = 'a'").is_err()
        );
    }
}
