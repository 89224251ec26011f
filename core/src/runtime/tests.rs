//! The request flow driven by scripted tiers: routing, the cascade, cancellation and failure in
//! each leg, budgets and their reservations, terminal events, panics, closing. Fast, no model.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use super::route::WORST_CASE_COMPLETION;
use super::*;
use crate::config::BudgetConfig;
use crate::cost;
use crate::engine::local::{LocalOutput, TokenEvent, TokenSignal};
use crate::engine::remote::{RemoteError, RemoteOutput};
use crate::error::{ErrorKind, LocalError};
use crate::types::{
    ChatMessage, Event, FinishReason, NullSink, PolicyOverride, Reason, ResponseFormat, Route, Tier,
};

/// A local tier that "generates" a fixed list of tokens, each with a given probability.
struct ScriptedLocal {
    tokens: Vec<(&'static str, f32)>,
    /// Claims to run on a GPU.
    gpu: bool,
    /// Keep generating the last token until cancelled (for cancel and close tests).
    endless: bool,
    generated: AtomicU32,
    /// A failure to inject.
    fault: LocalFault,
}

/// Where a scripted local tier breaks.
#[derive(Clone, Copy, PartialEq)]
enum LocalFault {
    None,
    /// Decoding fails after the scripted tokens have streamed.
    Decode,
    /// Continuing a cut draft fails.
    Continue,
    /// Checking an answer's format panics (a bug after the remote answered).
    PanicOnCheck,
}

impl ScriptedLocal {
    fn new(tokens: &[(&'static str, f32)]) -> Arc<Self> {
        Arc::new(Self {
            tokens: tokens.to_vec(),
            gpu: false,
            endless: false,
            generated: AtomicU32::new(0),
            fault: LocalFault::None,
        })
    }
    fn failing(tokens: &[(&'static str, f32)], fault: LocalFault) -> Arc<Self> {
        Arc::new(Self {
            fault,
            ..Arc::into_inner(Self::new(tokens)).unwrap()
        })
    }
    fn endless() -> Arc<Self> {
        Arc::new(Self {
            tokens: vec![("la ", 0.9)],
            gpu: false,
            endless: true,
            generated: AtomicU32::new(0),
            fault: LocalFault::None,
        })
    }
}

fn output(text: String, n: u32, finish: FinishReason, signals: Vec<TokenSignal>) -> LocalOutput {
    LocalOutput {
        text,
        finish_reason: finish,
        prompt_tokens: 10,
        prompt_tokens_evaluated: 10,
        completion_tokens: n,
        signals,
        ttft_ms: 1.0,
        prefill_ms: 1.0,
        decode_ms: 1.0,
        total_ms: 2.0,
        confidence_ms: 0.0,
        sample_ms: 0.0,
        decode_call_ms: 0.0,
        truncated_messages: 0,
        hidden: None,
        gated: false,
    }
}

impl LocalTier for ScriptedLocal {
    fn n_ctx(&self) -> u32 {
        512
    }
    fn count_prompt_tokens(&self, _: &[ChatMessage]) -> Result<u32, LocalError> {
        Ok(10)
    }
    fn generate(
        &self,
        req: &ChatRequest,
        cancel: &AtomicBool,
        on_token: &mut dyn FnMut(TokenEvent<'_>) -> ControlFlow<()>,
    ) -> Result<LocalOutput, LocalError> {
        let (mut text, mut signals, mut n) = (String::new(), Vec::new(), 0u32);
        let mut finish = FinishReason::Stop;
        let mut i = 0;
        loop {
            if cancel.load(Ordering::SeqCst) {
                finish = FinishReason::Cancelled;
                break;
            }
            let Some(&(t, p)) = self
                .tokens
                .get(i)
                .or_else(|| self.endless.then(|| self.tokens.last()).flatten())
            else {
                break;
            };
            if n == req.max_tokens {
                finish = FinishReason::Length;
                break;
            }
            i += 1;
            n += 1;
            self.generated.fetch_add(1, Ordering::SeqCst);
            let signal = TokenSignal {
                logprob: p.ln(),
                entropy: 0.1,
                margin: 0.5,
                top_logprob: p.ln(),
            };
            signals.push(signal);
            text.push_str(t);
            let flow = on_token(TokenEvent {
                text: t,
                signal,
                index: n,
            });
            if flow.is_break() {
                finish = FinishReason::Cancelled;
                break;
            }
            if self.endless {
                std::thread::yield_now();
            }
        }
        if self.fault == LocalFault::Decode && finish != FinishReason::Cancelled {
            return Err(LocalError::Decode {
                pos: n,
                detail: "scripted decode failure".into(),
            });
        }
        Ok(output(text, n, finish, signals))
    }
    fn continue_answer(
        &self,
        _: &ChatRequest,
        _: &str,
        _: &AtomicBool,
        on_token: &mut dyn FnMut(TokenEvent<'_>) -> ControlFlow<()>,
    ) -> Result<LocalOutput, LocalError> {
        if self.fault == LocalFault::Continue {
            return Err(LocalError::ContextOverflow {
                prompt_tokens: 600,
                n_ctx: 512,
            });
        }
        let signal = TokenSignal {
            logprob: 0.0,
            entropy: 0.0,
            margin: 1.0,
            top_logprob: 0.0,
        };
        let _ = on_token(TokenEvent {
            text: " (finished)",
            signal,
            index: 1,
        });
        Ok(output(
            " (finished)".into(),
            1,
            FinishReason::Stop,
            vec![signal],
        ))
    }
    fn forget_rendered(&self, _: &[ChatMessage]) {}
    fn trim(&self) {}
    fn info(&self) -> Option<&crate::engine::local::ModelInfo> {
        None
    }
    fn uses_gpu(&self) -> bool {
        self.gpu
    }
    fn check_format(
        &self,
        format: &crate::types::ResponseFormat,
        text: &str,
    ) -> Result<(), String> {
        assert!(
            self.fault != LocalFault::PanicOnCheck,
            "scripted check panic"
        );
        crate::engine::local::constraint::check_json(format, text)
    }
    fn engine(self: Arc<Self>) -> Option<Arc<crate::engine::local::LocalEngine>> {
        None
    }
}

#[derive(Clone, Copy)]
enum RemoteMode {
    Answer,
    Fail,
    Open,
    /// Streams one chunk, then waits for the cancel.
    StreamUntilCancelled,
    /// Streams the start of an answer, then the stream is cut.
    StreamThenFail,
}

struct ScriptedRemote {
    mode: RemoteMode,
    calls: AtomicU32,
    max_tokens_seen: Mutex<Vec<u32>>,
}

impl ScriptedRemote {
    fn new(mode: RemoteMode) -> Arc<Self> {
        Arc::new(Self {
            mode,
            calls: AtomicU32::new(0),
            max_tokens_seen: Mutex::new(Vec::new()),
        })
    }
}

fn remote_out(text: &str, finish: FinishReason) -> RemoteOutput {
    RemoteOutput {
        text: text.into(),
        finish_reason: finish,
        prompt_tokens: 10,
        completion_tokens: 4,
        usage_estimated: false,
        ttft_ms: 1.0,
        total_ms: 2.0,
        attempts: 1,
        server_ttft_ms: None,
        tool_calls: Vec::new(),
    }
}

impl RemoteTier for ScriptedRemote {
    fn check_available(&self) -> Result<(), RemoteError> {
        match self.mode {
            RemoteMode::Open => Err(RemoteError::CircuitOpen {
                seconds: 30.0,
                failures: 3,
            }),
            _ => Ok(()),
        }
    }
    fn generate(
        &self,
        req: &ChatRequest,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<RemoteOutput, RemoteError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.max_tokens_seen.lock().unwrap().push(req.max_tokens);
        match self.mode {
            RemoteMode::Answer => {
                on_text("Paris.");
                Ok(remote_out("Paris.", FinishReason::Stop))
            }
            RemoteMode::Fail | RemoteMode::Open => Err(RemoteError::Status {
                url: "http://127.0.0.1:1/v1/chat/completions".into(),
                status: 503,
                body: "down".into(),
            }),
            RemoteMode::StreamThenFail => {
                on_text("The capital of France ");
                on_text("is Par");
                Err(RemoteError::Cut {
                    url: "http://127.0.0.1:1/v1/chat/completions".into(),
                    detail: "after 2 chunks, no [DONE]".into(),
                })
            }
            RemoteMode::StreamUntilCancelled => {
                on_text("Par");
                while !cancel.load(Ordering::SeqCst) {
                    std::thread::yield_now();
                }
                Ok(remote_out("Par", FinishReason::Cancelled))
            }
        }
    }
}

const SURE: &[(&str, f32)] = &[("The ", 0.95), ("answer ", 0.9), ("is ", 0.97), ("4.", 0.9)];
const UNSURE: &[(&str, f32)] = &[
    ("Maybe ", 0.05),
    ("it ", 0.1),
    ("is ", 0.1),
    ("Lyon.", 0.02),
];

fn config(ledger: Option<&std::path::Path>, budget: BudgetConfig) -> Config {
    let mut c = Config::default();
    c.cascade.mid_stream_floor = 0.0; // the after-answer rule alone, unless a test sets it
    c.ledger.path = ledger.map(std::path::Path::to_owned);
    c.budget = budget;
    c
}

fn runtime(
    cfg: Config,
    local: Option<Arc<ScriptedLocal>>,
    remote: Option<Arc<ScriptedRemote>>,
) -> Runtime {
    Runtime::with_tiers(
        cfg,
        local.map(|l| l as Arc<dyn LocalTier>),
        remote.map(|r| r as Arc<dyn RemoteTier>),
    )
    .unwrap()
}

/// Collects events; checks there is exactly one terminal event, last.
#[derive(Default)]
struct Events(Mutex<Vec<Event>>);

impl EventSink for Events {
    fn on_event(&self, e: Event) {
        self.0.lock().unwrap().push(e);
    }
}

impl Events {
    fn assert_one_terminal(&self) -> Event {
        let events = self.0.lock().unwrap();
        let terminal: Vec<_> = events
            .iter()
            .filter(|e| matches!(e, Event::Done(_) | Event::Failed(_)))
            .collect();
        assert_eq!(terminal.len(), 1, "exactly one terminal event: {events:?}");
        let last = events.last().unwrap().clone();
        assert!(
            matches!(last, Event::Done(_) | Event::Failed(_)),
            "the terminal event is last"
        );
        last
    }
    fn escalations(&self) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, Event::Escalating { .. }))
            .count()
    }
}

/// Shares an [`Events`] with a boxed sink.
struct Shared(Arc<Events>);

impl EventSink for Shared {
    fn on_event(&self, e: Event) {
        self.0.on_event(e);
    }
}

fn ask() -> ChatRequest {
    ChatRequest::user("What is the capital of France?")
}

#[test]
fn a_confident_local_answer_is_accepted() {
    let remote = ScriptedRemote::new(RemoteMode::Answer);
    let rt = runtime(
        config(None, BudgetConfig::default()),
        Some(ScriptedLocal::new(SURE)),
        Some(Arc::clone(&remote)),
    );
    let events = Events::default();
    let r = rt.chat(&ask(), &events).unwrap();
    assert_eq!((r.route, r.reason), (Route::Local, Reason::Accepted));
    assert!(matches!(events.assert_one_terminal(), Event::Done(_)));
    assert_eq!(remote.calls.load(Ordering::SeqCst), 0);
}

#[test]
fn an_unsure_answer_escalates_with_a_capped_max_tokens() {
    let remote = ScriptedRemote::new(RemoteMode::Answer);
    let rt = runtime(
        config(None, BudgetConfig::default()),
        Some(ScriptedLocal::new(UNSURE)),
        Some(Arc::clone(&remote)),
    );
    let events = Events::default();
    let req = ChatRequest {
        max_tokens: u32::MAX,
        ..ask()
    };
    let r = rt.chat(&req, &events).unwrap();
    assert_eq!(
        (r.route, r.reason),
        (Route::Escalated, Reason::LowConfidence)
    );
    assert_eq!(r.text, "Paris.");
    assert_eq!(events.escalations(), 1);
    events.assert_one_terminal();
    assert_eq!(
        *remote.max_tokens_seen.lock().unwrap(),
        vec![WORST_CASE_COMPLETION],
        "a remote request never goes out without a bounded max_tokens"
    );
}

/// The text of the Token events, per tier, in order.
fn streamed(events: &Events) -> Vec<(Tier, String)> {
    events
        .0
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Event::Token { text, tier } => Some((*tier, text.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_held_draft_is_sent_only_when_the_local_answer_is_kept() {
    let hold = ChatRequest {
        hold_draft: true,
        ..ask()
    };
    // Accepted: the draft arrives once, whole, after the route settled.
    let rt = runtime(
        config(None, BudgetConfig::default()),
        Some(ScriptedLocal::new(SURE)),
        Some(ScriptedRemote::new(RemoteMode::Answer)),
    );
    let events = Events::default();
    let r = rt.chat(&hold, &events).unwrap();
    assert_eq!(r.route, Route::Local);
    assert_eq!(streamed(&events), vec![(Tier::Local, r.text.clone())]);
    // Escalated: the remote answer only, never the draft.
    let rt = runtime(
        config(None, BudgetConfig::default()),
        Some(ScriptedLocal::new(UNSURE)),
        Some(ScriptedRemote::new(RemoteMode::Answer)),
    );
    let events = Events::default();
    let r = rt.chat(&hold, &events).unwrap();
    assert_eq!(r.route, Route::Escalated);
    assert_eq!(streamed(&events), vec![(Tier::Remote, "Paris.".to_owned())]);
    // Degraded: the local answer, once.
    let rt = runtime(
        config(None, BudgetConfig::default()),
        Some(ScriptedLocal::new(UNSURE)),
        Some(ScriptedRemote::new(RemoteMode::Fail)),
    );
    let events = Events::default();
    let r = rt.chat(&hold, &events).unwrap();
    assert_eq!(r.route, Route::DegradedLocal);
    assert_eq!(streamed(&events), vec![(Tier::Local, r.text.clone())]);
}

#[test]
fn a_remote_failure_after_escalation_degrades_to_the_local_answer() {
    let rt = runtime(
        config(None, BudgetConfig::default()),
        Some(ScriptedLocal::new(UNSURE)),
        Some(ScriptedRemote::new(RemoteMode::Fail)),
    );
    let r = rt.chat(&ask(), &NullSink).unwrap();
    assert_eq!(r.route, Route::DegradedLocal);
    assert_eq!(r.reason, Reason::LowConfidence);
    assert_eq!(r.text, "Maybe it is Lyon.");
    assert!(r.remote_error.as_deref().unwrap().contains("503"));
}

#[test]
fn a_mid_stream_escalation_that_fails_finishes_the_cut_draft() {
    let mut cfg = config(None, BudgetConfig::default());
    cfg.cascade.mid_stream_floor = 0.4;
    cfg.cascade.mid_stream_min_tokens = 8;
    let many: Vec<(&str, f32)> = (0..12).map(|_| ("uh ", 0.05)).collect();
    let rt = runtime(
        cfg,
        Some(ScriptedLocal::new(&many)),
        Some(ScriptedRemote::new(RemoteMode::Fail)),
    );
    let r = rt.chat(&ask(), &NullSink).unwrap();
    assert_eq!(
        (r.route, r.reason),
        (Route::DegradedLocal, Reason::MidStreamLowConfidence)
    );
    assert!(r.text.ends_with(" (finished)"), "{}", r.text);
    assert_eq!(r.finish_reason, FinishReason::Stop);
}

#[test]
fn cancelling_during_the_local_leg_is_recorded_as_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.jsonl");
    let remote = ScriptedRemote::new(RemoteMode::Answer);
    let rt = runtime(
        config(Some(&ledger), BudgetConfig::default()),
        Some(ScriptedLocal::endless()),
        Some(Arc::clone(&remote)),
    );
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&cancel);
    let sink = move |e: Event| {
        if matches!(e, Event::Token { .. }) {
            flag.store(true, Ordering::SeqCst);
        }
    };
    let r = rt.chat_cancellable(&ask(), &sink, &cancel).unwrap();
    assert_eq!(r.finish_reason, FinishReason::Cancelled);
    assert_eq!((r.route, r.reason), (Route::Local, Reason::Cancelled));
    assert_eq!(remote.calls.load(Ordering::SeqCst), 0);
    let line = std::fs::read_to_string(&ledger).unwrap();
    assert!(line.contains("\"reason\":\"cancelled\""), "{line}");
}

#[test]
fn cancelling_during_the_remote_leg_is_honest_and_priced() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.jsonl");
    let budget = BudgetConfig {
        daily_usd: Some(1.0),
        ..BudgetConfig::default()
    };
    let remote = ScriptedRemote::new(RemoteMode::StreamUntilCancelled);
    let rt = runtime(
        config(Some(&ledger), budget.clone()),
        Some(ScriptedLocal::new(UNSURE)),
        Some(remote),
    );
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&cancel);
    let sink = move |e: Event| {
        if matches!(
            e,
            Event::Token {
                tier: Tier::Remote,
                ..
            }
        ) {
            flag.store(true, Ordering::SeqCst);
        }
    };
    let r = rt.chat_cancellable(&ask(), &sink, &cancel).unwrap();
    assert_eq!(r.route, Route::Escalated, "not degraded_local");
    assert_eq!(r.finish_reason, FinishReason::Cancelled);
    assert_eq!(r.text, "Par");
    assert!(r.cost.remote_usd > 0.0, "what streamed is priced");
    let report = rt.cost_report(None).unwrap();
    assert_eq!(report.by_route["escalated"], 1);
    // The reservation is settled: the whole budget minus what was spent is free again.
    let l = rt.ledger().unwrap();
    assert!(l
        .check(&budget, 1.0 - r.cost.remote_usd - 1e-9)
        .unwrap()
        .is_ok());
}

#[test]
fn a_forced_remote_failure_is_an_error_recorded_with_its_reservation_released() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.jsonl");
    let budget = BudgetConfig {
        daily_usd: Some(0.01),
        ..BudgetConfig::default()
    };
    let rt = runtime(
        config(Some(&ledger), budget.clone()),
        Some(ScriptedLocal::new(SURE)),
        Some(ScriptedRemote::new(RemoteMode::Fail)),
    );
    let events = Events::default();
    let req = ChatRequest {
        policy: PolicyOverride::ForceRemote,
        ..ask()
    };
    let e = rt.chat(&req, &events).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RemoteUnavailable);
    assert!(matches!(events.assert_one_terminal(), Event::Failed(_)));
    let text = std::fs::read_to_string(&ledger).unwrap();
    assert!(text.contains("\"route\":\"failed\""), "{text}");
    assert!(rt.ledger().unwrap().check(&budget, 0.01).unwrap().is_ok());
}

#[test]
fn a_forced_remote_request_never_falls_back_to_local() {
    let rt = runtime(
        config(None, BudgetConfig::default()),
        Some(ScriptedLocal::new(SURE)),
        Some(ScriptedRemote::new(RemoteMode::Open)),
    );
    let req = ChatRequest {
        policy: PolicyOverride::ForceRemote,
        ..ask()
    };
    let e = rt.chat(&req, &NullSink).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RemoteUnavailable);

