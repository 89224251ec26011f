//! Plain data of the public API: requests, responses, events.
//!
//! Everything here is FFI-friendly (strings, numbers, vectors, options, plain enums) so the
//! bindings can mirror it one to one.

use serde::{Deserialize, Serialize};

/// Who wrote a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum Role {
    /// Instructions for the model.
    System,
    /// The person asking.
    User,
    /// The model's earlier answers.
    Assistant,
    /// The result of a tool call (OpenAI's `tool` role); `tool_call_id` names the call.
    Tool,
}

impl Role {
    /// The role's name in chat templates and the OpenAI API.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct ChatMessage {
    /// Who wrote it.
    pub role: Role,
    /// What they wrote.
    pub content: String,
    /// An assistant turn's calls to the app's tools.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "uniffi", uniffi(default))]
    pub tool_calls: Vec<ToolCall>,
    /// A `tool` turn: the id of the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "uniffi", uniffi(default))]
    pub tool_call_id: Option<String>,
}

/// A function the model may call (OpenAI's `tools[].function`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct Tool {
    /// The function's name: letters, digits, `_` and `-`, at most 64.
    pub name: String,
    /// What it does, for the model.
    #[serde(default)]
    #[cfg_attr(feature = "uniffi", uniffi(default))]
    pub description: Option<String>,
    /// Its parameters, as a JSON schema in JSON text (an object schema); empty for none.
    #[serde(default)]
    #[cfg_attr(feature = "uniffi", uniffi(default))]
    pub parameters: String,
}

/// Whether and which tool the model must call (OpenAI's `tool_choice`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum ToolChoice {
    /// The model answers in text or calls tools, as it sees fit.
    #[default]
    Auto,
    /// No tool calls: a text answer.
    None,
    /// At least one tool call (locally, decoding is constrained to a valid call).
    Required,
    /// A call to this function (constrained locally).
    Function {
        /// The function's name.
        name: String,
    },
}

/// One call the model made to an app's tool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct ToolCall {
    /// The call's id, which the `tool` message answering it repeats.
    pub id: String,
    /// The function called.
    pub name: String,
    /// Its arguments, as a JSON object in JSON text.
    pub arguments: String,
}

impl ChatMessage {
    /// A message of `role` with plain content.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }
    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }
    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }
    /// An assistant turn that called tools (and may have said something first).
    pub fn assistant_calls(content: impl Into<String>, calls: Vec<ToolCall>) -> Self {
        Self {
            tool_calls: calls,
            ..Self::new(Role::Assistant, content)
        }
    }
    /// The result of the tool call `id`.
    pub fn tool_result(id: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            tool_call_id: Some(id.into()),
            ..Self::new(Role::Tool, content)
        }
    }
}

/// Sampling parameters. `temperature <= 0` means greedy decoding, which is deterministic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct Sampling {
    /// Softmax temperature; 0 is greedy.
    pub temperature: f32,
    /// Keep the k most likely tokens (0 disables).
    pub top_k: u32,
    /// Nucleus sampling mass (1.0 disables).
    pub top_p: f32,
    /// Minimum probability relative to the top token (0 disables).
    pub min_p: f32,
    /// Repetition penalty (1.0 disables).
    pub repeat_penalty: f32,
    /// How many recent tokens the repetition penalty looks at.
    pub repeat_last_n: u32,
    /// RNG seed; `None` picks one at random.
    pub seed: Option<u32>,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: None,
        }
    }
}

/// The kind of answer a request expects (a task hint for the calibrated cascade signal; `eval`
/// scores by it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum Kind {
    /// A choice letter (A, B, ...).
    Choice,
    /// A number, tolerant of commas, units and trailing text.
    Number,
    /// A normalised string, or one of its aliases.
    Exact,
    /// Yes or no.
    #[serde(alias = "yes_no")]
    YesNo,
}