    let dir = tempfile::tempdir().unwrap();
    let budget = BudgetConfig {
        per_request_usd: Some(1e-9),
        ..BudgetConfig::default()
    };
    let rt = runtime(
        config(Some(&dir.path().join("l.jsonl")), budget),
        Some(ScriptedLocal::new(SURE)),
        Some(ScriptedRemote::new(RemoteMode::Answer)),
    );
    let e = rt.chat(&req, &NullSink).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BudgetExhausted);
}

#[test]
fn a_budget_refusal_at_escalation_keeps_the_local_answer() {
    let dir = tempfile::tempdir().unwrap();
    let budget = BudgetConfig {
        per_request_usd: Some(1e-9),
        ..BudgetConfig::default()
    };
    let remote = ScriptedRemote::new(RemoteMode::Answer);
    let rt = runtime(
        config(Some(&dir.path().join("l.jsonl")), budget),
        Some(ScriptedLocal::new(UNSURE)),
        Some(Arc::clone(&remote)),
    );
    let r = rt.chat(&ask(), &NullSink).unwrap();
    // The router already sees the refusal and keeps the request local.
    assert_eq!((r.route, r.reason), (Route::Local, Reason::BudgetExhausted));
    assert_eq!(remote.calls.load(Ordering::SeqCst), 0);
}

#[test]
fn a_panicking_sink_fails_the_request_without_unwinding_into_the_caller() {
    let rt = runtime(
        config(None, BudgetConfig::default()),
        Some(ScriptedLocal::new(SURE)),
        None,
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let sink = move |e: Event| {
        let token = matches!(e, Event::Token { .. });
        s.lock().unwrap().push(e);
        assert!(!token, "a sink bug");
    };
    let e = rt.chat(&ask(), &sink).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Internal);
    assert!(e.to_string().contains("a sink bug"), "{e}");
    let seen = seen.lock().unwrap();
    assert!(matches!(seen.last(), Some(Event::Failed(_))), "{seen:?}");
    // The runtime still works.
    assert!(rt.chat(&ask(), &NullSink).is_ok());
}

#[test]
fn start_chat_delivers_failures_to_the_listener_and_to_wait() {
    let rt = Arc::new(runtime(
        config(None, BudgetConfig::default()),
        Some(ScriptedLocal::new(SURE)),
        None,
    ));
    let events = Arc::new(Events::default());
    let bad = ChatRequest {
        max_tokens: 0,
        ..ask()
    };
    let h = rt.start_chat(bad, Box::new(Shared(Arc::clone(&events))));
    let e = h.wait().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidRequest);
    assert!(h.wait().is_err(), "wait gives the same result again");
    assert!(matches!(events.assert_one_terminal(), Event::Failed(_)));
}