impl Kind {
    /// All kinds, in a fixed order.
    pub const ALL: [Kind; 4] = [Kind::Choice, Kind::Number, Kind::Exact, Kind::YesNo];

    /// The config/JSON name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Choice => "choice",
            Kind::Number => "number",
            Kind::Exact => "exact",
            Kind::YesNo => "yesno",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s || (s == "yes_no" && *k == Kind::YesNo))
    }
}

/// Which tier a request must use, overriding the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum PolicyOverride {
    /// Let the router and cascade decide.
    #[default]
    Auto,
    /// Only the local model.
    ForceLocal,
    /// Only the remote model.
    ForceRemote,
}

/// What shape the answer must take (OpenAI's `response_format`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum ResponseFormat {
    /// Free text.
    #[default]
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON matching a JSON schema. Locally, decoding is constrained to it (a schema feature
    /// that cannot be enforced is an `invalid_request` error); remote answers are checked.
    JsonSchema {
        /// The schema's name.
        name: String,
        /// The JSON schema, as JSON text.
        schema: String,
        /// OpenAI's `strict` flag, passed through to the remote tier.
        strict: bool,
    },
}

/// One chat completion request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct ChatRequest {
    /// The conversation so far, ending with the user's turn.
    pub messages: Vec<ChatMessage>,
    /// The most tokens to generate.
    pub max_tokens: u32,
    /// Sampling parameters.
    pub sampling: Sampling,
    /// Stop sequences; generation ends before any of them, and they are never emitted.
    pub stop: Vec<String>,
    /// Tier override.
    pub policy: PolicyOverride,
    /// A private request never leaves the device.
    pub private: bool,
    /// What kind of answer the request wants, if the app knows: the calibrated cascade signal
    /// uses it (otherwise it infers the kind from the prompt's wording).
    pub task_hint: Option<Kind>,
    /// The task's name, if the app has one (for the hidden-state probe's per-task terms:
    /// `eval` names tasks by their dataset).
    #[cfg_attr(feature = "uniffi", uniffi(default))]
    pub task: Option<String>,
    /// In the cascade, hold the local draft's tokens until the route is settled: sent at once
    /// when the local answer is kept (accepted, or degraded after a failed escalation), never
    /// when it escalates (the remote answer streams instead). For callers that cannot take
    /// text back, such as OpenAI clients.
    pub hold_draft: bool,
    /// The answer's shape: text (default), a JSON object, or JSON matching a schema.
    pub response_format: ResponseFormat,
    /// Functions the model may call.
    #[cfg_attr(feature = "uniffi", uniffi(default))]
    pub tools: Vec<Tool>,
    /// Whether it must call one (ignored without tools).
    pub tool_choice: ToolChoice,
}

impl Default for ChatRequest {
    fn default() -> Self {
        Self {
            messages: Vec::new(),
            max_tokens: 256,
            sampling: Sampling::default(),
            stop: Vec::new(),
            policy: PolicyOverride::Auto,
            private: false,
            task_hint: None,
            task: None,
            hold_draft: false,
            response_format: ResponseFormat::Text,
            tools: Vec::new(),
            tool_choice: ToolChoice::Auto,
        }
    }
}

impl ChatRequest {
    /// A single user question with default settings.
    pub fn user(prompt: impl Into<String>) -> Self {
        Self {
            messages: vec![ChatMessage::user(prompt)],
            ..Self::default()
        }
    }
}

/// Which tier produced text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum Tier {
    /// The on-device model.
    Local,
    /// The remote endpoint.
    Remote,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum FinishReason {
    /// End of turn or a stop sequence.
    Stop,
    /// `max_tokens` or the end of the context.
    Length,
    /// Cancelled by the caller.
    Cancelled,
    /// The model called tools ([`Response::tool_calls`]).
    #[serde(rename = "tool_calls")]
    ToolCalls,
}

/// Token counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct TokenUsage {
    /// Tokens in the prompt.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
}