#[test]
fn without_a_local_model_everything_goes_remote() {
    let rt = runtime(
        config(None, BudgetConfig::default()),
        None,
        Some(ScriptedRemote::new(RemoteMode::Answer)),
    );
    let r = rt.chat(&ask(), &NullSink).unwrap();
    assert_eq!((r.route, r.reason), (Route::Remote, Reason::NoLocalModel));
    let private = ChatRequest {
        private: true,
        ..ask()
    };
    assert_eq!(
        rt.chat(&private, &NullSink).unwrap_err().kind(),
        ErrorKind::InvalidRequest
    );
}

#[test]
fn close_cancels_in_flight_work_and_refuses_new_requests() {
    let local = ScriptedLocal::endless();
    let rt = Arc::new(runtime(
        config(None, BudgetConfig::default()),
        Some(Arc::clone(&local)),
        None,
    ));
    let events = Arc::new(Events::default());
    let endless = ChatRequest {
        max_tokens: u32::MAX,
        ..ask()
    };
    let h = rt.start_chat(endless, Box::new(Shared(Arc::clone(&events))));
    while local.generated.load(Ordering::SeqCst) == 0 {
        std::thread::yield_now();
    }
    rt.close();
    // close() returns once the request in flight has delivered its terminal event.
    assert!(matches!(events.assert_one_terminal(), Event::Done(_)));
    let r = h.wait().unwrap();
    assert_eq!(r.finish_reason, FinishReason::Cancelled);
    let events = Events::default();
    let e = rt.chat(&ask(), &events).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Closed);
    assert!(matches!(events.assert_one_terminal(), Event::Failed(_)));
    assert!(rt.local_tier().is_none(), "the model is freed");
}

#[test]
fn many_threads_with_cancels_and_drops_all_resolve() {
    let rt = Arc::new(runtime(
        config(None, BudgetConfig::default()),
        Some(ScriptedLocal::endless()),
        Some(ScriptedRemote::new(RemoteMode::Answer)),
    ));
    // Terminal events, counted by the sinks the runtime calls: (Done, Failed, per-request
    // counts above one).
    #[derive(Default)]
    struct Terminals {
        done: AtomicU32,
        failed: AtomicU32,
        cancelled: AtomicU32,
        twice: AtomicU32,
    }
    struct Sink(Arc<Terminals>, AtomicU32);
    impl EventSink for Sink {
        fn on_event(&self, e: Event) {
            let t = &self.0;
            match e {
                Event::Done(r) => {
                    t.done.fetch_add(1, Ordering::SeqCst);
                    if r.finish_reason == FinishReason::Cancelled {
                        t.cancelled.fetch_add(1, Ordering::SeqCst);
                    }
                }
                Event::Failed(_) => {
                    t.failed.fetch_add(1, Ordering::SeqCst);
                }
                _ => return,
            }
            if self.1.fetch_add(1, Ordering::SeqCst) > 0 {
                t.twice.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    let terminals = Arc::new(Terminals::default());
    let handles = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (rt, terminals, handles) = (
                Arc::clone(&rt),
                Arc::clone(&terminals),
                Arc::clone(&handles),
            );
            std::thread::spawn(move || {
                for i in 0..20u32 {
                    // Every fourth request never ends by itself: only close() ends it.
                    let max_tokens = if i % 4 == 3 {
                        u32::MAX
                    } else {
                        1 + (t * 7 + i) % 50
                    };
                    let req = ChatRequest {
                        max_tokens,
                        ..ask()
                    };
                    let sink = Sink(Arc::clone(&terminals), AtomicU32::new(0));
                    let h = rt.start_chat(req, Box::new(sink));
                    match (t + i) % 3 {
                        0 if max_tokens != u32::MAX => h.cancel(),
                        1 if max_tokens != u32::MAX => drop(h),
                        _ => handles.lock().unwrap().push(h),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let endless = 8 * 5;
    assert!(rt.stats().in_flight >= endless, "{:?}", rt.stats());
    rt.close(); // returns only once every request has ended
    let s = rt.stats();
    let count = |c: &AtomicU32| u64::from(c.load(Ordering::SeqCst));
    // Every request ended exactly once, seen by its own sink, and the stats agree.
    assert_eq!(count(&terminals.twice), 0);
    assert_eq!(count(&terminals.done) + count(&terminals.failed), 160);
    assert_eq!(
        (s.finished, s.failed, s.cancelled, s.in_flight),
        (
            count(&terminals.done),
            count(&terminals.failed),
            count(&terminals.cancelled),
            0
        ),
        "{s:?}"
    );
    // The endless ones were running when close() came: it cancelled every one of them.
    assert!(count(&terminals.cancelled) >= endless, "{s:?}");
    for h in handles.lock().unwrap().iter() {
        h.wait().unwrap();
    }
}

/// Borderline: mean logprob about -0.36, kept at the default threshold moved to -0.4.
const BORDERLINE: &[(&str, f32)] = &[("It ", 0.7), ("is ", 0.7), ("Paris.", 0.7)];

#[test]
fn device_state_moves_routes_with_its_own_reasons() {
    use crate::types::{DeviceState, Network, Thermal};
    let remote = ScriptedRemote::new(RemoteMode::Answer);
    let mut cfg = config(None, BudgetConfig::default());
    cfg.cascade.threshold = -0.4;
    cfg.device.hot_threshold_shift = 0.1;
    cfg.device.metered_threshold_shift = 0.5;
    let rt = runtime(
        cfg,
        Some(ScriptedLocal::new(BORDERLINE)),
        Some(Arc::clone(&remote)),
    );
    let route = |state: DeviceState, req: &ChatRequest| {
        rt.set_device_state(state);
        assert_eq!(rt.device_state(), state);
        let events = Events::default();
        let r = rt.chat(req, &events);
        events.assert_one_terminal();
        r
    };
    let got = |r: Result<Response>| {
        let r = r.unwrap();
        (r.route, r.reason)
    };
    let plain = DeviceState::default();
    assert_eq!(got(route(plain, &ask())), (Route::Local, Reason::Accepted));
    // Heat and low power move the threshold to -0.3: the borderline answer escalates.
    let hot = DeviceState {
        thermal: Thermal::Serious,
        ..plain
    };
    assert_eq!(got(route(hot, &ask())), (Route::Escalated, Reason::Thermal));
    let saver = DeviceState {
        low_power: true,
        ..plain
    };
    assert_eq!(
        got(route(saver, &ask())),
        (Route::Escalated, Reason::LowPower)
    );
    // Background: straight to the remote tier, no local draft.
    let calls = remote.calls.load(Ordering::SeqCst);
    let background = DeviceState {
        background: true,
        ..plain
    };
    assert_eq!(
        got(route(background, &ask())),
        (Route::Remote, Reason::Background)
    );
    assert_eq!(remote.calls.load(Ordering::SeqCst), calls + 1);
    // Offline: local, and a forced-remote request fails as remote_unavailable without a call.
    let offline = DeviceState {
        network: Network::None,
        thermal: Thermal::Critical,
        ..plain
    };
    assert_eq!(got(route(offline, &ask())), (Route::Local, Reason::Offline));
    let forced = ChatRequest {
        policy: PolicyOverride::ForceRemote,
        ..ask()
    };
    let e = route(offline, &forced).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RemoteUnavailable, "{e}");
    assert!(e.to_string().contains("offline"), "{e}");
    assert_eq!(
        remote.calls.load(Ordering::SeqCst),
        calls + 1,
        "no remote call offline"
    );
    // A metered network keeps an answer that would escalate: mean logprob ln 0.3 = -1.2
    // against -1.0, moved to -1.5 by the shift; the reason says metered.
    let rt2 = runtime(
        {
            let mut c = config(None, BudgetConfig::default());
            c.cascade.threshold = -1.0;
            c.device.metered_threshold_shift = 0.5;
            c
        },
        Some(ScriptedLocal::new(&[("Maybe ", 0.3), ("Lyon.", 0.3)])),
        Some(ScriptedRemote::new(RemoteMode::Answer)),
    );
    let r = rt2.chat(&ask(), &NullSink).unwrap();
    assert_eq!(
        (r.route, r.reason),
        (Route::Escalated, Reason::LowConfidence)
    );
    rt2.set_device_state(DeviceState {
        network: Network::Metered,
        ..plain
    });
    let r = rt2.chat(&ask(), &NullSink).unwrap();
    assert_eq!((r.route, r.reason), (Route::Local, Reason::Metered));
}

#[test]
fn private_work_in_the_background_is_refused_only_on_a_gpu() {
    use crate::types::DeviceState;
    let background = DeviceState {
        background: true,
        ..DeviceState::default()
    };
    let private = ChatRequest {
        private: true,
        ..ask()
    };
    // On the CPU a private request runs locally in the background.
    let rt = runtime(
        config(None, BudgetConfig::default()),
        Some(ScriptedLocal::new(SURE)),
        Some(ScriptedRemote::new(RemoteMode::Answer)),
    );
    rt.set_device_state(background);
    let r = rt.chat(&private, &NullSink).unwrap();
    assert_eq!((r.route, r.reason), (Route::Local, Reason::Private));
    // On a GPU it is refused with device_state, and recorded as failed.
    let gpu = Arc::new(ScriptedLocal {
        gpu: true,
        ..Arc::into_inner(ScriptedLocal::new(SURE)).unwrap()
    });
    let rt = runtime(
        config(None, BudgetConfig::default()),
        Some(Arc::clone(&gpu)),
        Some(ScriptedRemote::new(RemoteMode::Answer)),
    );
    rt.set_device_state(background);
    let events = Events::default();
    let e = rt.chat(&private, &events).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DeviceState, "{e}");
    assert!(matches!(events.assert_one_terminal(), Event::Failed(_)));
    assert_eq!(
        gpu.generated.load(Ordering::SeqCst),
        0,
        "the GPU was not touched"
    );
    // A shared request goes remote instead; back in the foreground the private one runs.
    let r = rt.chat(&ask(), &NullSink).unwrap();
    assert_eq!((r.route, r.reason), (Route::Remote, Reason::Background));
    rt.set_device_state(DeviceState::default());
    let r = rt.chat(&private, &NullSink).unwrap();
    assert_eq!(r.route, Route::Local);
    assert_eq!(rt.stats().failed, 1);
}

#[test]
fn a_local_answer_outside_the_response_format_escalates_and_a_bad_remote_one_is_reported() {
    let json = |tokens: &[(&'static str, f32)]| {
        let remote = ScriptedRemote::new(RemoteMode::Answer);
        let rt = runtime(
            config(None, BudgetConfig::default()),
            Some(ScriptedLocal::new(tokens)),
            Some(Arc::clone(&remote)),
        );
        let req = ChatRequest {
            response_format: crate::types::ResponseFormat::JsonObject,
            ..ask()
        };
        (
            rt.chat(&req, &NullSink).unwrap(),
            remote.calls.load(Ordering::SeqCst),
        )
    };
    // Sure and valid: kept, no format error.
    let (r, calls) = json(&[("{\"capital\": ", 0.95), ("\"Paris\"}", 0.95)]);
    assert_eq!(
        (r.route, r.reason, calls),
        (Route::Local, Reason::Accepted, 0)
    );
    assert_eq!(r.format_error, None);
    // Sure but cut short (not JSON): escalated for its format, not its confidence.
    let (r, calls) = json(&[("{\"capital\": ", 0.95), ("\"Par", 0.95)]);
    assert_eq!(
        (r.route, r.reason, calls),
        (Route::Escalated, Reason::InvalidOutput, 1)
    );
    assert!(
        r.reason_detail.contains("not valid JSON"),
        "{}",
        r.reason_detail
    );
    // The remote answer ("Paris.") is not JSON either: reported, never passed off as valid.
    assert!(
        r.format_error
            .as_deref()
            .is_some_and(|e| e.contains("not valid JSON")),
        "{r:?}"
    );
    // Valid JSON, but the token budget ended it (the grammar closed it early): its last value
    // was cut, so it escalates however sure it was.
    let remote = ScriptedRemote::new(RemoteMode::Answer);
    let rt = runtime(
        config(None, BudgetConfig::default()),
        Some(ScriptedLocal::new(&[
            ("{\"capital\": ", 0.95),
            ("\"Par\"}", 0.95),
            ("unsaid", 0.95),
        ])),
        Some(Arc::clone(&remote)),
    );
    let req = ChatRequest {
        response_format: crate::types::ResponseFormat::JsonObject,
        max_tokens: 2,
        ..ask()
    };
    let r = rt.chat(&req, &NullSink).unwrap();
    assert_eq!(
        (r.route, r.reason, remote.calls.load(Ordering::SeqCst)),
        (Route::Escalated, Reason::InvalidOutput, 1)
    );
    assert!(
        r.reason_detail.contains("cut short by max_tokens"),
        "{}",
        r.reason_detail
    );
    // A text request is never checked.
    let remote = ScriptedRemote::new(RemoteMode::Answer);
    let rt = runtime(
        config(None, BudgetConfig::default()),
        Some(ScriptedLocal::new(SURE)),
        Some(remote),
    );
    assert_eq!(rt.chat(&ask(), &NullSink).unwrap().format_error, None);
}

#[test]
fn a_bad_local_tool_call_escalates_and_a_good_one_streams_only_its_content() {
    let weather = crate::types::Tool {
        name: "get_weather".into(),
        description: None,
        parameters:
            r#"{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}"#
                .into(),
    };
    let run = |tokens: &[(&'static str, f32)]| {
        let remote = ScriptedRemote::new(RemoteMode::Answer);
        let rt = runtime(
            config(None, BudgetConfig::default()),
            Some(ScriptedLocal::new(tokens)),
            Some(Arc::clone(&remote)),
        );
        let req = ChatRequest {
            tools: vec![weather.clone()],
            ..ask()
        };
        let streamed = Mutex::new(String::new());
        let sink = |e: Event| {
            if let Event::Token { text, .. } = e {
                streamed.lock().unwrap().push_str(&text);
            }
        };
        let r = rt.chat(&req, &sink).unwrap();
        (
            r,
            remote.calls.load(Ordering::SeqCst),
            streamed.into_inner().unwrap(),
        )
    };
    // A sure, valid call: kept; the stream carries the words, never the call's markup.
    let (r, calls, streamed) = run(&[
        ("Checking. ", 0.95),
        ("<tool_call>\n{\"name\": \"get_weather\", ", 0.95),
        ("\"arguments\": {\"city\": \"Paris\"}}\n</tool_call>", 0.95),
    ]);
    assert_eq!(
        (r.route, r.reason, calls),
        (Route::Local, Reason::Accepted, 0)
    );
    assert_eq!(streamed, "Checking.");
    assert_eq!(r.text, "Checking.");
    assert_eq!(r.finish_reason, FinishReason::ToolCalls);
    assert_eq!(r.tool_calls.len(), 1);
    assert_eq!(r.tool_calls[0].name, "get_weather");
    assert_eq!(r.tool_calls[0].arguments, r#"{"city":"Paris"}"#);
    assert_eq!(r.format_error, None);
    // A sure call to a tool that does not exist: escalated for its validity.
    let (r, calls, streamed) = run(&[(
        "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>",
        0.95,
    )]);
    assert_eq!(
        (r.route, r.reason, calls),
        (Route::Escalated, Reason::InvalidOutput, 1)
    );
    assert!(r.reason_detail.contains("get_time"), "{}", r.reason_detail);
    assert!(!streamed.contains("tool_call"), "{streamed}");
    // A sure call without its required argument: escalated too.
    let (r, calls, _) = run(&[(
        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {}}\n</tool_call>",
        0.95,
    )]);
    assert_eq!(
        (r.route, r.reason, calls),
        (Route::Escalated, Reason::InvalidOutput, 1)
    );
    assert!(r.reason_detail.contains("\"city\""), "{}", r.reason_detail);
    // A call cut short (max_tokens): escalated.
    let (r, _, _) = run(&[("<tool_call>\n{\"name\": \"get_wea", 0.95)]);
    assert_eq!(
        (r.route, r.reason),
        (Route::Escalated, Reason::InvalidOutput)
    );
    // Plain sure text with tools on offer: kept, streamed whole.
    let (r, calls, streamed) = run(SURE);
    assert_eq!((r.route, calls), (Route::Local, 0));
    assert_eq!(streamed, r.text);
    assert!(r.tool_calls.is_empty());
    assert_eq!(r.finish_reason, FinishReason::Stop);
}

#[test]
fn a_call_the_grammar_forced_against_the_model_escalates_on_its_own_rule() {
    let weather = crate::types::Tool {
        name: "get_weather".into(),
        description: None,
        parameters:
            r#"{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}"#
                .into(),
    };
    // A valid call whose city the model gave probability `p`; every other token sure.
    let run = |choice: crate::types::ToolChoice, p: f32| {
        let tokens: Vec<(&'static str, f32)> = vec![
            ("<tool_call>\n", 0.99),
            ("{\"name\": ", 0.99),
            ("\"get_weather\", ", 0.99),
            ("\"arguments\": ", 0.99),
            ("{\"city\": ", 0.99),
            ("\"Paris", p),
            ("\"}}", 0.99),
            ("\n</tool_call>", 0.99),
        ];
        let remote = ScriptedRemote::new(RemoteMode::Answer);
        let mut cfg = config(None, BudgetConfig::default());
        cfg.cascade.structured_signal = Some(crate::signal::Signal::MinProb);
        cfg.cascade.structured_threshold = Some(0.05);
        let rt = runtime(
            cfg,
            Some(ScriptedLocal::new(&tokens)),
            Some(Arc::clone(&remote)),
        );
        let req = ChatRequest {
            tools: vec![weather.clone()],
            tool_choice: choice,
            ..ask()
        };
        let r = rt.chat(&req, &NullSink).unwrap();
        (
            r.route,
            r.reason,
            r.reason_detail,
            remote.calls.load(Ordering::SeqCst),
        )
    };
    // Forced (`required`), the city at p = 0.02: under min_prob 0.05, escalated,
    // although the mean logprob (-0.50) clears the text rule's -1.0.
    let (route, reason, detail, calls) = run(crate::types::ToolChoice::Required, 0.02);
    assert_eq!(
        (route, reason, calls),
        (Route::Escalated, Reason::LowConfidence, 1)
    );
    assert!(
        detail.contains("min_prob 0.020") && detail.contains("grammar-constrained"),
        "{detail}"
    );
    // The same for a named function.
    let named = crate::types::ToolChoice::Function {
        name: "get_weather".into(),
    };
    assert_eq!(run(named, 0.02).0, Route::Escalated);
    // At p = 0.2 the forced call is kept.
    let (route, reason, _, calls) = run(crate::types::ToolChoice::Required, 0.2);
    assert_eq!((route, reason, calls), (Route::Local, Reason::Accepted, 0));
    // Free (`auto`), the same answer is judged by the text rule: kept.
    let (route, _, detail, calls) = run(crate::types::ToolChoice::Auto, 0.02);
    assert_eq!((route, calls), (Route::Local, 0));
    assert!(detail.contains("mean_logprob"), "{detail}");
}

/// The ledger's records (one JSON object a line).
fn records(ledger: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(ledger)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("route").is_some())
        .collect()
}

/// A remote stream cut after text had arrived, in an escalation: the caller is told the
/// escalation gave no answer (the remote text streamed before it is void), `text` is the
/// local answer, and the remote tokens that were generated are priced and recorded (they were
/// streamed, then followed by the local draft, and billed at 0).
#[test]
fn a_cut_escalation_is_taken_back_and_its_partial_usage_billed() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.jsonl");
    let rt = runtime(
        config(Some(&ledger), BudgetConfig::default()),
        Some(ScriptedLocal::new(UNSURE)),
        Some(ScriptedRemote::new(RemoteMode::StreamThenFail)),
    );
    let events = Events::default();
    let r = rt.chat(&ask(), &events).unwrap();
    assert_eq!(
        (r.route, r.reason),
        (Route::DegradedLocal, Reason::LowConfidence)
    );
    assert_eq!(r.text, "Maybe it is Lyon.");
    // The order the caller saw: draft, Escalating, remote text, FallingBack.
    let seen: Vec<String> = events
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|e| match e {
            Event::Token { tier, .. } => format!("{tier:?}"),
            Event::Escalating { .. } => "Escalating".into(),
            Event::FallingBack { detail } => {
                assert!(detail.contains("remote failed"), "{detail}");
                "FallingBack".into()
            }
            Event::Done(_) => "Done".into(),
            Event::Failed(_) => "Failed".into(),
        })
        .collect();
    let pos = |what: &str| seen.iter().position(|e| e == what).unwrap();
    assert!(
        pos("Escalating") < pos("Remote") && pos("Remote") < pos("FallingBack"),
        "{seen:?}"
    );
    assert_eq!(seen.last().map(String::as_str), Some("Done"));
    // Billed: the prompt and the 28 characters that arrived (7 tokens at 4 per token).
    let remote = r.usage.remote.expect("the cut call's usage");
    assert_eq!((remote.prompt_tokens, remote.completion_tokens), (10, 7));
    assert!(r.usage.estimated);
    assert!(r.cost.remote_usd > 0.0);
    // All-remote is what the answer would have cost remotely, not the cut call.
    let p = &rt.config().prices;
    assert!((r.cost.all_remote_usd - cost::remote_usd(p, 10, 4)).abs() < 1e-12);
    let recs = records(&ledger);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["remote_tokens"], serde_json::json!([10, 7]));
    assert!(recs[0]["remote_usd"].as_f64().unwrap() > 0.0);
}

/// With a held draft the caller sees neither the draft nor the cut remote text: only the
/// local answer, once.
#[test]
fn a_cut_escalation_with_a_held_draft_streams_only_the_local_answer() {
    let rt = runtime(
        config(None, BudgetConfig::default()),
        Some(ScriptedLocal::new(UNSURE)),
        Some(ScriptedRemote::new(RemoteMode::StreamThenFail)),
    );
    let events = Events::default();
    let req = ChatRequest {
        hold_draft: true,
        ..ask()
    };
    let r = rt.chat(&req, &events).unwrap();
    assert_eq!(r.route, Route::DegradedLocal);
    assert_eq!(streamed(&events), vec![(Tier::Local, r.text.clone())]);
    // When the remote answers, its held text streams and the draft never:
    // `a_held_draft_is_sent_only_when_the_local_answer_is_kept`.
}

/// A forced-remote call cut after text had arrived is an error whose record bills what the
/// server generated, and counts it against the budget (it recorded 0 and released the
/// reservation, so cut streams could overshoot the daily cap).
#[test]
fn a_cut_forced_remote_call_is_billed_in_its_failure_record() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.jsonl");
    let rt = runtime(
        config(Some(&ledger), BudgetConfig::default()),
        Some(ScriptedLocal::new(SURE)),
        Some(ScriptedRemote::new(RemoteMode::StreamThenFail)),
    );
    let req = ChatRequest {
        policy: PolicyOverride::ForceRemote,
        ..ask()
    };
    let e = rt.chat(&req, &NullSink).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RemoteUnavailable);
    let recs = records(&ledger);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["route"], "failed");
    assert_eq!(recs[0]["remote_tokens"], serde_json::json!([10, 7]));
    let billed = recs[0]["remote_usd"].as_f64().unwrap();
    assert!(billed > 0.0);
    // The spend counts: a daily cap just below it now refuses.
    let report = rt.cost_report(None).unwrap();
    assert!((report.remote_usd - billed).abs() < 1e-12);
}