/// Token counts, overall and per tier.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct Usage {
    /// Prompt tokens, all tiers.
    pub prompt_tokens: u32,
    /// Completion tokens, all tiers.
    pub completion_tokens: u32,
    /// The local tier's share, if it ran.
    pub local: Option<TokenUsage>,
    /// The remote tier's share, if it ran.
    pub remote: Option<TokenUsage>,
    /// True where a server sent no usage and the counts are estimates.
    pub estimated: bool,
    /// Prompt tokens that were actually evaluated (the rest came from the KV cache).
    pub prompt_tokens_evaluated: u32,
}

/// Timings of one response, in milliseconds and tokens per second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct Timings {
    /// Time to load the model, if this request loaded it (0 otherwise).
    pub load_ms: f64,
    /// From the request to the first generated token.
    pub ttft_ms: f64,
    /// Prompt tokens evaluated per second.
    pub prefill_tok_s: f64,
    /// Generated tokens per second, after the first.
    pub decode_tok_s: f64,
    /// Wall time of the whole request.
    pub total_ms: f64,
}

/// Per-response summary of the local model's token-level confidence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct Confidence {
    /// Mean log-probability of the chosen tokens (natural log).
    pub mean_logprob: f64,
    /// Lowest probability of any chosen token.
    pub min_prob: f64,
    /// 10th percentile of the chosen tokens' probabilities.
    pub p10_prob: f64,
    /// Mean entropy (nats) of the next-token distributions.
    pub mean_entropy: f64,
    /// Mean gap between the top-1 and top-2 probabilities.
    pub mean_margin: f64,
    /// Probability of the first chosen token.
    pub first_prob: f64,
    /// Number of tokens summarised.
    pub tokens: u32,
    /// The largest gap between the probability of the model's own top token and that of the
    /// token written: 0 when every token was the model's first choice, large when a grammar
    /// forced a token the model did not want.
    #[serde(default)]
    pub max_forced: f64,
}

/// Where an answer came from. The why is [`Response::reason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum Route {
    /// Answered on the device.
    Local,
    /// Answered by the remote tier.
    Remote,
    /// The local answer was not good enough; the remote tier answered.
    Escalated,
    /// The remote tier failed after escalation; this is the local answer
    /// ([`Response::remote_error`] says what went wrong remotely).
    DegradedLocal,
}

impl Route {
    /// The stable name used in JSON, the ledger and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Route::Local => "local",
            Route::Remote => "remote",
            Route::Escalated => "escalated",
            Route::DegradedLocal => "degraded_local",
        }
    }
}

/// The stable code for why a request took its route. The prose is [`Response::reason_detail`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum Reason {
    /// The cascade kept the local answer: its confidence cleared the threshold.
    Accepted,
    /// The finished local answer's confidence was below the threshold.
    LowConfidence,
    /// The local answer's rolling confidence fell under the floor while it was generated.
    MidStreamLowConfidence,
    /// The request is private: it never leaves the device.
    Private,
    /// The request forced a tier.
    Forced,
    /// No remote tier is configured.
    NoRemote,
    /// No local model is loaded yet: everything goes to the remote tier.
    NoLocalModel,
    /// The remote tier is unavailable (its circuit breaker is open).
    RemoteUnavailable,
    /// The remote budget refuses the request's worst case.
    BudgetExhausted,
    /// The prompt does not fit the local context.
    ContextTooLong,
    /// A `[[router.rules]]` entry or `[router] default` decided.
    Rule,
    /// The caller cancelled before the cascade could decide.
    Cancelled,
    /// The device has no network: everything stays local.
    Offline,
    /// The app is in the background: the request went to the remote tier rather than run the
    /// local model (no GPU work in the background, as iOS requires).
    Background,
    /// The device is hot (serious or critical): the cascade escalated an answer it would
    /// otherwise have kept.
    Thermal,
    /// Low-power mode or a low battery: the cascade escalated an answer it would otherwise
    /// have kept.
    LowPower,
    /// A metered network: the cascade kept an answer it would otherwise have escalated.
    Metered,
    /// The local answer does not match the requested response format (cut short by
    /// `max_tokens`, or not JSON): the cascade escalated it.
    InvalidOutput,
    /// The hidden-state probe, reading the prompt, predicted the local answer was not worth
    /// having: the request went remote before any local token was decoded.
    PredictedLowGain,
    /// The local model failed while it answered (a decode or context error): the cascade
    /// sent the request to the remote tier rather than fail it.
    LocalFailed,
}