/// Finishing a cut draft fails (a context overflow re-tokenising it): the draft is still the
/// answer, marked as cut (the whole request failed).
#[test]
fn a_failed_continuation_keeps_the_cut_draft() {
    let mut cfg = config(None, BudgetConfig::default());
    cfg.cascade.mid_stream_floor = 0.4;
    cfg.cascade.mid_stream_min_tokens = 8;
    let many: Vec<(&str, f32)> = (0..12).map(|_| ("uh ", 0.05)).collect();
    let rt = runtime(
        cfg,
        Some(ScriptedLocal::failing(&many, LocalFault::Continue)),
        Some(ScriptedRemote::new(RemoteMode::Fail)),
    );
    let r = rt.chat(&ask(), &NullSink).unwrap();
    assert_eq!(
        (r.route, r.reason),
        (Route::DegradedLocal, Reason::MidStreamLowConfidence)
    );
    assert!(
        r.text.starts_with("uh uh ") && !r.text.contains("finished"),
        "{}",
        r.text
    );
    assert_eq!(r.finish_reason, FinishReason::Length);
    assert!(
        r.reason_detail.contains("finishing the cut draft failed"),
        "{}",
        r.reason_detail
    );
}

/// The local model fails while it answers and a remote tier is configured: the request is
/// escalated (local_failed), not failed; if the remote fails too, the local error stands.
#[test]
fn a_local_failure_in_the_cascade_escalates() {
    let rt = runtime(
        config(None, BudgetConfig::default()),
        Some(ScriptedLocal::failing(SURE, LocalFault::Decode)),
        Some(ScriptedRemote::new(RemoteMode::Answer)),
    );
    let events = Events::default();
    let r = rt.chat(&ask(), &events).unwrap();
    assert_eq!((r.route, r.reason), (Route::Escalated, Reason::LocalFailed));
    assert_eq!(r.text, "Paris.");
    assert!(
        r.reason_detail.contains("scripted decode failure"),
        "{}",
        r.reason_detail
    );
    assert_eq!(events.escalations(), 1);
    let rt = runtime(
        config(None, BudgetConfig::default()),
        Some(ScriptedLocal::failing(SURE, LocalFault::Decode)),
        Some(ScriptedRemote::new(RemoteMode::Fail)),
    );
    let events = Events::default();
    let e = rt.chat(&ask(), &events).unwrap_err();
    assert!(e.to_string().contains("scripted decode failure"), "{e}");
    assert!(matches!(events.assert_one_terminal(), Event::Failed(_)));
}

/// A panic after the remote tier answered (here in checking the answer's format) fails the
/// request, and its record still bills the remote call and settles the reservation (it was
/// lost, and the reservation held the budget until it expired).
#[test]
fn a_panic_after_the_remote_answered_still_records_its_cost() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.jsonl");
    let budget = BudgetConfig {
        daily_usd: Some(1.0),
        ..BudgetConfig::default()
    };
    let rt = runtime(
        config(Some(&ledger), budget.clone()),
        Some(ScriptedLocal::failing(SURE, LocalFault::PanicOnCheck)),
        Some(ScriptedRemote::new(RemoteMode::Answer)),
    );
    let req = ChatRequest {
        policy: PolicyOverride::ForceRemote,
        response_format: ResponseFormat::JsonObject,
        ..ask()
    };
    let events = Events::default();
    let e = rt.chat(&req, &events).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Internal);
    assert!(matches!(events.assert_one_terminal(), Event::Failed(_)));
    let recs = records(&ledger);
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0]["route"], "failed");
    assert_eq!(recs[0]["error"], "internal");
    assert_eq!(recs[0]["remote_tokens"], serde_json::json!([10, 4]));
    let p = &rt.config().prices;
    assert!((recs[0]["remote_usd"].as_f64().unwrap() - cost::remote_usd(p, 10, 4)).abs() < 1e-12);
    // The reservation is settled: the whole cap but what was spent is free again.
    let left = 1.0 - cost::remote_usd(p, 10, 4) - 1e-9;
    assert!(rt.ledger().unwrap().check(&budget, left).unwrap().is_ok());
}