impl Reason {
    /// The stable code, as in JSON and the ledger.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Accepted => "accepted",
            Reason::LowConfidence => "low_confidence",
            Reason::MidStreamLowConfidence => "mid_stream_low_confidence",
            Reason::Private => "private",
            Reason::Forced => "forced",
            Reason::NoRemote => "no_remote",
            Reason::NoLocalModel => "no_local_model",
            Reason::RemoteUnavailable => "remote_unavailable",
            Reason::BudgetExhausted => "budget_exhausted",
            Reason::ContextTooLong => "context_too_long",
            Reason::Rule => "rule",
            Reason::Cancelled => "cancelled",
            Reason::Offline => "offline",
            Reason::Background => "background",
            Reason::Thermal => "thermal",
            Reason::LowPower => "low_power",
            Reason::Metered => "metered",
            Reason::InvalidOutput => "invalid_output",
            Reason::PredictedLowGain => "predicted_low_gain",
            Reason::LocalFailed => "local_failed",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How hot the device is, in the platforms' own four steps (iOS `ProcessInfo.ThermalState`;
/// Android's `PowerManager` thermal status maps onto them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum Thermal {
    /// Normal.
    #[default]
    Nominal,
    /// Slightly elevated.
    Fair,
    /// High: the system is throttling; the cascade escalates more readily.
    Serious,
    /// Very high: the cascade escalates more readily.
    Critical,
}

/// The network the device is on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum Network {
    /// Unmetered (Wi-Fi, Ethernet), or not known.
    #[default]
    Unmetered,
    /// Metered (cellular, a hotspot): the cascade escalates less readily.
    Metered,
    /// No network: everything stays local.
    None,
}

/// What the app reports about the device, through `Runtime::set_device_state`. The default is
/// a cool, plugged-in device in the foreground on an unmetered network: no effect on routing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct DeviceState {
    /// How hot the device is.
    pub thermal: Thermal,
    /// Battery charge, 0 to 1; `None` when unknown or on mains power.
    #[cfg_attr(feature = "uniffi", uniffi(default))]
    pub battery: Option<f64>,
    /// The battery is charging.
    #[cfg_attr(feature = "uniffi", uniffi(default))]
    pub charging: bool,
    /// The system's low-power (battery saver) mode is on.
    #[cfg_attr(feature = "uniffi", uniffi(default))]
    pub low_power: bool,
    /// The network.
    pub network: Network,
    /// The app is in the background.
    #[cfg_attr(feature = "uniffi", uniffi(default))]
    pub background: bool,
}

/// Cost of one response in USD.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct Cost {
    /// Spent on the local tier.
    pub local_usd: f64,
    /// Spent on the remote tier.
    pub remote_usd: f64,
    /// The sum.
    pub total_usd: f64,
    /// What the request would have cost sent straight to the remote tier.
    pub all_remote_usd: f64,
}

/// A finished answer, with everything known about how it was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct Response {
    /// The answer.
    pub text: String,
    /// Where it came from.
    pub route: Route,
    /// The stable code for the routing decision.
    pub reason: Reason,
    /// The decision in prose.
    pub reason_detail: String,
    /// What went wrong remotely, when the route is [`Route::DegradedLocal`].
    pub remote_error: Option<String>,
    /// Why generation ended.
    pub finish_reason: FinishReason,
    /// Token counts.
    pub usage: Usage,
    /// Timings.
    pub timings: Timings,
    /// Local confidence, if the local tier ran.
    pub confidence: Option<Confidence>,
    /// Cost.
    pub cost: Cost,
    /// Oldest messages dropped to fit the context (`context_policy = "truncate_oldest"`).
    pub truncated_messages: u32,
    /// Request id (also the ledger record's id).
    pub id: String,
    /// Set when the answer was produced but its cost record could not be written.
    pub ledger_error: Option<String>,
    /// With a JSON response format: why the answer does not match it (cut short, not JSON,
    /// outside the schema). `None` when it matches, or for text.
    pub format_error: Option<String>,
    /// The model's calls to the request's tools (then `finish_reason` is `ToolCalls` and
    /// `text` holds whatever it said besides).
    pub tool_calls: Vec<ToolCall>,
}

/// What a streaming caller sees: `Token` events, maybe `Escalating` (and, if the escalation
/// gives no answer, `FallingBack`), then exactly one terminal event, `Done` or `Failed`.
#[derive(Debug, Clone)]
pub enum Event {
    /// Text, as it is generated. Always whole UTF-8 characters.
    Token {
        /// The text.
        text: String,
        /// Which tier produced it.
        tier: Tier,
    },
    /// The local draft is being abandoned for the remote tier.
    Escalating {
        /// Why.
        reason: Reason,
    },
    /// The escalation gave no answer (the remote tier failed, or the budget refused it): the
    /// text streamed since `Escalating` (remote text, possibly cut) is void, and the local
    /// answer stands again, its draft as streamed before `Escalating`, then its continuation.
    /// With a held draft the caller saw neither (the remote text was held too, and is
    /// dropped); the event still says that the escalation was undone.
    FallingBack {
        /// Why, in prose.
        detail: String,
    },
    /// The final answer. Terminal: nothing follows it.
    Done(Box<Response>),
    /// The request failed. Terminal: nothing follows it.
    Failed(crate::error::Error),
}

/// Receives events while a request runs. Called on the generating thread. A panic in
/// `on_event` ends the request with an `Internal` error; it never crosses into the caller.
pub trait EventSink: Send + Sync {
    /// One event.
    fn on_event(&self, event: Event);
}

/// A sink that drops every event.
pub struct NullSink;

impl EventSink for NullSink {
    fn on_event(&self, _: Event) {}
}

impl<F: Fn(Event) + Send + Sync> EventSink for F {
    fn on_event(&self, event: Event) {
        self(event);
    }
}

impl Response {
    /// The JSON object of the CLI contract (`ask --json`, DESIGN.md), also used by `serve`'s
    /// `edgecascade` extension field.
    pub fn to_contract_json(&self) -> serde_json::Value {
        let tier = |u: &Option<TokenUsage>| {
            u.map(|u| serde_json::json!({"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens}))
        };
        serde_json::json!({
            "text": self.text,
            "route": self.route.name(),
            "reason": self.reason,
            "reason_detail": self.reason_detail,
            "remote_error": self.remote_error,
            "finish_reason": self.finish_reason,
            "usage": {
                "prompt_tokens": self.usage.prompt_tokens,
                "completion_tokens": self.usage.completion_tokens,
                "prompt_tokens_evaluated": self.usage.prompt_tokens_evaluated,
                "estimated": self.usage.estimated,
                "by_tier": {"local": tier(&self.usage.local), "remote": tier(&self.usage.remote)},
            },
            "timings": {
                "ttft_ms": self.timings.ttft_ms,
                "prefill_tok_s": self.timings.prefill_tok_s,
                "decode_tok_s": self.timings.decode_tok_s,
                "total_ms": self.timings.total_ms,
            },
            "confidence": self.confidence.map(|c| serde_json::json!({
                "mean_logprob": c.mean_logprob,
                "min_prob": c.min_prob,
                "p10_prob": c.p10_prob,
                "mean_entropy": c.mean_entropy,
                "mean_margin": c.mean_margin,
                "first_prob": c.first_prob,
                "max_forced": c.max_forced,
            })),
            "cost": {
                "local_usd": self.cost.local_usd,
                "remote_usd": self.cost.remote_usd,
                "total_usd": self.cost.total_usd,
                "all_remote_usd": self.cost.all_remote_usd,
            },
            "truncated_messages": self.truncated_messages,
            "id": self.id,
            "ledger_error": self.ledger_error,
            "format_error": self.format_error,
            "tool_calls": self.tool_calls.iter().map(|c| serde_json::json!({
                "id": c.id, "name": c.name, "arguments": c.arguments,
            })).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{Reason, Route};

    /// Every variant, listed by a match with no wildcard: a new variant fails to compile here
    /// until it is added, so the string test below covers all of them.
    fn every_reason() -> Vec<Reason> {
        let all = vec![
            Reason::Accepted,
            Reason::LowConfidence,
            Reason::MidStreamLowConfidence,
            Reason::Private,
            Reason::Forced,
            Reason::NoRemote,
            Reason::NoLocalModel,
            Reason::RemoteUnavailable,
            Reason::BudgetExhausted,
            Reason::ContextTooLong,
            Reason::Rule,
            Reason::Cancelled,
            Reason::Offline,
            Reason::Background,
            Reason::Thermal,
            Reason::LowPower,
            Reason::Metered,
            Reason::InvalidOutput,
            Reason::PredictedLowGain,
            Reason::LocalFailed,
        ];
        for r in &all {
            match r {
                Reason::Accepted
                | Reason::LowConfidence
                | Reason::MidStreamLowConfidence
                | Reason::Private
                | Reason::Forced
                | Reason::NoRemote
                | Reason::NoLocalModel
                | Reason::RemoteUnavailable
                | Reason::BudgetExhausted
                | Reason::ContextTooLong
                | Reason::Rule
                | Reason::Cancelled
                | Reason::Offline
                | Reason::Background
                | Reason::Thermal
                | Reason::LowPower
                | Reason::Metered
                | Reason::InvalidOutput
                | Reason::PredictedLowGain
                | Reason::LocalFailed => {}
            }
        }
        all
    }

    /// The reason codes apps, the ledger and the metrics match on: each one's string, in
    /// `as_str`, `Display` and serde alike.
    #[test]
    fn every_reason_code_is_stable() {
        let expected = [
            "accepted",
            "low_confidence",
            "mid_stream_low_confidence",
            "private",
            "forced",
            "no_remote",
            "no_local_model",
            "remote_unavailable",
            "budget_exhausted",
            "context_too_long",
            "rule",
            "cancelled",
            "offline",
            "background",
            "thermal",
            "low_power",
            "metered",
            "invalid_output",
            "predicted_low_gain",
            "local_failed",
        ];
        let all = every_reason();
        assert_eq!(all.len(), expected.len());
        for (r, s) in all.into_iter().zip(expected) {
            assert_eq!(r.as_str(), s);
            assert_eq!(r.to_string(), s);
            assert_eq!(serde_json::to_value(r).unwrap(), s);
            assert_eq!(serde_json::from_value::<Reason>(s.into()).unwrap(), r);
        }
    }

    #[test]
    fn every_route_name_is_stable() {
        for (r, s) in [
            (Route::Local, "local"),
            (Route::Remote, "remote"),
            (Route::Escalated, "escalated"),
            (Route::DegradedLocal, "degraded_local"),
        ] {
            match r {
                Route::Local | Route::Remote | Route::Escalated | Route::DegradedLocal => {}
            }
            assert_eq!(r.name(), s);
            assert_eq!(serde_json::to_value(r).unwrap(), s);
            assert_eq!(serde_json::from_value::<Route>(s.into()).unwrap(), r);
        }
    }
}
